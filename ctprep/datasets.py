"""Dataset manifests (data_manifests/<name>.json) and the patient-level split.

A manifest holds what is known about a public dataset: its official case ids,
label values and the binary labels derived from them, default windows, the
official split if there is one, and known quirks with the cases they affect.
Quirks live here, not in code branches: the converter reports them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ctprep.case import SPLITS, LabelSpec
from ctprep.errors import ManifestError
from ctprep.windowing import Window, parse_window
from lkbase.errors import ParameterError

MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"


@dataclass(frozen=True, kw_only=True)
class Quirk:
    id: str
    cases: tuple[str, ...]
    description: str

    def to_dict(self) -> dict:
        return {"id": self.id, "cases": list(self.cases), "description": self.description}


@dataclass(frozen=True, kw_only=True)
class DatasetManifest:
    name: str
    title: str
    case_ids: tuple[str, ...]
    label_values: Mapping[int, str]
    labels: tuple[LabelSpec, ...]
    lesion_label: str | None
    default_windows: tuple[str, ...]
    #: The window a reader sees this dataset's lesions in (ctlabel's default GrabCut/matting channel).
    lesion_window: str | None
    official_split: Mapping[str, str] | None
    quirks: tuple[Quirk, ...]
    citation: str
    licence: str
    url: str

    def windows(self) -> tuple[Window, ...]:
        return tuple(parse_window(w) for w in self.default_windows)

    def quirks_of(self, case_id: str) -> tuple[Quirk, ...]:
        return tuple(q for q in self.quirks if case_id in q.cases)

    def summary(self) -> dict:
        """What a conversion manifest records about the dataset."""
        return {"name": self.name, "title": self.title, "citation": self.citation,
                "licence": self.licence, "url": self.url,
                "label_values": {str(k): v for k, v in self.label_values.items()}}


def load_dataset_manifest(name: str, folder: Path = MANIFEST_DIR) -> DatasetManifest:
    path = folder / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no manifest for dataset {name!r}") from exc
    except ValueError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    try:
        case_ids = tuple(data["case_id_format"].format(n=n)
                         for lo, hi in data["case_numbers"] for n in range(lo, hi + 1))
        split = data.get("official_split")
        if split is not None and not set(split.values()) <= set(SPLITS):
            raise ManifestError(f"{path}: official_split values must be among {SPLITS}")
        return DatasetManifest(
            name=data["name"], title=data["title"], case_ids=case_ids,
            label_values={int(k): str(v) for k, v in data["label_values"].items()},
            labels=tuple(LabelSpec.from_dict(s) for s in data["labels"]),
            lesion_label=data.get("lesion_label"),
            default_windows=tuple(data["default_windows"]),
            lesion_window=data.get("lesion_window"),
            official_split=split,
            quirks=tuple(Quirk(id=q["id"], cases=tuple(q["cases"]), description=q["description"])
                         for q in data.get("quirks", [])),
            citation=data.get("citation", ""), licence=data.get("licence", ""), url=data.get("url", ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """Patient-level split: fractions (train, val, test) and the seed of the assignment."""

    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or min(self.fractions) < 0 or abs(sum(self.fractions) - 1) > 1e-6:
            raise ParameterError(f"split fractions must be 3 non-negative numbers summing to 1, found {self.fractions}")

    def to_dict(self) -> dict:
        return {"seed": self.seed, "fractions": list(self.fractions)}

    @classmethod
    def from_dict(cls, data: dict) -> "SplitConfig":
        return cls(seed=int(data["seed"]), fractions=tuple(float(f) for f in data["fractions"]))


def assign_split(patient_id: str, config: SplitConfig, official: Mapping[str, str] | None = None) -> str:
    """The split of a patient: the official one when given, else a seeded hash of the patient id.

    Hashing (not shuffling) makes a patient's split independent of which other
    cases are converted, so subsets and later additions never move a patient,
    and all scans of one patient land on the same side.
    """
    if official and patient_id in official:
        return official[patient_id]
    u = _unit_hash(f"{config.seed}:{patient_id}")
    train, val, _ = config.fractions
    if u < train:
        return "train"
    return "val" if u < train + val else "test"


def _unit_hash(key: str) -> float:
    """A number in [0, 1) from the sha256 of ``key``: the same for the same key on every machine."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def assign_fold(patient_id: str, folds: int, seed: int = 0) -> int:
    """The cross-validation fold (0 .. folds-1) of a patient: a seeded hash of the patient id.

    Like :func:`assign_split`, independent of which other cases are converted, and every scan
    of a patient shares its fold; the key differs from the split's, so folds cut across it.
    """
    if folds < 2:
        raise ParameterError(f"--folds must be at least 2, found {folds}")
    return min(int(_unit_hash(f"{seed}:fold:{patient_id}") * folds), folds - 1)


def fold_table(records, folds: int, seed: int = 0) -> dict:
    """The manifest's ``folds``: k, seed, and the fold of every train/val case and patient (test cases have none)."""
    cases = {r.case_id: assign_fold(r.patient_id, folds, seed) for r in records if r.split != "test"}
    patients = {r.patient_id: cases[r.case_id] for r in records if r.case_id in cases}
    return {"k": folds, "seed": seed, "splits": ["train", "val"],
            "cases": dict(sorted(cases.items())), "patients": dict(sorted(patients.items()))}
