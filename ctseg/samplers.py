"""Batch samplers for training from a store: which slices form each batch.

Shuffled slices, a balanced lesion/background mix, or runs of one patient's consecutive
slices (for patient-wise normalisation). Convention: every item carries its own
augmentation seed derived from (run seed, epoch, batch, position), so a run is
reproducible whatever the number of loader workers, and a resumed run sees exactly the
batches it would have seen (``set_epoch(epoch, start_batch)``). Under DDP each rank takes
every ``world``-th batch of the same seeded epoch plan, which is what torch's
DistributedSampler does for items; it is done here rather than with DistributedSampler
because the balanced and patient plans and the per-item seeds must be sharded as whole
batches.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch

from ctseg.config import TrainConfig
from ctseg.errors import ConfigError

ItemKey = tuple[int, tuple[int, ...]]  # (dataset index, augmentation seed words)


class BatchPlan(torch.utils.data.Sampler):
    """Base of the batch samplers: a seeded plan of global batches per epoch, sharded over ranks.

    Subclasses implement :meth:`plan` (one pass of global batches of dataset indices for
    ``epoch``); this class repeats passes to reach ``steps_per_epoch``, hands rank ``r``
    every ``world``-th batch, starts at ``start_batch`` after a resume, and attaches to
    every item its augmentation seed words (seed, epoch, batch, position).
    """

    def __init__(self, num_items: int, *, batch_size: int, seed: int, steps_per_epoch: int | None = None,
                 rank: int = 0, world: int = 1):
        if num_items == 0:
            raise ConfigError("no training slices: check the split, the target label and the sampling mode")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.steps_per_epoch, self.rank, self.world = steps_per_epoch, rank, world
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def plan(self, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError

    def _rank_batches(self) -> list[list[int]]:
        batches: list[list[int]] = []
        want = self.steps_per_epoch * self.world if self.steps_per_epoch else None
        repeat = 0
        while True:
            rng = np.random.default_rng([self.seed, self.epoch, repeat])
            batches += self.plan(rng)
            repeat += 1
            if want is None or len(batches) >= want:
                break
        if want is not None:
            batches = batches[:want]
        per_rank = math.ceil(len(batches) / self.world)
        batches += batches[:per_rank * self.world - len(batches)]  # pad so every rank has as many
        return batches[self.rank::self.world]

    def __iter__(self) -> Iterator[list[ItemKey]]:
        for b, batch in enumerate(self._rank_batches()):
            if b < self.start_batch:
                continue
            yield [(int(i), (self.seed, self.epoch, b, self.rank, p)) for p, i in enumerate(batch)]

    def __len__(self) -> int:
        return len(self._rank_batches()) - self.start_batch


def _chunks(order: np.ndarray, size: int) -> list[list[int]]:
    return [order[i:i + size].tolist() for i in range(0, len(order), size)]


class ShuffledBatches(BatchPlan):
    """Every slice once per pass, shuffled."""

    def plan(self, rng: np.random.Generator) -> list[list[int]]:
        return _chunks(rng.permutation(self.num_items), self.batch_size)


class BalancedBatches(BatchPlan):
    """A pass of ``num_items`` draws, each a lesion slice with probability ``fraction``.

    Within each class slices are drawn without replacement (reshuffled when used up),
    so rare lesion slices are seen often without dropping background slices.
    """

    def __init__(self, has_lesion: np.ndarray, *, fraction: float, **kwargs):
        super().__init__(len(has_lesion), **kwargs)
        self.lesion = np.flatnonzero(has_lesion)
        self.other = np.flatnonzero(~has_lesion)
        self.fraction = fraction if len(self.lesion) and len(self.other) else float(bool(len(self.lesion)))

    def plan(self, rng: np.random.Generator) -> list[list[int]]:
        picks = rng.random(self.num_items) < self.fraction
        n_lesion = int(picks.sum())
        draw = np.empty(self.num_items, dtype=np.int64)
        draw[picks] = _cycled(self.lesion, n_lesion, rng)
        draw[~picks] = _cycled(self.other, self.num_items - n_lesion, rng)
        return _chunks(draw, self.batch_size)


def _cycled(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    reps = math.ceil(count / len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:count]


class PatientBatches(BatchPlan):
    """Batches of one case's consecutive slices (ascending z), in shuffled order.

    Each case's slices are cut into runs of ``batch_size`` from a random offset, so run
    boundaries move between epochs; runs shorter than 2 slices are dropped (batch
    statistics need at least two). What patient-wise normalisation (crgan) needs.

    With ``has_lesion`` and ``fraction`` (``sampling: balanced``) a pass holds as many runs,
    each drawn from the runs with a lesion slice with probability ``fraction`` (as
    :class:`BalancedBatches` draws slices): a 3-slice nodule in a 48-slice case is otherwise
    in one run of six (issue 13).
    """

    def __init__(self, cases: Sequence[str], rows: np.ndarray, *, has_lesion: np.ndarray | None = None,
                 fraction: float | None = None, **kwargs):
        super().__init__(len(cases), **kwargs)
        self.has_lesion = None if has_lesion is None else np.asarray(has_lesion, dtype=bool)
        self.fraction = fraction
        order = np.lexsort((rows, np.asarray(cases)))
        self.groups: list[np.ndarray] = []
        names = np.asarray(cases)[order]
        for name in dict.fromkeys(names):
            self.groups.append(order[names == name])
        if not any(len(g) >= 2 for g in self.groups):
            raise ConfigError("patient batches need a case with at least 2 training slices")

    def plan(self, rng: np.random.Generator) -> list[list[int]]:
        batches = []
        for group in self.groups:
            offset = int(rng.integers(self.batch_size)) if len(group) > self.batch_size else 0
            cuts = [0] + list(range(offset or self.batch_size, len(group), self.batch_size)) + [len(group)]
            for a, b in zip(cuts[:-1], cuts[1:]):
                if b - a >= 2:
                    batches.append(group[a:b].tolist())
        if self.has_lesion is not None and self.fraction is not None:
            return self._balanced(batches, rng)
        return [batches[i] for i in rng.permutation(len(batches))]

    def _balanced(self, runs: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
        lesion = np.array([bool(self.has_lesion[run].any()) for run in runs])
        if lesion.all() or not lesion.any():
            return [runs[i] for i in rng.permutation(len(runs))]
        picks = rng.random(len(runs)) < self.fraction
        draw = np.empty(len(runs), dtype=np.int64)
        draw[picks] = _cycled(np.flatnonzero(lesion), int(picks.sum()), rng)
        draw[~picks] = _cycled(np.flatnonzero(~lesion), int((~picks).sum()), rng)
        return [runs[i] for i in draw]


def make_batch_sampler(config: TrainConfig, dataset, *, rank: int = 0, world: int = 1) -> BatchPlan:
    """The training batch sampler the config asks for (``dataset``: a SliceDataset: cases, rows, has_lesion)."""
    common = dict(batch_size=config.batch_size, seed=config.seed, steps_per_epoch=config.steps_per_epoch,
                  rank=rank, world=world)
    if config.patient_batches:
        balanced = {"has_lesion": dataset.has_lesion, "fraction": config.lesion_fraction} \
            if config.sampling == "balanced" else {}
        return PatientBatches(dataset.cases, dataset.rows, **balanced, **common)
    if config.sampling == "balanced":
        return BalancedBatches(dataset.has_lesion, fraction=config.lesion_fraction, **common)
    return ShuffledBatches(len(dataset), **common)
