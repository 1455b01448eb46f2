"""The one training loop, for every registered model.

    for epoch:                      (phases set learning rates and loss weights per epoch)
        for batch:                  (the batch sampler: shuffled, balanced or patient runs)
            logs = model.train_step(batch, ctx)     (the model owns its GAN update order)
        validate: per-case Dice on whole cases; keep best.pt (ties: the later); early stopping
        checkpoint last.pt (atomic; everything needed to continue exactly)

Around it: the device (CUDA when available), mixed precision (bf16 on CUDA where
supported, else fp16 with GradScalers), DDP under ``torchrun`` (a process group when
WORLD_SIZE > 1: nccl on CUDA, gloo on CPU; SyncBatchNorm on CUDA; per-rank seeds; rank 0
writes checkpoints, TensorBoard and the progress bar), deterministic seeding, and
``resume`` continuing from ``RUN_DIR/last.pt`` at the exact batch it stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ctseg import checkpoint as ckpt
from ctseg.build import build_model, select_device
from ctseg.config import TrainConfig
from ctseg.batching import finish_batch
from ctseg.data import held_out_crops, training_data
from ctseg.errors import ConfigError
from ctseg.models.base import Amp, SegModel, StepContext
from ctseg.models.blocks import has_batch_norm
from ctseg.preprocessing import store_preprocessing
from ctseg.validation import ValidationPlan, validate_plan, validation_interval, validation_plan
from lkbase.atomic import copy_atomic, remove_temporaries, write_text_atomic


@dataclass
class LoopState:
    """The loop's counters; ``batch`` is the next batch of ``epoch`` (non-zero after a mid-epoch stop)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    val_interval: int = 0  # epochs between validations (0: not measured yet; ctseg.validation)
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    run_dir: Path
    step: int
    epoch: int  # epochs completed
    best_metric: float
    best_epoch: int
    stopped: str  # completed | max_steps | early_stopping
    history: list


# ---- distributed ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        """Join the process group torchrun describes (WORLD_SIZE > 1), else a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)

    def broadcast(self, value):
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (per rank); optionally force deterministic kernels."""
    seed = seed * 1000 + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic


def distribute(model: SegModel, dist: Distributed, device: torch.device, frozen: tuple[str, ...]) -> None:
    """SyncBatchNorm (CUDA) and a DDP wrapper for each trained network when running distributed."""
    if dist.world == 1:
        return
    from torch.nn.parallel import DistributedDataParallel as DDP

    for name, net in list(model.nets.items()):
        if device.type == "cuda" and has_batch_norm(net):  # SyncBatchNorm has no CPU kernels
            model.nets[name] = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net).to(device)
    model.wrap(lambda name, net: net if name in frozen else
               DDP(net, device_ids=[device.index] if device.type == "cuda" else None))


# ---- learning rates ------------------------------------------------------------------------------------
def schedulers(optimizers: dict, config: TrainConfig) -> dict:
    """One LambdaLR per optimiser, stepped per epoch: each phase's rate, linearly decayed if asked."""
    out = {}
    for name, opt in optimizers.items():
        base = opt.param_groups[0]["lr"]

        def factor(epoch: int, name: str = name, base: float = base) -> float:
            index, phase = config.phase_at(epoch)
            rate = phase.lr.get(name, phase.lr.get(name.rstrip("0123456789"), base)) / base
            if phase.decay == "linear":
                rate *= 1 - (epoch - config.phase_start(index)) / phase.epochs
            return rate

        out[name] = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return out


# ---- validation ---------------------------------------------------------------------------------------
def validate(model: SegModel, config: TrainConfig, plan: ValidationPlan, amp: Amp) -> dict:
    """Per-case Dice, precision and recall on whole slices (ctseg.validation); ``dice`` etc. their means.

    A model with its own ``validation`` (SegModel.validation) is validated by it instead,
    on the held-out crops of the plan's cases (made only if it asks).
    """
    custom = model.validation(config, lambda: held_out_crops(config, plan.cases), amp)
    if custom is not None:
        return custom
    return validate_plan(model, config, plan, amp)


@dataclass(frozen=True, kw_only=True)
class Checks:
    """What end_epoch validates (the plan), the training data (hard negatives), the epoch's training time."""

    plan: ValidationPlan
    dataset: object
    train_seconds: float

    def due(self, config: TrainConfig, state: LoopState, epoch: int) -> bool:
        """Every ``val_interval`` epochs (``val_every`` stretched by the time budget), and the last epoch."""
        if not self.plan.cases:
            return False
        interval = state.val_interval or config.val_every
        return (epoch + 1) % interval == 0 or epoch + 1 == config.total_epochs

    def run(self, model: SegModel, config: TrainConfig, state: LoopState, amp: Amp) -> dict:
        started = time.perf_counter()
        metrics = validate(model, config, self.plan, amp)
        if config.hard_negatives:
            refresh_hard_negatives(model, config, self.dataset, amp)
        if config.val_budget and not state.val_interval:  # measured once, then kept (and checkpointed)
            spent = time.perf_counter() - started
            state.val_interval = validation_interval(self.train_seconds, spent, config.val_every, config.val_budget)
            if state.val_interval > config.val_every:
                print(f"validation takes {spent:.1f} s, an epoch of training {self.train_seconds:.1f} s: "
                      f"validating every {state.val_interval} epochs (val_budget {config.val_budget:g})",
                      file=sys.stderr)
        return metrics


def refresh_hard_negatives(model: SegModel, config: TrainConfig, dataset, amp: Amp, count: int = 64) -> None:
    """Hard-negative mining: for ``count`` random training slices, the pixels where the model is most wrong."""
    from ctseg.crops import hard_pixels
    from ctseg.predict import predict_volume

    rng = np.random.default_rng([config.seed, len(dataset.hard)])
    for i in rng.choice(len(dataset), size=min(count, len(dataset)), replace=False):
        image, target = dataset.read(int(i))
        prob = predict_volume(model, image[None], replace(config, context=0, channels=None), amp=amp)
        dataset.hard[int(i)] = hard_pixels(prob[0, 0], target[0])


# ---- logging --------------------------------------------------------------------------------------------
def image_grid(batch: dict, pred: torch.Tensor, config: TrainConfig, windows: int, count: int = 4) -> torch.Tensor:
    """(1, rows*H, 3*W): per sample the CT (centre slice, first window), the truth and the prediction."""
    centre = config.context * windows
    rows = []
    for i in range(min(count, batch["image"].shape[0])):
        parts = [batch["image"][i, centre], batch["target"][i, 0], pred[i, 0]]
        rows.append(torch.cat([p.float().cpu().clamp(0, 1) for p in parts], dim=1))
    return torch.cat(rows, dim=0)[None]


class Logger:
    """TensorBoard on rank 0: step scalars averaged since the last write, learning rates, images."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, logs: dict) -> None:
        for key, value in logs.items():
            self.sums[key] = self.sums.get(key, 0) + value
        self.count += 1

    def flush_steps(self, step: int, optimizers: dict) -> dict[str, float]:
        means = {k: float(v) / max(self.count, 1) for k, v in self.sums.items()}
        if self.writer is not None:
            for key, value in means.items():  # a model's "dice" is the soft Dice of its training crops
                self.writer.add_scalar(f"train/{'soft_dice' if key == 'dice' else key}", value, step)
            for name, opt in optimizers.items():
                self.writer.add_scalar(f"lr/{name}", opt.param_groups[0]["lr"], step)
        self.sums, self.count = {}, 0
        return means

    def epoch(self, step: int, metrics: dict, grid: torch.Tensor | None) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():  # dice, or a model's own validation numbers
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"val/{key}", value, step)
        if grid is not None:
            self.writer.add_image("samples/ct_truth_prediction", grid, step, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---- checkpoints ---------------------------------------------------------------------------------------
def checkpoint_dict(model: SegModel, optimizers: dict, scheds: dict, amp: Amp, state: LoopState,
                    config: TrainConfig, rng: list) -> dict:
    return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "config": config.to_dict(), "model": config.model,
            "in_channels": model.in_channels,
            "networks": {n: net.state_dict() for n, net in model.nets.items()},
            "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in scheds.items()},
            "scalers": amp.state_dict(), "model_state": model.extra_state(),
            "epoch": state.epoch, "batch": state.batch, "step": state.step, "loop": state.to_dict(), "rng": rng}


def restore(data: dict, model: SegModel, optimizers: dict, scheds: dict, amp: Amp, dist: Distributed) -> LoopState:
    for name, net in model.nets.items():
        net.load_state_dict(data["networks"][name])
    for name, opt in optimizers.items():
        opt.load_state_dict(data["optimizers"][name])
    for name, sched in scheds.items():
        sched.load_state_dict(data["schedulers"][name])
    amp.load_state_dict(data["scalers"])
    model.load_extra_state(data.get("model_state", {}))
    states = data["rng"]
    ckpt.set_rng_state(states[dist.rank] if dist.rank < len(states) else states[0])
    return LoopState(**data["loop"])


def check_resumable(config: TrainConfig, saved: dict, path: Path) -> None:
    """Refuse to resume a checkpoint of another model or target."""
    for key in ("model", "target", "store"):
        mine, theirs = config.to_dict()[key], saved.get(key)
        if key == "store":
            mine, theirs = str(Path(mine).resolve()), str(Path(theirs).resolve())
        if mine != theirs:
            raise ConfigError(f"{path}: checkpoint has {key} {theirs!r}, this run asks {mine!r}")


# ---- the loop -------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``config.model`` on ``config.store``, writing into ``config.out``; see the module docstring."""
    from tqdm import tqdm

    dist = Distributed.from_env()
    device = select_device(config.device, dist.local_rank)
    seed_everything(config.seed, dist.rank, config.deterministic)
    run_dir = Path(config.out)
    last = run_dir / "last.pt"
    saved = None
    if resume:
        saved = ckpt.load(last)
        check_resumable(config, saved["config"], last)
        if dist.main:
            remove_temporaries(run_dir)  # torn writes (checkpoints, history, config) of the run that was killed
    elif last.exists():
        raise ConfigError(f"{last}: a run is already there; use --resume to continue it or another --out")

    plan = validation_plan(config)
    if dist.main and progress:
        print(f"validating on {plan.description}", file=sys.stderr)
    dataset, sampler, loader = training_data(config, rank=dist.rank, world=dist.world,
                                             pin_memory=device.type == "cuda", exclude=plan.excluded())
    model = build_model(config, dataset.in_channels).to(device)
    distribute(model, dist, device, config.frozen)
    optimizers = model.optimizers(config)
    scheds = schedulers(optimizers, config)
    amp = Amp(device, config.amp, list(optimizers))
    state = restore(saved, model, optimizers, scheds, amp, dist) if saved else LoopState()
    if config.max_steps and state.step >= config.max_steps:
        raise ConfigError(f"{last}: the run is at step {state.step}, max_steps is {config.max_steps}; raise it")
    log = Logger(run_dir, dist.main)
    if dist.main:
        config.save(run_dir / "config.yaml")

    preprocessing = store_preprocessing(config.store)  # what `ctseg predict --input` needs without the store

    def save(path: Path) -> None:
        rng = dist.gather(ckpt.rng_state())
        if dist.main:
            ckpt.save_atomic({**checkpoint_dict(model, optimizers, scheds, amp, state, config, rng),
                              "preprocessing": preprocessing}, path)

    stopped = "completed"
    windows = dataset.in_channels // (2 * config.context + 1)
    try:
        while state.epoch < config.total_epochs and stopped == "completed":
            epoch = state.epoch
            sampler.set_epoch(epoch, state.batch)
            weights = config.weights_at(epoch)
            model.train()
            started = time.perf_counter()
            bar = tqdm(total=len(sampler), desc=f"epoch {epoch + 1}/{config.total_epochs}", unit="batch",
                       disable=not (progress and dist.main) or None)
            batch = None
            total_batches = len(sampler) + sampler.start_batch
            for batch in loader:
                batch = finish_batch(batch, device, size=dataset.size, soft_target=any(dataset.soft.values()))
                ctx = StepContext(optimizers=optimizers, amp=amp, weights=weights, step=state.step, epoch=epoch,
                                  trainable=frozenset(optimizers))
                log.add(model.train_step(batch, ctx))
                state.step += 1
                state.batch += 1
                bar.update()
                if state.step % config.log_every == 0:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in log.flush_steps(state.step, optimizers).items()})
                if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                    save(last)
                if config.max_steps and state.step >= config.max_steps:
                    stopped = "max_steps"
                    break
            bar.close()
            if stopped == "max_steps" and state.batch < total_batches:
                save(last)  # mid-epoch: resume continues at state.batch
                break
            checks = Checks(plan=plan, dataset=dataset, train_seconds=time.perf_counter() - started)
            stopped = end_epoch(model, config, state, scheds, amp, dist, log, checks, batch, windows, save)
            if stopped == "completed" and config.max_steps and state.step >= config.max_steps:
                stopped = "max_steps"
    finally:
        log.close()
    return TrainResult(run_dir=run_dir, step=state.step, epoch=state.epoch, best_metric=state.best,
                       best_epoch=state.best_epoch, stopped=stopped, history=state.history)


def end_epoch(model: SegModel, config: TrainConfig, state: LoopState, scheds: dict, amp: Amp, dist: Distributed,
              log: Logger, checks: "Checks", batch: dict | None, windows: int, save) -> str:
    """Learning rates, validation, best model, images, history and checkpoint at the end of an epoch."""
    epoch = state.epoch
    state.epoch, state.batch = epoch + 1, 0
    with warnings.catch_warnings():  # a network a stage does not train (crgan's r in stage 1) never steps
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        for sched in scheds.values():
            sched.step()
    metrics: dict = {}
    if dist.main and checks.due(config, state, epoch):
        metrics = checks.run(model, config, state, amp)
    metrics = dist.broadcast(metrics)
    grid = None
    if dist.main and batch is not None and config.image_every and (epoch + 1) % config.image_every == 0:
        model.eval()
        with torch.no_grad(), amp.autocast():
            grid = image_grid(batch, model.predict(batch["image"]), config, windows)
    log.epoch(state.step, metrics, grid)
    state.history.append({"epoch": epoch + 1, "step": state.step, **metrics})
    tracked = "score" if "score" in metrics else "dice"  # a model's own validation score, else Dice
    # A tie keeps the later model (it trained longer): small validation sets tie often, at 0 before the
    # model finds a small lesion in whole slices (issue 13); only a strict gain resets early stopping.
    improved = tracked in metrics and metrics[tracked] >= state.best
    if improved:
        gained = metrics[tracked] > state.best
        state.best, state.best_epoch = metrics[tracked], epoch + 1
        state.bad_epochs = 0 if gained else state.bad_epochs + 1
    elif tracked in metrics:
        state.bad_epochs += 1
    # last.pt is the epoch's commit point, so it is written last: a run killed before it resumes
    # from the previous checkpoint and writes history and best model again; one killed after it
    # has them (written after it, a kill in between lost the best model for good).
    out = Path(config.out)
    if dist.main:
        write_text_atomic(out / "history.json", json.dumps(state.history, indent=1))
    if improved:
        save(out / "best.pt")
        if dist.main:
            copy_atomic(out / "best.pt", out / "last.pt")
    else:
        save(out / "last.pt")
    if config.early_stopping and state.bad_epochs >= config.early_stopping:
        return "early_stopping"
    return "completed"
