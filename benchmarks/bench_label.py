"""ctlabel's speed: trimaps, GrabCut, closed-form matting, one lesion end to end, and --workers.

    python benchmarks/bench_label.py            # ~40 s (first run ever: + ~15 s numba compile, then cached)
    python benchmarks/bench_label.py --quick    # fewer repeats and cases

On a 256x256 crop of a real chest CT (../shared/data/pyradiomics_lung, or --real DIR; a
synthetic lesion when absent), two lesions: the real nodule (~24 px across) and the same
region enlarged 4x (a ~90 px lesion filling the crop). One core (OpenCV, BLAS: 1 thread),
in this process, median of --repeat runs:

* trimap morphology (trimap_from_mask), GrabCut on the whole crop (mask-initialised, 1 and 5
  iterations; rectangle-initialised for comparison), ctlabel's GrabCut (around the axes,
  shrunk to 64 px), closed-form matting on the whole crop vs the unknown band's bounding box
  (checked identical);
* RECIST -> trimap -> soft mask for one lesion (ctlabel.jobs.run_lesion_job, what the
  workers run), with its split between trimap and matting.

Then lesions/s of ``label_store`` (RECIST soft masks, reading and writing the store
included) with --workers 1 and 2, each in a fresh child process, alternating, best of 2.

Targets: one lesion <= 20 ms median (the SoftGAN paper's 5 + 15 ms), and as ratios in this
run: GrabCut on the whole crop (1 iteration) / one lesion >= 1 (GrabCut was the cost to beat),
matting whole crop / band box >= 2 with identical alpha. --workers 2 / 1: a note.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # one core: before numpy is imported

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

REAL_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pyradiomics_lung"
CROP = 256
TARGET_MS = 20.0


# ---- test data --------------------------------------------------------------------------------
def real_volume(real: Path):
    """(hu int16 (z, y, x), mask uint8, spacing (z, y, x)) of the real CT, or None when absent."""
    if not (real / "lung1_image.nrrd").is_file():
        return None
    import SimpleITK as sitk

    image = sitk.ReadImage(str(real / "lung1_image.nrrd"))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(real / "lung1_label.nrrd"))) > 0
    return sitk.GetArrayFromImage(image).astype(np.int16), mask.astype(np.uint8), tuple(image.GetSpacing()[::-1])


def synthetic_volume():
    """A stand-in when the real CT is absent: an irregular soft-tissue lesion in noisy lung, 7 slices."""
    import cv2

    rng = np.random.default_rng(0)
    hu = rng.normal(-820, 40, size=(7, 512, 512))
    mask = np.zeros((7, 512, 512), np.uint8)
    for z, r in ((2, 8), (3, 12), (4, 10)):
        cv2.ellipse(mask[z], (220, 355), (r + 3, r), 30, 0, 360, 1, -1)
    blurred = cv2.GaussianBlur(mask.astype(np.float32).transpose(1, 2, 0), (0, 0), 1.2).transpose(2, 0, 1)
    hu = hu + blurred * 800
    return hu.astype(np.int16), mask, (5.0, 0.57, 0.57)


def windows_of(hu: np.ndarray) -> np.ndarray:
    from ctprep.windowing import PRESETS, apply_windows

    return apply_windows(hu, [PRESETS["lung"], PRESETS["mediastinum"]])


def lesion_crops(volume):
    """Two 256x256 crops: the nodule's largest slice as is, and its surroundings enlarged 4x."""
    import cv2

    from ctlabel.matting import matting_image

    hu, mask, spacing = volume
    z = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    ys, xs = np.nonzero(mask[z])
    cy, cx = int(ys.mean()), int(xs.mean())
    windows = windows_of(hu[z:z + 1])[0]
    crops = {}
    y0, x0 = cy - CROP // 2, cx - CROP // 2
    crops["nodule (24 px)"] = (matting_image(windows[:, y0:y0 + CROP, x0:x0 + CROP]),
                               mask[z, y0:y0 + CROP, x0:x0 + CROP], spacing[1:])
    small = CROP // 4
    y0, x0 = cy - small // 2, cx - small // 2
    big = np.stack([cv2.resize(w[y0:y0 + small, x0:x0 + small], (CROP, CROP), interpolation=cv2.INTER_CUBIC)
                    for w in windows])
    big_mask = cv2.resize(mask[z, y0:y0 + small, x0:x0 + small], (CROP, CROP), interpolation=cv2.INTER_NEAREST)
    crops["enlarged 4x (90 px)"] = (matting_image(big), big_mask, tuple(s / 4 for s in spacing[1:]))
    return crops


# ---- timing -------------------------------------------------------------------------------------
def median_ms(func, repeat: int) -> tuple[float, float, object]:
    """Median wall ms and median CPU ms of this thread (everything here runs on one thread), and the value.

    CPU time is what "ms on one core" means and, unlike wall time, is not inflated by other
    programs taking the cores (this is a shared machine); both are printed.
    """
    result = func()  # warm-up (and the value)
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.thread_time()
        func()
        cpus.append((time.thread_time() - cpu) * 1e3)
        walls.append((time.perf_counter() - wall) * 1e3)
    return statistics.median(walls), statistics.median(cpus), result


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def whole_crop_grabcut(image, recist, spacing, iterations: int, rect: bool = False):
    """OpenCV GrabCut on the whole crop at full resolution (the issue's reference measurements)."""
    import cv2

    from ctlabel.trimap import TrimapParams, grabcut_init_mask

    models = np.zeros((1, 65)), np.zeros((1, 65))
    if rect:
        points = recist.points()
        x0, y0 = np.floor(points.min(axis=0)).astype(int) - 3
        x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 3
        labels = np.zeros(image.shape[:2], np.uint8)
        cv2.grabCut(image, labels, (int(x0), int(y0), int(x1 - x0), int(y1 - y0)), *models, iterations,
                    cv2.GC_INIT_WITH_RECT)
    else:
        labels = grabcut_init_mask(image.shape[:2], recist, spacing, TrimapParams())
        cv2.grabCut(image, labels, None, *models, iterations, cv2.GC_INIT_WITH_MASK)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def crop_measurements(name: str, crop, repeat: int) -> dict:
    from ctlabel.jobs import LesionJob, lesion_trimap
    from ctlabel.matting import MattingParams, estimate_alpha, solve_region
    from ctlabel.trimap import TrimapParams, grabcut_from_recist, recist_from_mask, trimap_from_mask

    image, mask, spacing = crop
    recist = recist_from_mask(mask, spacing)
    row = {"crop": name}
    row["morphology"] = median_ms(lambda: trimap_from_mask(mask, spacing), repeat * 20)
    few = max(3, repeat // 4)
    for iterations in (1, 5):
        row[f"gc_whole_{iterations}"] = median_ms(lambda: whole_crop_grabcut(image, recist, spacing, iterations), few)
    row["gc_rect_5"] = median_ms(lambda: whole_crop_grabcut(image, recist, spacing, 5, rect=True), few)
    for iterations in (1, 2, 3, 5):
        params = TrimapParams(grabcut_iterations=iterations)
        row[f"gc_ctlabel_{iterations}"] = median_ms(lambda: grabcut_from_recist(image, recist, spacing, params), repeat)
    trimap = trimap_from_mask(mask, spacing)
    full = MattingParams(max_unknown=0)
    rows, cols = solve_region(trimap)
    row["band_box"] = f"{rows.stop - rows.start}x{cols.stop - cols.start}, {np.count_nonzero(trimap == 128)} unknown"
    row["matting_whole"] = median_ms(lambda: estimate_alpha(image, trimap, params=full, restrict=False), few)
    row["matting_band"] = median_ms(lambda: estimate_alpha(image, trimap, params=full), repeat)
    row["matting_identical"] = bool(np.array_equal(row["matting_whole"][2], row["matting_band"][2]))
    row["matting_default"] = median_ms(lambda: estimate_alpha(image, trimap), repeat)
    # One lesion as a worker runs it (ctlabel.jobs.run_lesion_job = lesion_trimap + estimate_alpha).
    job = LesionJob(case_id="bench", lesion_id=name, z=0, crop=(0, CROP, 0, CROP), image=image, spacing=spacing,
                    source="recist", recist=recist, trimap_params=TrimapParams(), matting_params=MattingParams())
    row["lesion_trimap"] = median_ms(lambda: lesion_trimap(job), repeat)
    lesion_trimap_value = row["lesion_trimap"][2][0]  # (trimap, RECIST path, why)
    row["lesion_matting"] = median_ms(lambda: estimate_alpha(image, lesion_trimap_value), repeat)
    row["lesion"] = median_ms(lambda: estimate_alpha(image, lesion_trimap(job)[0]), repeat)
    row["dice"] = {key: dice(value, mask) for key, value in (
        ("gc_whole_1", row["gc_whole_1"][2]), ("gc_whole_5", row["gc_whole_5"][2]),
        ("gc_rect_5", row["gc_rect_5"][2]), ("gc_ctlabel_1", row["gc_ctlabel_1"][2]),
        ("gc_ctlabel_2", row["gc_ctlabel_2"][2]), ("gc_ctlabel_3", row["gc_ctlabel_3"][2]),
        ("gc_ctlabel_5", row["gc_ctlabel_5"][2]),
        ("lesion", row["lesion"][2] >= 0.5), ("matting_band", row["matting_band"][2] >= 0.5))}
    return row


# ---- --workers ------------------------------------------------------------------------------------
def workers_store(out: Path, volume, cases: int) -> Path:
    """``cases`` cases of 7 slices 256x256 around the nodule, 3 RECIST lesions each, built afresh."""
    path = out / "label-store.zarr"
    print(f"building a store of {cases} cases for the --workers runs in {path} ...", flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ctlabel"))
    from conftest import new_store, recist_annotation, write_case  # the tests' faithful store writer

    from ctlabel.trimap import recist_from_mask

    hu, mask, spacing = volume
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    z0 = max(0, zs.min() - 2)
    ys, xs = np.nonzero(mask[zs].any(axis=0))
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    store = new_store(partial)
    for k in range(cases):
        dy, dx = (k * 7) % 21 - 10, (k * 11) % 21 - 10  # each case a slightly different crop
        y0, x0 = int(ys.mean()) - 128 + dy, int(xs.mean()) - 128 + dx
        part_hu = hu[z0:z0 + 7, y0:y0 + 256, x0:x0 + 256]
        part_mask = mask[z0:z0 + 7, y0:y0 + 256, x0:x0 + 256]
        lesions = [recist_annotation(f"z{z}", z, recist_from_mask(part_mask[z], spacing[1:]), spacing[1:])
                   for z in range(part_mask.shape[0]) if part_mask[z].any()]
        write_case(store, f"case-{k:03d}", part_hu, {"tumour": part_mask}, spacing, annotations={"lesions": lesions})
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    return path


def child_workers(store: str, mode: str, name: str) -> None:
    """Child: label every lesion of the store into new labels, timed after the imports.

    ``mode`` is a worker count, or ``dask2``: a 2-worker LocalCluster (processes) started,
    and its workers' matting kernels loaded, before the clock; reached by its address as a
    remote cluster would be.
    """
    import contextlib

    from ctlabel.label import LabelConfig, label_store
    from ctlabel.matting import load_pymatting

    load_pymatting()
    with contextlib.ExitStack() as stack:
        options: dict = {"workers": int(mode)} if mode.isdigit() else {}
        if mode == "dask2":
            from distributed import Client, LocalCluster

            cluster = stack.enter_context(LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            with Client(cluster) as client:  # warm the workers as the pool's are (kernels loaded once)
                client.run(load_pymatting)
            options = {"dask": cluster.scheduler_address}
        clock = common.Clock()
        report = label_store(LabelConfig(store=store, source="recist", name=name, **options), progress=False)
        clock.report(lesions=len(report.lesions("done")), mode=mode)


# ---- main ----------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="working folder (default: <tmp>/lesionkit-bench-label)")
    parser.add_argument("--real", default=str(REAL_DEFAULT), help="folder with lung1_image.nrrd + lung1_label.nrrd")
    parser.add_argument("--repeat", type=int, default=21, help="runs per in-process measurement (median)")
    parser.add_argument("--cases", type=int, default=40, help="cases (3 lesions each) of the --workers runs")
    parser.add_argument("--quick", action="store_true", help="repeat 7, 12 cases")
    parser.add_argument("--child", nargs=3, metavar=("STORE", "MODE", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_workers(*args.child)
        return 0
    if args.quick:
        args.repeat, args.cases = 7, 12
    out = common.out_dir(args.out, "bench-label")
    print(common.machine_line())

    import cv2

    cv2.setNumThreads(1)
    from importlib.metadata import version

    from ctlabel.numba_cache import configure_numba_cache

    print("libraries: " + ", ".join(f"{n} {version(n)}" for n in ("numpy", "opencv-python", "pymatting", "numba")))
    cache = configure_numba_cache()
    started = time.perf_counter()
    from ctlabel.matting import load_pymatting

    load_pymatting()
    print(f"matting kernels loaded in {time.perf_counter() - started:.1f} s (numba cache {cache}; "
          f"~15 s when they compile, ~1 s from the cache)")

    volume = real_volume(Path(args.real))
    print(f"data: {'real CT ' + args.real if volume else 'synthetic lesion (the real CT is absent)'}")
    volume = volume or synthetic_volume()
    rows = [crop_measurements(name, crop, args.repeat) for name, crop in lesion_crops(volume).items()]

    def cell(row, key, dice_key=None):
        wall, cpu, _ = row[key]
        text = f"{cpu:.1f} / {wall:.1f}" if cpu >= 1 else f"{cpu:.2f} / {wall:.2f}"
        return text + (f" (dice {row['dice'][dice_key]:.2f})" if dice_key else "")

    steps = [
        ("trimap morphology (trimap_from_mask)", "morphology", None),
        ("GrabCut whole crop, mask init, 1 iteration", "gc_whole_1", "gc_whole_1"),
        ("GrabCut whole crop, mask init, 5 iterations", "gc_whole_5", "gc_whole_5"),
        ("GrabCut whole crop, rectangle init, 5 it.", "gc_rect_5", "gc_rect_5"),
        ("ctlabel GrabCut (axes region, <=64 px), 1 it.", "gc_ctlabel_1", "gc_ctlabel_1"),
        ("ctlabel GrabCut, 2 it. (default)", "gc_ctlabel_2", "gc_ctlabel_2"),
        ("ctlabel GrabCut, 3 it.", "gc_ctlabel_3", "gc_ctlabel_3"),
        ("ctlabel GrabCut, 5 it.", "gc_ctlabel_5", "gc_ctlabel_5"),
        ("matting, whole crop", "matting_whole", None),
        ("matting, unknown band's box (identical alpha)", "matting_band", "matting_band"),
        ("matting, default (coarser above 1000 unknown)", "matting_default", None),
        ("RECIST -> trimap -> soft mask (one lesion)", "lesion", "lesion"),
        ("  trimap (GrabCut + band)", "lesion_trimap", None),
        ("  matting", "lesion_matting", None),
    ]
    common.print_table(
        "One 256x256 crop, one core: CPU ms / wall ms, medians (dice against the real mask)",
        ["step", *[r["crop"] for r in rows]],
        [[label, *[cell(r, key, dice_key) for r in rows]] for label, key, dice_key in steps])
    for r in rows:
        print(f"  {r['crop']}: unknown band's box {r['band_box']}; band-box alpha identical to the whole "
              f"crop's: {r['matting_identical']}")

    store = workers_store(out, volume, args.cases)
    modes = {"1": "--workers 1", "2": "--workers 2", "dask2": "--dask (2-worker LocalCluster)"}
    runs: dict[str, list] = {mode: [] for mode in modes}
    for run in range(2):
        for mode in modes:
            runs[mode].append(common.run_child(__file__, [str(store), mode, f"m{mode}r{run}"]))
    best = {mode: common.best(r) for mode, r in runs.items()}
    rate = {mode: b["lesions"] / b["seconds"] for mode, b in best.items()}
    common.print_table(
        f"label_store --from recist, {args.cases} cases, best of 2 (fresh processes, store I/O included; "
        "cluster start excluded)",
        ["mode", "lesions", "seconds", "lesions/s", "ratio to 1 worker", "CPU s / wall s"],
        [[label, best[m]["lesions"], best[m]["seconds"], rate[m], rate[m] / rate["1"],
          best[m]["cpu_s"] / best[m]["seconds"]] for m, label in modes.items()])

    verdicts = common.Verdicts()
    for r in rows:
        verdicts.check(f"one lesion, RECIST -> soft mask, median CPU ms ({r['crop']})", r["lesion"][1], TARGET_MS,
                       " ms", higher=False)
    for r in rows:
        verdicts.check(f"GrabCut whole crop 1 it. / one lesion ({r['crop']})", r["gc_whole_1"][1] / r["lesion"][1],
                       1.0)
    for r in rows:
        ratio = r["matting_whole"][1] / r["matting_band"][1]
        if r is rows[0]:  # a small lesion in the crop: the band's box is a fraction of it
            verdicts.check(f"matting whole crop / band box ({r['crop']})", ratio, 2.0)
        else:  # a lesion filling the crop: its band's box is most of the crop; the coarser solve bounds the cost
            verdicts.note(f"matting whole crop / band box ({r['crop']}): {ratio:.2f}x (the box is most of the crop)")
        if not r["matting_identical"]:
            verdicts.lines.append((False, f"FAIL  band-box matting differs from the whole crop ({r['crop']})"))
    verdicts.note(f"--workers 2 / 1: {rate['2'] / rate['1']:.2f}x lesions/s, --dask 2 workers / 1: "
                  f"{rate['dask2'] / rate['1']:.2f}x (notes: they need 2 idle cores; see CPU s / wall s)")
    print(common.machine_line())
    return verdicts.print()


if __name__ == "__main__":
    sys.exit(main())
