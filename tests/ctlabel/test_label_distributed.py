"""``ctlabel --dask``: one task per lesion on a dask.distributed cluster writes the labels a local run writes.

The cluster is a real LocalCluster of two worker processes, reached by its scheduler address as a
remote one would be. The stores are real conversions of phantom downloads (DeepLesion for RECIST
and GrabCut, LiTS for masks with several lesions per slice and a lesion that is skipped).
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from ctlabel.cli import main
from ctlabel.label import LabelConfig, label_store
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.store import SliceStore
from ctprep.commands.verify import verify_store

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler():
    """The address of a 2-worker LocalCluster (processes, one thread each), as a remote cluster is given."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    """Unlabelled converted stores: {"recist": DeepLesion phantom, "mask": LiTS phantom (lesion slices)}."""
    from ctprep.phantoms.deeplesion import write_deeplesion_phantom
    from ctprep.phantoms.nifti import write_lits_case

    root = tmp_path_factory.mktemp("dask-label")
    deeplesion = write_deeplesion_phantom(root / "DeepLesion").root
    for number in range(4):
        write_lits_case(root / "LiTS", number, shape=(16, 64, 64))
    out = {}
    for evidence, source, folder, slices in (("recist", "deeplesion", deeplesion, "all"),
                                             ("mask", "lits", root / "LiTS", "lesion")):
        out[evidence] = root / f"{source}.zarr"
        report = convert_dataset(ConvertConfig(source=source, input_dir=str(folder), output=str(out[evidence]),
                                               slices=slices), progress=False)
        assert not report.with_status("skipped")
    return out


def _labels(path, names) -> dict:
    """Per case and label: dtype, bytes, attributes, recorded and current chunk checksums."""
    store = SliceStore.open(path)
    out = {}
    for case_id in store.case_ids():
        recorded, current = store.recorded_checksums(case_id), store.current_checksums(case_id)
        for name in names:
            array = store.read_label(case_id, name)
            out[case_id, name] = (array.dtype.str, array.shape, array.tobytes(), store.label_attributes(case_id, name),
                                  recorded[f"labels/{name}"], current[f"labels/{name}"])
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("evidence, extra", [("recist", []), ("mask", ["--label", "tumour"])])
def test_dask_writes_the_labels_of_a_local_run(stores, scheduler, tmp_path, evidence, extra):
    local, remote = tmp_path / "local.zarr", tmp_path / "dask.zarr"
    shutil.copytree(stores[evidence], local)
    shutil.copytree(stores[evidence], remote)
    one = label_store(LabelConfig(store=str(local), source=evidence, label="tumour" if extra else None, workers=1),
                      progress=False)
    done = CliRunner().invoke(main, ["softmask", str(remote), "--from", evidence, *extra, "--dask", scheduler,
                                     "--quiet"])
    assert done.exit_code == 0, done.output
    lesions = len(one.lesions("done"))
    assert lesions >= 4 and f"{len(one.with_status('labelled'))} cases labelled" in done.output
    assert f"{lesions} lesions labelled, {len(one.lesions('skipped'))} skipped" in done.output
    if evidence == "mask":
        assert one.lesions("skipped"), "the LiTS phantom has a lesion too thin for a trimap"
    names = one.labels
    assert _labels(remote, names) == _labels(local, names)
    assert verify_store(remote).ok
    again = CliRunner().invoke(main, ["softmask", str(remote), "--from", evidence, *extra, "--dask", scheduler,
                                      "--quiet"])
    assert again.exit_code == 0 and "0 cases labelled" in again.output and "already done" in again.output


def test_dask_and_workers_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="--workers 2 and --dask local:2: choose one"):
        LabelConfig(store=str(tmp_path), source="mask", workers=2, dask="local:2")
    assert LabelConfig.from_dict(LabelConfig(store="s", source="mask", dask="tcp://h:8786").to_dict()).dask == \
        "tcp://h:8786"


def test_grabcut_does_not_depend_on_what_ran_before(lk):
    """OpenCV's random state, which GrabCut's colour models draw from, is reset per lesion.

    Without it the same lesion's mask changed with the lesions a thread had labelled before
    (measured: 12 of 20 noisy lesions), so --workers and --dask runs differed from a serial one.
    """
    from ctlabel.matting import matting_image
    from ctlabel.trimap import grabcut_from_recist, recist_from_mask
    from ctprep.windowing import apply_windows

    spacing = (0.8, 0.8)
    hu, truth = lk.lesion_slice(shape=(96, 96), centre=(48, 50), radii=(20, 13), noise=60.0, seed=0,
                                inside=-100, outside=-600)
    image = matting_image(apply_windows(hu[None].astype(np.int16), lk.LUNG_WINDOWS)[0])
    recist = recist_from_mask(truth, spacing)
    fresh = {}
    thread = threading.Thread(target=lambda: fresh.setdefault("mask", grabcut_from_recist(image, recist, spacing)))
    thread.start()
    thread.join()
    repeated = [grabcut_from_recist(image, recist, spacing) for _ in range(3)]
    for mask in repeated:
        np.testing.assert_array_equal(mask, fresh["mask"])
