"""The data model passed between sources, the converter and the store.

* :class:`CaseRef` — a case found on disk (ids and files, nothing decoded);
  cheap and picklable, it is what worker processes receive.
* :class:`CaseVolume` — a case loaded by its source onto the canonical grid
  (int16 HU and binary labels); every source yields this same record.
* :class:`CaseRecord` — everything the store keeps about a converted case,
  stored as the case group's attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Union

import numpy as np

from ctprep.geometry import Geometry, SourceGrid
from ctprep.lookup import LazySlices
from ctprep.windowing import Window
from lkbase.errors import ParameterError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class LabelSpec:
    """A binary label derived from a source segmentation: voxels whose value is in ``values``."""

    name: str
    values: tuple[int, ...]
    description: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "values": list(self.values), "description": self.description}

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSpec":
        return cls(name=str(data["name"]), values=tuple(int(v) for v in data["values"]),
                   description=str(data.get("description", "")))


@dataclass(frozen=True, kw_only=True)
class CaseRef:
    """A case found in an input folder: its public id, patient and files by role."""

    source: str
    case_id: str
    patient_id: str
    root: str
    files: tuple[tuple[str, str], ...]  # (role, path relative to root)
    #: The official split when the source's own files give it per case (DeepLesion's Train_Val_Test).
    split: str | None = None
    #: Rows of the source's index file describing this case (DeepLesion: DL_info.csv row number, then its
    #: fields), found by discover so that load never re-reads the index.
    rows: tuple[tuple[str, ...], ...] = ()

    def path(self, role: str) -> Path:
        """The (first) file of ``role``."""
        for name, rel in self.files:
            if name == role:
                return Path(self.root) / rel
        raise KeyError(f"case {self.case_id} has no {role!r} file")

    def paths(self, role: str) -> list[Path]:
        """Every file of ``role`` (e.g. the slices of a DICOM series)."""
        return [Path(self.root) / rel for name, rel in self.files if name == role]


@dataclass(frozen=True, kw_only=True)
class InputFile:
    """One raw input as recorded in the conversion manifest."""

    role: str
    path: str  # relative to the input folder
    size: int
    sha256: str

    def to_dict(self) -> dict:
        return {"role": self.role, "path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict) -> "InputFile":
        return cls(role=data["role"], path=data["path"], size=int(data["size"]), sha256=data["sha256"])


@dataclass(frozen=True, kw_only=True, eq=False)
class CaseVolume:
    """A case on the canonical grid: ``hu`` is (z, y, x) int16, each label (z, y, x) uint8 in {0, 1}.

    ``label_specs`` describes each label; ``annotations`` holds JSON-serialisable
    per-case findings that are not masks (points, measurements, characteristics).

    Labels are numpy arrays or :class:`ctprep.lookup.LazySlices` (computed slice by
    slice as the store writes them); ``np.asarray`` gives an array either way.
    """

    ref: CaseRef
    hu: np.ndarray
    labels: Mapping[str, Union[np.ndarray, LazySlices]]
    label_specs: tuple[LabelSpec, ...]
    geometry: Geometry
    source_grid: SourceGrid
    inputs: tuple[InputFile, ...] = ()
    annotations: Mapping[str, object] = field(default_factory=dict)
    #: Channels of this case added after the conversion's windows (DeepLesion's own DICOM window).
    windows: tuple[Window, ...] = ()

    def __post_init__(self) -> None:
        if self.hu.dtype != np.int16 or self.hu.shape != self.geometry.shape:
            raise ParameterError(f"case {self.ref.case_id}: hu must be int16 of shape {self.geometry.shape}, "
                                 f"found {self.hu.dtype} {self.hu.shape}")
        if set(self.labels) != {spec.name for spec in self.label_specs}:
            raise ParameterError(f"case {self.ref.case_id}: labels {sorted(self.labels)} differ from their specs "
                                 f"{sorted(spec.name for spec in self.label_specs)}")
        for name, label in self.labels.items():
            if label.shape != self.hu.shape or label.dtype != np.uint8:
                raise ParameterError(f"case {self.ref.case_id}: label {name!r} must be uint8 of shape "
                                     f"{self.hu.shape}, found {label.dtype} {label.shape}")


@dataclass(frozen=True, kw_only=True)
class CaseRecord:
    """What the store keeps about one converted case (the case group's attributes).

    ``geometry`` describes the stored grid (after any resampling) with all of
    its slices; ``slice_indices`` says which of them were kept (``--slices``)
    and ``z_positions`` their superior coordinate in mm. ``lesion_pixels``
    counts ``lesion_label`` pixels in each stored slice. No input path is kept here
    (a folder may be named after the patient): the manifest lists the inputs, in public form.
    """

    case_id: str
    source: str
    patient_id: str
    split: str
    geometry: Geometry
    canonical_geometry: Geometry
    source_grid: SourceGrid
    slice_indices: tuple[int, ...]
    z_positions: tuple[float, ...]
    windows: tuple[Window, ...]
    labels: tuple[LabelSpec, ...]
    lesion_label: str | None
    lesion_pixels: tuple[int, ...]
    has_hu: bool = False
    quirks: tuple[str, ...] = ()
    parameters: Mapping[str, object] = field(default_factory=dict)
    annotations: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ParameterError(f"case {self.case_id}: split must be one of {SPLITS}, found {self.split!r}")
        n = len(self.slice_indices)
        if len(self.z_positions) != n or len(self.lesion_pixels) != n:
            raise ParameterError(f"case {self.case_id}: slice_indices, z_positions and lesion_pixels "
                                 f"must have one entry per stored slice ({n})")

    @property
    def num_slices(self) -> int:
        return len(self.slice_indices)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.labels)

    def to_dict(self) -> dict:
        return {
            "case_id": self.case_id,
            "source": self.source,
            "patient_id": self.patient_id,
            "split": self.split,
            "geometry": self.geometry.to_dict(),
            "canonical_geometry": self.canonical_geometry.to_dict(),
            "source_grid": self.source_grid.to_dict(),
            "slice_indices": list(self.slice_indices),
            "z_positions": list(self.z_positions),
            "windows": [w.to_dict() for w in self.windows],
            "labels": [spec.to_dict() for spec in self.labels],
            "lesion_label": self.lesion_label,
            "lesion_pixels": list(self.lesion_pixels),
            "has_hu": self.has_hu,
            "quirks": list(self.quirks),
            "parameters": dict(self.parameters),
            "annotations": dict(self.annotations),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CaseRecord":
        return cls(
            case_id=data["case_id"],
            source=data["source"],
            patient_id=data["patient_id"],
            split=data["split"],
            geometry=Geometry.from_dict(data["geometry"]),
            canonical_geometry=Geometry.from_dict(data["canonical_geometry"]),
            source_grid=SourceGrid.from_dict(data["source_grid"]),
            slice_indices=tuple(int(v) for v in data["slice_indices"]),
            z_positions=tuple(float(v) for v in data["z_positions"]),
            windows=tuple(Window.from_dict(w) for w in data["windows"]),
            labels=tuple(LabelSpec.from_dict(s) for s in data["labels"]),
            lesion_label=data.get("lesion_label"),
            lesion_pixels=tuple(int(v) for v in data["lesion_pixels"]),
            has_hu=bool(data.get("has_hu", False)),
            quirks=tuple(data.get("quirks", ())),
            parameters=dict(data.get("parameters", {})),
            annotations=dict(data.get("annotations", {})),
        )
