"""Fixtures for the ctseg tests: small but real slice stores built in tmp with ctprep.

* ``phantom_store``: three LiTS-layout phantom cases (ctprep.phantoms.nifti, 16 x 64 x 64,
  windows liver + abdomen) converted with ``convert_dataset``, with a split seed that
  puts one patient in each of train, val and test.
* ``nodule_store``: the real chest CT and nodule mask of ../shared/data/pyradiomics_lung,
  cropped to 64 x 64 around the nodule and to the nodule's 3 slices +- 3, written as a
  LiTS case (volume-0.nii / segmentation-0.nii, nodule = tumour label 2) with a proper
  affine and converted with the lung window.

torch runs on one thread: the suite shares a small, busy machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# One intra-op thread: on a busy 2-core machine two threads wait on each other (measured: a
# 100-step training 15 s with one thread, 200 s with two, at load average 5).
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PHANTOM_SHAPE = (16, 64, 64)


def convert(raw: Path, out: Path, windows: tuple[str, ...], split=None) -> Path:
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.datasets import SplitConfig
    from ctprep.windowing import parse_window

    config = ConvertConfig(source="lits", input_dir=str(raw), output=str(out), split=split or SplitConfig(),
                           windows=tuple(parse_window(w) for w in windows))
    report = convert_dataset(config, progress=False)
    assert not report.with_status("skipped"), report.lines()
    return out


@pytest.fixture(scope="session")
def phantom_store(tmp_path_factory) -> Path:
    from ctprep.phantoms.nifti import write_lits_case

    root = tmp_path_factory.mktemp("phantom")
    for number in range(3):
        write_lits_case(root / "raw", number, shape=PHANTOM_SHAPE)
    return convert(root / "raw", root / "phantom.zarr", ("liver", "abdomen"), split=varied_split())


def varied_split():
    """A split seed that puts the three phantom patients on more than one side (so filters show)."""
    from ctprep.datasets import SplitConfig, assign_split

    for seed in range(100):
        split = SplitConfig(seed=seed, fractions=(0.34, 0.33, 0.33))
        if len({assign_split(f"volume-{n}", split) for n in range(3)}) == 3:
            return split
    raise RuntimeError("no split seed separates the phantom patients")  # pragma: no cover


def write_nodule_case(folder: Path, margin_slices: int | None = 3, size: int | None = 64) -> None:
    """The pyradiomics lung CT + nodule cropped around the nodule, as LiTS NIfTI (RAS affine).

    ``size=None`` keeps whole 512 x 512 slices, ``margin_slices=None`` all 48 slices.
    """
    import nibabel as nib
    import SimpleITK as sitk

    source = SHARED_DATA / "pyradiomics_lung"
    if not (source / "lung1_image.nrrd").is_file():
        pytest.skip(f"real test data not available: {source} is absent "
                    "(../shared/data exists only on the project's machines)")
    image = sitk.ReadImage(str(source / "lung1_image.nrrd"))
    label = sitk.ReadImage(str(source / "lung1_label.nrrd"))
    hu = sitk.GetArrayFromImage(image)  # (z, y, x)
    mask = sitk.GetArrayFromImage(label) > 0
    zs, ys, xs = np.nonzero(mask)
    z0, z1 = (0, hu.shape[0]) if margin_slices is None else (max(zs.min() - margin_slices, 0),
                                                             min(zs.max() + margin_slices + 1, hu.shape[0]))
    if size is None:
        y0, x0, ny, nx = 0, 0, hu.shape[1], hu.shape[2]
    else:
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        y0, x0, ny, nx = cy - size // 2, cx - size // 2, size, size
    hu = hu[z0:z1, y0:y0 + ny, x0:x0 + nx].astype(np.int16)
    seg = (mask[z0:z1, y0:y0 + ny, x0:x0 + nx] * 2).astype(np.uint8)  # LiTS: 2 = tumour
    spacing = np.array(image.GetSpacing())  # (x, y, z)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ (spacing * np.array([x0, y0, z0]))
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing
    affine_lps[:3, 3] = origin
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("volume-0.nii", hu), ("segmentation-0.nii", seg)):
        nifti = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine_ras)
        nifti.set_sform(affine_ras, code=1)
        nifti.set_qform(affine_ras, code=1)
        nib.save(nifti, folder / name)


@pytest.fixture(scope="session")
def nodule_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nodule")
    write_nodule_case(root / "raw")
    return convert(root / "raw", root / "nodule.zarr", ("lung",))


@pytest.fixture(scope="session")
def whole_ct_store(tmp_path_factory) -> Path:
    """The whole pyradiomics lung CT (48 slices) with its nodule, converted at 128 x 128 (lung window)."""
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.windowing import parse_window

    root = tmp_path_factory.mktemp("whole")
    write_nodule_case(root / "raw", margin_slices=None, size=None)
    config = ConvertConfig(source="lits", input_dir=str(root / "raw"), output=str(root / "whole.zarr"),
                           windows=(parse_window("lung"),), size=(128, 128))
    report = convert_dataset(config, progress=False)
    assert not report.with_status("skipped"), report.lines()
    return root / "whole.zarr"
