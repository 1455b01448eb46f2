"""Predictions stores: a model's prediction labels per case, kept apart from the dataset store they came from.

Convention (docs/store-format.md, "Predictions stores"): a predictions store is a store of
the same format whose root attribute says ``kind: "predictions"`` and names its dataset
store under ``dataset``: ``path`` (the URL, or the absolute local path), ``created`` and
``digest`` (sha256 of the dataset store's format, version, creation time and conversion
parameters: :func:`dataset_identity`). Its case groups hold no image, only ``labels/``; a
case's marker carries the dataset case's record and ``dataset_case``, the digest of that
case (its record and the recorded chunk checksums of its image: :func:`dataset_case_digest`)
when it was predicted. Used with another store, with its dataset store re-converted, or
with a case rewritten since, a predictions store is refused with one line
(:class:`~ctprep.errors.PredictionsMismatchError`). A new case is written whole, its marker
last (an interrupted write is redone by the next run); labels added to a complete case go
through ``write_label`` (staged, then renamed). :class:`WithPredictions` reads a dataset
store and a predictions store of it as one store (evaluation, previews, exports).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ctprep.errors import CaseNotFoundError, PredictionsMismatchError, StoreError, StoreFormatError
from ctprep.store.arrays import SliceBatch, check_label_array
from ctprep.store.files import _Files, is_url, store_lock
from ctprep.store.integrity import missing_chunks
from ctprep.store.writing import complete_case
from ctprep.store.layout import (_CASE_KEY, _STORE_KEY, FORMAT_NAME, PREDICTION_PREFIX, PREDICTIONS_KIND, store_kind,
                                 validate_label_name)
from ctprep.store.slicestore import SliceStore


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def dataset_identity(dataset: SliceStore) -> dict:
    """What a predictions store records of its dataset store: creation time and a digest that changes on
    re-conversion (format, version, creation time, conversion parameters)."""
    info = dataset.info
    keys = ("format", "format_version", "created", "parameters")
    return {"created": info.get("created"), "digest": _digest({k: info.get(k) for k in keys})}


def dataset_case_digest(dataset: SliceStore, case_id: str) -> str:
    """The digest of a dataset case as predicted: its record and its image's recorded chunk checksums."""
    image = dataset.recorded_checksums(case_id).get("image")  # None in stores older than checksums
    return _digest({"record": dataset.record(case_id).to_dict(), "image": image})


def location(path: str | Path) -> str:
    """A store's location as a predictions store records it: the URL, or the absolute local path."""
    return str(path) if is_url(path) else str(Path(path).resolve())


def is_predictions_store(path: str | Path) -> bool:
    """Whether ``path`` holds a predictions store (reads its root metadata only)."""
    try:
        meta = json.loads(_Files(path).read_bytes("zarr.json"))
    except (OSError, ValueError, StoreError):
        return False
    info = (meta.get("attributes") or {}).get(_STORE_KEY) or {}
    return isinstance(info, dict) and info.get("format") == FORMAT_NAME and store_kind(info) == PREDICTIONS_KIND


class PredictionStore(SliceStore):
    """A predictions store (see the module doc). Open with :meth:`open` or :meth:`open_or_create`."""

    KIND = PREDICTIONS_KIND

    @classmethod
    def open_or_create(cls, path: str | Path, dataset: SliceStore, *, created_by: str) -> "PredictionStore":
        """The predictions store at ``path`` for ``dataset``: created when nothing is there, else opened and checked."""
        with store_lock(path):  # two runs starting together must not both create it
            if not cls.exists(path):
                reference = {"path": location(dataset.path), **dataset_identity(dataset)}
                return cls.create(path, parameters={}, created_by=created_by,
                                  info={"kind": PREDICTIONS_KIND, "dataset": reference})
        store = cls.open(path, mode="a")
        store.check_dataset(dataset)
        return store

    @property
    def dataset_reference(self) -> dict:
        """The dataset store these predictions came from: path, created, digest."""
        return dict(self.info.get("dataset") or {})

    def check_dataset(self, dataset: SliceStore) -> None:
        """Refuse (one line) a dataset store other than the one predicted from, or that one re-converted."""
        ref = self.dataset_reference
        now = dataset_identity(dataset)
        if ref.get("digest") == now["digest"]:
            return
        if ref.get("path") == location(dataset.path):
            why = f"was re-converted since (created {ref.get('created')}, now {now['created']})"
        else:
            why = "is another store"
        raise PredictionsMismatchError(f"{self.path}: holds predictions of {ref.get('path')}, and {dataset.path} "
                                       f"{why}; predict again into a new predictions store")

    def open_dataset(self, dataset_path: str | Path | None = None) -> SliceStore:
        """The dataset store predicted from (``dataset_path``: give it where it moved), checked."""
        path = dataset_path if dataset_path is not None else self.dataset_reference.get("path")
        if path is None:
            raise StoreFormatError(f"{self.path}: names no dataset store (attribute dataset.path)")
        try:
            dataset = SliceStore.open(path)
        except StoreFormatError as exc:
            raise StoreFormatError(f"{self.path}: its dataset store cannot be opened ({exc}); "
                                   "give it with --store") from exc
        self.check_dataset(dataset)
        return dataset

    def case_digest(self, case_id: str) -> str | None:
        """The dataset case digest recorded when the case was predicted."""
        return self._case_group(case_id).attrs[_CASE_KEY].get("dataset_case")

    def is_current(self, dataset: SliceStore, case_id: str) -> bool:
        """Whether the case is here, whole, and predicted from the dataset case as it is now."""
        return case_id in self and self.case_problem(case_id) is None \
            and self.case_digest(case_id) == dataset_case_digest(dataset, case_id)

    def check_case(self, dataset: SliceStore, case_id: str) -> None:
        if self.case_digest(case_id) != dataset_case_digest(dataset, case_id):
            raise PredictionsMismatchError(f"{self.path}: case {case_id} was predicted from another version of it "
                                           f"than {dataset.path} holds now (rewritten since); predict it again")

    def current_checksums(self, case_id: str) -> dict[str, dict[str, str]]:
        """The chunk checksums of the case's prediction labels as stored now (a predictions store has no image)."""
        return {f"labels/{n}": self._files.checksums(self._array_path(case_id, f"labels/{n}"))
                for n in self.label_names(case_id)}

    def case_problem(self, case_id: str) -> str | None:
        """What a complete case lacks on disk (a label, chunk files its marker lists), or None when whole."""
        try:
            recorded = self.recorded_checksums(case_id)
        except (CaseNotFoundError, StoreFormatError) as exc:
            return str(exc)
        for name, chunks in recorded.items():
            if problem := missing_chunks(self._files, str(self.path), case_id, name,
                                         self._array_path(case_id, name), chunks):
                return problem
        return None

    def write_case_predictions(self, dataset: SliceStore, case_id: str, labels: Mapping[str, np.ndarray],
                               attributes: Mapping[str, Mapping]) -> None:
        """Store ``labels`` (name -> array on the case's grid) of a dataset case, each with its attributes.

        A case not here yet, or predicted from an older version of the dataset case, is written
        whole with its marker last; a complete one gets the labels through write_label.
        """
        digest = dataset_case_digest(dataset, case_id)
        record = dataset.record(case_id)
        for name, array in labels.items():
            validate_label_name(name)
            check_label_array(case_id, name, array, record)
        with self.case_lock(case_id):
            if self.is_current(dataset, case_id):
                for name, array in labels.items():
                    self.write_label(case_id, name, array, attributes.get(name))
                return
            try:
                self.delete_case(case_id)
                group = self._cases_group().create_group(case_id)
                group.attrs.update({_CASE_KEY: {"complete": False}})
                folder = group.create_group("labels")
                sums = {f"labels/{name}": self._write(folder, name, array, ("z", "y", "x"), attributes.get(name))
                        for name, array in labels.items()}
                complete_case(group, self._files, str(self.path), record, sums, dataset_case=digest)
            except Exception as exc:
                error = self._write_error(exc, f"case {case_id}")
                if error is exc:
                    raise  # an incomplete case: invisible to readers, redone by the next run
                self._discard_case(case_id)
                raise error from exc


class WithPredictions:
    """A dataset store read together with a predictions store of it, as one store.

    Cases, records, images and the dataset's truth labels come from ``dataset``; predictions
    only from the predictions store (the dataset's own ``pred_*`` labels are not listed), once
    the case is checked against the dataset case (PredictionStore.check_case). Offers what evaluation, previews and
    exports read: case_ids, record, records, label_names, read_label, label_attributes, read_slices.
    """

    def __init__(self, dataset: SliceStore, predictions: PredictionStore):
        predictions.check_dataset(dataset)
        self.dataset, self.predictions = dataset, predictions
        self.path = f"{dataset.path} (predictions {predictions.path})"
        self._predicted: dict[str, list[str]] = {}

    def case_ids(self) -> list[str]:
        return self.dataset.case_ids()

    def record(self, case_id: str):
        return self.dataset.record(case_id)

    def records(self) -> list:
        return self.dataset.records()

    def predicted_labels(self, case_id: str) -> list[str]:
        """The labels the predictions store holds for the case (none when it was not predicted)."""
        if case_id not in self._predicted:
            found = []
            if case_id in self.predictions:
                self.predictions.check_case(self.dataset, case_id)
                found = self.predictions.label_names(case_id)
            self._predicted[case_id] = found
        return self._predicted[case_id]

    def _holder(self, case_id: str, name: str) -> SliceStore:
        return self.predictions if name in self.predicted_labels(case_id) else self.dataset

    def label_names(self, case_id: str) -> list[str]:
        truth = {n for n in self.dataset.label_names(case_id) if not n.startswith(PREDICTION_PREFIX)}
        return sorted(truth | set(self.predicted_labels(case_id)))

    def read_label(self, case_id: str, name: str) -> np.ndarray:
        return self._holder(case_id, name).read_label(case_id, name)

    def label_attributes(self, case_id: str, name: str) -> dict:
        return self._holder(case_id, name).label_attributes(case_id, name)

    def read_slices(self, keys: Sequence[tuple[str, int]], labels: Sequence[str] = ()) -> SliceBatch:
        """SliceStore.read_slices, the predicted labels read from the predictions store."""
        keys = [(str(c), int(z)) for c, z in keys]
        theirs = [n for n in labels if any(n in self.predicted_labels(c) for c, _ in keys)]
        batch = self.dataset.read_slices(keys, [n for n in labels if n not in theirs])
        out = dict(batch.labels)
        for name in theirs:
            volumes = {c: self.read_label(c, name) for c in dict.fromkeys(c for c, _ in keys)}
            out[name] = np.stack([volumes[c][z] for c, z in keys])
        return SliceBatch(keys=batch.keys, image=batch.image, labels={n: out[n] for n in labels})


def open_predictions(path: str | Path, dataset_path: str | Path | None = None) -> WithPredictions:
    """A predictions store with its dataset store (``dataset_path``: instead of the one it names), checked."""
    predictions = PredictionStore.open(path)
    return WithPredictions(predictions.open_dataset(dataset_path), predictions)


def open_for_reading(path: str | Path) -> SliceStore | WithPredictions:
    """A dataset store, or a predictions store read with the dataset store it names."""
    return open_predictions(path) if is_predictions_store(path) else SliceStore.open(path)
