"""KiTS19: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` (0, 1 kidney, 2 tumour).

The arrays are stored slice axis first; the affine says so and the canonical
reorientation follows the affine (never an assumed axis order).
"""

from __future__ import annotations

import re
from pathlib import Path

from ctprep.case import CaseRef
from ctprep.sources.base import NiftiPairSource, not_the_layout

_CASE = re.compile(r"case_[0-9]{5}")  # ASCII digits only, whole name


class Kits19Source(NiftiPairSource):
    name = "kits19"
    description = "KiTS19 kidney tumours: case_XXXXX/imaging.nii.gz + segmentation.nii.gz"

    def discover(self, root: Path) -> list[CaseRef]:
        refs = []
        for folder in sorted(p for p in root.rglob("case_*") if p.is_dir()):
            if not _CASE.fullmatch(folder.name):
                not_the_layout(folder, "case_XXXXX (five ASCII digits)")
                continue
            image = _first_existing(folder, "imaging")
            label = _first_existing(folder, "segmentation")
            refs.append(CaseRef(source=self.name, case_id=folder.name, patient_id=folder.name, root=str(root),
                                files=(("image", str(image.relative_to(root))),
                                       ("label", str(label.relative_to(root))))))
        return refs


def _first_existing(folder: Path, stem: str) -> Path:
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    return folder / f"{stem}.nii.gz"  # reported as missing when the case is loaded
