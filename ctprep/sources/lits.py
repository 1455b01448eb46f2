"""LiTS: ``volume-N.nii`` + ``segmentation-N.nii`` (0 background, 1 liver, 2 tumour)."""

from __future__ import annotations

import re
from pathlib import Path

from ctprep.case import CaseRef
from ctprep.sources.base import NiftiPairSource, not_the_layout

_NAME = re.compile(r"(volume|segmentation)-([0-9]+)\.nii(\.gz)?")  # ASCII digits only, whole name


class LitsSource(NiftiPairSource):
    name = "lits"
    description = "LiTS liver tumours: volume-N.nii + segmentation-N.nii anywhere below the input folder"

    def discover(self, root: Path) -> list[CaseRef]:
        found: dict[str, dict[str, Path]] = {}
        for path in sorted(root.rglob("*.nii*")):
            m = _NAME.fullmatch(path.name)
            if m is None:
                if path.name.startswith(("volume", "segmentation")):
                    not_the_layout(path, "volume-N.nii / segmentation-N.nii (N in ASCII digits)")
                continue
            if m:
                role = "image" if m[1] == "volume" else "label"
                found.setdefault(m[2], {}).setdefault(role, path)
        refs = []
        for number, files in found.items():
            if "image" not in files:
                continue  # a segmentation without its volume is not a case
            # a missing segmentation is kept as a case so that it is reported, not ignored
            label = files.get("label", files["image"].with_name(f"segmentation-{number}.nii"))
            case_id = f"volume-{int(number)}"
            refs.append(CaseRef(source=self.name, case_id=case_id, patient_id=case_id, root=str(root),
                                files=(("image", str(files["image"].relative_to(root))),
                                       ("label", str(label.relative_to(root))))))
        return sorted(refs, key=lambda r: int(r.case_id.split("-")[1]))
