"""Which RECIST trimap path wins on real lesions: GrabCut's mask or the RECIST ellipse (issue 15).

For every real lesion slice we have (the pyradiomics lung nodule; the TotalSegmentator
example CT's spleen, kidneys and gallbladder, whose model masks serve as the truth), RECIST
is measured on the true mask of that slice (longest diameter, longest perpendicular); then
both trimaps are matted and binarised at 0.5 and scored against the mask. Prints one row per
lesion slice: GrabCut-path Dice, ellipse-path Dice, the RECIST ellipse's own Dice, the
plausibility check's verdict and the Dice of the path it takes, and the check's features
(area ratio, Dice with the ellipse). Run: ``python benchmarks/recist_paths.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def real_lesions():
    """(name, hu volume (z, y, x), mask volume, spacing (z, y, x), window name) per real structure."""
    import nibabel as nib
    import SimpleITK as sitk

    folder = DATA / "pyradiomics_lung"
    image = sitk.ReadImage(str(folder / "lung1_image.nrrd"))
    hu = sitk.GetArrayFromImage(image).astype(np.int16)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "lung1_label.nrrd"))) > 0
    yield "lung nodule", hu, mask, tuple(float(s) for s in image.GetSpacing()[::-1]), "lung"
    ct = nib.load(DATA / "totalseg_example" / "example_ct_sm.nii.gz")
    seg = np.asarray(nib.load(DATA / "totalseg_example" / "example_seg.nii.gz").dataobj)
    hu = np.asarray(ct.dataobj).astype(np.int16).transpose(2, 1, 0)
    spacing = tuple(float(s) for s in ct.header.get_zooms()[::-1])
    for value, name in ((1, "spleen"), (2, "kidney R"), (3, "kidney L"), (4, "gallbladder")):
        yield name, hu, (seg == value).transpose(2, 1, 0), spacing, "abdomen"


def lesion_rows(name, hu, mask, spacing, window, min_pixels=30):
    from ctlabel.matting import estimate_alpha, matting_image
    from ctlabel.recist_check import checked_recist_trimap, ellipse_mask, implausible
    from ctlabel.trimap import TrimapParams, grabcut_from_recist, recist_from_mask, trimap_from_mask
    from ctprep.windowing import PRESETS, apply_windows

    params = TrimapParams()
    for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).sum(axis=1) >= min_pixels):
        ys, xs = np.nonzero(mask[z])
        pad = max(8, int(0.6 * max(np.ptp(ys), np.ptp(xs))))
        y0, y1 = max(0, ys.min() - pad), min(mask.shape[1], ys.max() + pad + 1)
        x0, x1 = max(0, xs.min() - pad), min(mask.shape[2], xs.max() + pad + 1)
        truth = mask[z, y0:y1, x0:x1]
        image = matting_image(apply_windows(hu[z:z + 1, y0:y1, x0:x1], [PRESETS[window]])[0])
        sp = spacing[1:]
        recist = recist_from_mask(truth, sp)
        grab = grabcut_from_recist(image, recist, sp, params)
        ell = ellipse_mask(truth.shape, recist)
        scores = {}
        for path, m in (("grabcut", grab), ("ellipse", ell)):
            scores[path] = dice(estimate_alpha(image, trimap_from_mask(m, sp, params=params)) >= 0.5, truth)
        checked = checked_recist_trimap(image, recist, sp, params)
        final = dice(estimate_alpha(image, checked.trimap) >= 0.5, truth)
        ratio = np.count_nonzero(grab) / max(np.count_nonzero(ell), 1)
        yield {"lesion": f"{name} z{z}", "pixels": int(truth.sum()), "grabcut": scores["grabcut"],
               "ellipse": scores["ellipse"], "ellipse_mask": dice(ell, truth), "final": final,
               "path": checked.path, "why": checked.why or "-", "area_ratio": ratio, "dice_with_ellipse": dice(grab, ell),
               "implausible_now": implausible(grab, ell, recist, sp, params) or "-"}


def main() -> int:
    if not DATA.exists():
        print(f"needs the real data in {DATA}")
        return 1
    header = f"{'lesion':18s} {'px':>5s} {'grabcut':>7s} {'ellipse':>7s} {'ell.mask':>8s} {'final':>6s} {'path':8s} " \
             f"{'area':>5s} {'D(g,e)':>6s} why"
    print(header)
    for lesion in real_lesions():
        for r in lesion_rows(*lesion):
            print(f"{r['lesion']:18s} {r['pixels']:5d} {r['grabcut']:7.3f} {r['ellipse']:7.3f} {r['ellipse_mask']:8.3f} "
                  f"{r['final']:6.3f} {r['path']:8s} {r['area_ratio']:5.2f} {r['dice_with_ellipse']:6.3f} {r['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
