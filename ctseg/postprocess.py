"""Post-processing of a predicted case mask (z, y, x), in 3D, with scipy.ndimage.

Convention: masks are boolean on the stored grid; sizes are in mm3 from the case spacing
(z, y, x) in mm; connectivity is 26 (full 3x3x3). In this order:

* ``organ``: keep only voxels inside a stored organ label (``liver`` for LiTS, ``kidney``
  for KiTS19, ``lungs`` for NSCLC); a case without that label is left as it is and said so;
* ``min_size_mm3``: drop connected components smaller than this volume;
* ``largest``: keep the ``largest`` biggest connected components (0: all).

A run's configuration holds its post-processing (``largest``, default 1, and
``min_size_mm3``): validation scores masks after it, and ``ctseg predict`` / ``evaluate``
use it unless their flags say otherwise (:meth:`PostProcess.of_run`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True, kw_only=True)
class PostProcess:
    largest: int = 0
    min_size_mm3: float = 0.0
    organ: str | None = None

    def __post_init__(self) -> None:
        if self.largest < 0 or self.min_size_mm3 < 0:
            raise ValueError(f"largest and min_size_mm3 must be >= 0, found {self.largest} and {self.min_size_mm3}")

    @property
    def active(self) -> bool:
        return bool(self.largest or self.min_size_mm3 or self.organ)

    @classmethod
    def of_run(cls, config) -> "PostProcess":
        """A run's own post-processing (TrainConfig ``largest``, ``min_size_mm3``): validation's, and the
        default of predict and evaluate."""
        return cls(largest=config.largest, min_size_mm3=config.min_size_mm3)

    def to_dict(self) -> dict:
        return {"largest": self.largest, "min_size_mm3": self.min_size_mm3, "organ": self.organ}


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, voxel count per component 1..n) with 26-connectivity."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return labels, np.bincount(labels.ravel(), minlength=n + 1)[1:]


def postprocess(mask: np.ndarray, spacing, options: PostProcess, organ_mask: np.ndarray | None = None) -> np.ndarray:
    """``mask`` after the organ restriction, the minimum size and the largest components (module docstring)."""
    out = np.asarray(mask, dtype=bool)
    if options.organ and organ_mask is not None:
        out = out & (organ_mask > 0)
    if not (options.min_size_mm3 or options.largest) or not out.any():
        return out
    labels, sizes = components(out)
    keep = np.ones(len(sizes), dtype=bool)
    if options.min_size_mm3:
        keep &= sizes * float(np.prod(spacing)) >= options.min_size_mm3
    if options.largest:
        order = np.argsort(np.where(keep, sizes, -1))[::-1]
        keep[order[options.largest:]] = False
    return np.concatenate([[False], keep])[labels]
