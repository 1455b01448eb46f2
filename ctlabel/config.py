"""What ``ctlabel trimap`` and ``ctlabel softmask`` are asked to do: :class:`LabelConfig`.

Convention: the evidence a label is made from is one of :data:`EVIDENCE_KINDS`; the outputs
are ``trimap_<name>`` and ``soft_<name>`` (names by :mod:`ctprep.store.layout`); what shapes
them (:meth:`LabelConfig.trimap_parameters`, :meth:`LabelConfig.soft_parameters`) is stored,
as JSON (:func:`as_stored`), under the labels' attribute :data:`ATTRIBUTE_KEY` and compared
on resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from ctlabel.channels import AUTO
from ctlabel.matting import MattingParams
from ctlabel.trimap import TrimapParams
from ctprep.store.layout import soft_label, trimap_label, validate_label_name
from lkbase.errors import ParameterError

EVIDENCE_KINDS = ("recist", "readers", "mask")  # --from
DEFAULT_NAMES = {"recist": "recist", "readers": "nodule"}  # --from mask: the label's own name
ATTRIBUTE_KEY = "ctlabel"  # the attribute of every label ctlabel writes


@dataclass(frozen=True, kw_only=True)
class LabelConfig:
    """What ``ctlabel trimap`` / ``softmask`` do; :meth:`trimap_parameters` must match to resume."""

    store: str
    source: str  # recist | readers | mask
    name: str | None = None  # outputs trimap_<name>, soft_<name>; default recist, nodule or the mask label
    label: str | None = None  # --from mask: the binary label (default: the store's lesion label)
    recist_from: str | None = None  # --from recist: measure the axes on this binary label (ctlabel/lesions.py)
    intersection: str = "nodule_all"  # --from readers: where all readers agree
    union: str = "nodule_any"  # --from readers: where any reader marked
    matting: bool = True  # False: trimaps only
    channels: tuple[str, ...] | None = None  # windows GrabCut and matting see; None: auto (ctlabel/channels.py)
    trimap: TrimapParams = field(default_factory=TrimapParams)
    matting_params: MattingParams = field(default_factory=MattingParams)
    cases: tuple[str, ...] | None = None
    workers: int = 1
    dask: str | None = None  # "local", "local:N" or a scheduler address: one dask.distributed task per lesion
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.source not in EVIDENCE_KINDS:
            raise ParameterError(f"--from {self.source!r}: expected one of {', '.join(EVIDENCE_KINDS)}")
        if self.recist_from is not None and self.source != "recist":
            raise ParameterError(f"--recist-from {self.recist_from}: RECIST evidence, contradicts --from {self.source}")
        if self.workers < 1:
            raise ParameterError(f"workers must be >= 1, found {self.workers}")
        if self.dask is not None and self.workers > 1:
            raise ParameterError(f"--workers {self.workers} and --dask {self.dask}: choose one (local processes "
                                 "or a dask cluster)")
        if self.dask is not None and not self.dask.strip():
            raise ParameterError("--dask: expected a scheduler address (tcp://host:8786) or local[:N]")
        if self.name is not None:
            try:
                validate_label_name(self.name)
            except ValueError:
                raise ParameterError(f"--name {self.name!r}: expected a plain label name "
                                     "(no '/', no leading '.' or '_')") from None

    @property
    def output_name(self) -> str:
        if self.name:
            return self.name
        if self.source == "mask":
            if not self.label:
                raise ParameterError("--from mask needs --label (or a store whose cases name a lesion label)")
            return self.label
        return DEFAULT_NAMES[self.source]

    @property
    def trimap_label(self) -> str:
        return trimap_label(self.output_name)

    @property
    def soft_label(self) -> str:
        return soft_label(self.output_name)

    @property
    def evidence_labels(self) -> list[str]:
        """The stored labels the evidence is read from (none for RECIST annotations)."""
        if self.source == "mask":
            return [self.label]
        if self.source == "readers":
            return [self.intersection, self.union]
        return [self.recist_from] if self.recist_from else []

    def evidence(self) -> dict:
        if self.source == "recist":
            if self.recist_from:
                return {"recist_from": self.recist_from, "measured": "largest slice of each 3D component"}
            return {"annotations": "lesions"}
        if self.source == "readers":
            return {"intersection": self.intersection, "union": self.union}
        return {"label": self.label}

    def trimap_parameters(self) -> dict:
        """What shapes the trimap: stored with it, compared on resume."""
        return {"from": self.source, "evidence": self.evidence(), "trimap": self.trimap.to_dict(),
                "channels": list(self.channels) if self.channels else AUTO}

    def soft_parameters(self) -> dict:
        return {**self.trimap_parameters(), "matting": self.matting_params.to_dict()}

    def to_dict(self) -> dict:
        return {"store": self.store, "source": self.source, "name": self.name, "label": self.label,
                "recist_from": self.recist_from, "intersection": self.intersection, "union": self.union, "matting": self.matting,
                "channels": list(self.channels) if self.channels else None, "trimap": self.trimap.to_dict(), "matting_params": self.matting_params.to_dict(),
                "cases": list(self.cases) if self.cases else None, "workers": self.workers, "dask": self.dask,
                "overwrite": self.overwrite}

    @classmethod
    def from_dict(cls, data: Mapping) -> "LabelConfig":
        data = dict(data)
        data["trimap"] = TrimapParams.from_dict(data.get("trimap") or {})
        data["matting_params"] = MattingParams.from_dict(data.get("matting_params") or {})
        data["cases"] = tuple(data["cases"]) if data.get("cases") else None
        data["channels"] = tuple(data["channels"]) if data.get("channels") else None
        return cls(**data)


def as_stored(value):
    """``value`` as it reads back from a label's attributes (a JSON round trip: tuples become lists)."""
    return json.loads(json.dumps(value))
