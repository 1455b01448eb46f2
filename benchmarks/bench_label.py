"""ctlabel's speed: trimaps, GrabCut, closed-form matting, one lesion end to end, and --workers.

    python benchmarks/bench_label.py            # ~1 min (first run ever: + ~75 s numba compile, then cached)
    python benchmarks/bench_label.py --quick    # fewer repeats and cases

On a 256x256 crop of a real chest CT (../shared/data/pyradiomics_lung, or --real DIR; a
synthetic lesion when absent), two lesions: the real nodule (~24 px across) and the same
region enlarged 4x (a ~90 px lesion filling the crop). One core (OpenCV, BLAS: 1 thread),
in this process, median of --repeat runs:

* trimap morphology (trimap_from_mask), GrabCut on the whole crop (mask-initialised, 1 and 5
  iterations; rectangle-initialised for comparison), ctlabel's GrabCut (around the axes,
  shrunk to 64 px), closed-form matting on the whole crop vs the unknown band's bounding box
  (checked identical);
* RECIST -> trimap -> soft mask for one lesion (ctlabel.label.run_lesion_job, what the
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
def median_ms(func, repeat: int) -> tuple[float, object]:
    result = func()  # warm-up (and the value)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times), result


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
    from ctlabel.label import LesionJob, run_lesion_job
    from ctlabel.matting import MattingParams, estimate_alpha, solve_region
    from ctlabel.trimap import TrimapParams, grabcut_from_recist, recist_from_mask, trimap_from_mask

    image, mask, spacing = crop
    recist = recist_from_mask(mask, spacing)
    row = {"crop": name}
    row["morphology_ms"], _ = median_ms(lambda: trimap_from_mask(mask, spacing), repeat * 20)
    few = max(3, repeat // 4)
    for iterations in (1, 5):
        row[f"gc_whole_{iterations}_ms"], seg = median_ms(
            lambda: whole_crop_grabcut(image, recist, spacing, iterations), few)
        row[f"gc_whole_{iterations}_dice"] = dice(seg, mask)
    row["gc_rect_5_ms"], seg = median_ms(lambda: whole_crop_grabcut(image, recist, spacing, 5, rect=True), few)
    row["gc_rect_5_dice"] = dice(seg, mask)
    for iterations in (1, 3, 5):
        params = TrimapParams(grabcut_iterations=iterations)
        row[f"gc_ctlabel_{iterations}_ms"], seg = median_ms(
            lambda: grabcut_from_recist(image, recist, spacing, params), repeat)
        row[f"gc_ctlabel_{iterations}_dice"] = dice(seg, mask)
    trimap = trimap_from_mask(mask, spacing)
    rows, cols = solve_region(trimap)
    row["band_box"] = f"{rows.stop - rows.start}x{cols.stop - cols.start}"
    row["matting_whole_ms"], whole = median_ms(lambda: estimate_alpha(image, trimap, restrict=False), few)
    row["matting_band_ms"], band = median_ms(lambda: estimate_alpha(image, trimap), repeat)
    row["matting_identical"] = bool(np.array_equal(whole, band))
    job = LesionJob(case_id="bench", lesion_id=name, z=0, crop=(0, CROP, 0, CROP), image=image, spacing=spacing,
                    source="recist", recist=recist, trimap_params=TrimapParams(), matting_params=MattingParams())
    results = [run_lesion_job(job) for _ in range(repeat + 1)][1:]
    if any(r.status != "done" for r in results):
        raise RuntimeError(f"{name}: the lesion job failed: {results[0].reason}")
    row["lesion_ms"] = statistics.median(r.trimap_ms + r.matting_ms for r in results)
    row["lesion_trimap_ms"] = statistics.median(r.trimap_ms for r in results)
    row["lesion_matting_ms"] = statistics.median(r.matting_ms for r in results)
    row["lesion_dice"] = dice(results[0].alpha >= 0.5, mask)
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


def child_workers(store: str, workers: int, name: str) -> None:
    """Child: label every lesion of the store into new labels, timed after the imports."""
    from ctlabel.label import LabelConfig, label_store
    from ctlabel.matting import load_pymatting

    load_pymatting()
    clock = common.Clock()
    report = label_store(LabelConfig(store=store, source="recist", workers=workers, name=name), progress=False)
    done = len(report.lesions("done"))
    clock.report(lesions=done, workers=workers)


# ---- main ----------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="working folder (default: <tmp>/lesionkit-bench-label)")
    parser.add_argument("--real", default=str(REAL_DEFAULT), help="folder with lung1_image.nrrd + lung1_label.nrrd")
    parser.add_argument("--repeat", type=int, default=21, help="runs per in-process measurement (median)")
    parser.add_argument("--cases", type=int, default=40, help="cases (3 lesions each) of the --workers runs")
    parser.add_argument("--quick", action="store_true", help="repeat 7, 12 cases")
    parser.add_argument("--child", nargs=3, metavar=("STORE", "WORKERS", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_workers(args.child[0], int(args.child[1]), args.child[2])
        return 0
    if args.quick:
        args.repeat, args.cases = 7, 12
    out = common.out_dir(args.out, "bench-label")
    print(common.machine_line())

    import cv2

    cv2.setNumThreads(1)
    from importlib.metadata import version

    from ctlabel.matting import configure_numba_cache

    print("libraries: " + ", ".join(f"{n} {version(n)}" for n in ("numpy", "opencv-python", "pymatting", "numba")))
    cache = configure_numba_cache()
    started = time.perf_counter()
    from ctlabel.matting import load_pymatting

    load_pymatting()
    print(f"pymatting import: {time.perf_counter() - started:.1f} s (numba cache {cache}; "
          f"~75 s when it compiles, ~2 s from the cache)")

    volume = real_volume(Path(args.real))
    print(f"data: {'real CT ' + args.real if volume else 'synthetic lesion (the real CT is absent)'}")
    volume = volume or synthetic_volume()
    rows = [crop_measurements(name, crop, args.repeat) for name, crop in lesion_crops(volume).items()]

    common.print_table(
        "One 256x256 crop, one core, median ms (dice against the real mask)",
        ["step", *[r["crop"] for r in rows]],
        [["trimap morphology (trimap_from_mask)", *[r["morphology_ms"] for r in rows]],
         ["GrabCut whole crop, mask init, 1 iteration", *[f"{r['gc_whole_1_ms']:.1f} (dice {r['gc_whole_1_dice']:.2f})" for r in rows]],
         ["GrabCut whole crop, mask init, 5 iterations", *[f"{r['gc_whole_5_ms']:.1f} (dice {r['gc_whole_5_dice']:.2f})" for r in rows]],
         ["GrabCut whole crop, rectangle init, 5 it.", *[f"{r['gc_rect_5_ms']:.1f} (dice {r['gc_rect_5_dice']:.2f})" for r in rows]],
         ["ctlabel GrabCut (axes region, <=64 px), 1 it.", *[f"{r['gc_ctlabel_1_ms']:.1f} (dice {r['gc_ctlabel_1_dice']:.2f})" for r in rows]],
         ["ctlabel GrabCut, 3 it. (default)", *[f"{r['gc_ctlabel_3_ms']:.1f} (dice {r['gc_ctlabel_3_dice']:.2f})" for r in rows]],
         ["ctlabel GrabCut, 5 it.", *[f"{r['gc_ctlabel_5_ms']:.1f} (dice {r['gc_ctlabel_5_dice']:.2f})" for r in rows]],
         ["matting, whole crop", *[r["matting_whole_ms"] for r in rows]],
         ["matting, unknown band's box", *[f"{r['matting_band_ms']:.2f} ({r['band_box']})" for r in rows]],
         ["  identical alpha", *[str(r["matting_identical"]) for r in rows]],
         ["RECIST -> trimap -> soft mask (one lesion)", *[f"{r['lesion_ms']:.1f} (dice {r['lesion_dice']:.2f})" for r in rows]],
         ["  of which trimap (GrabCut + band)", *[r["lesion_trimap_ms"] for r in rows]],
         ["  of which matting", *[r["lesion_matting_ms"] for r in rows]]])

    store = workers_store(out, volume, args.cases)
    runs = {1: [], 2: []}
    for run in range(2):
        for workers in (1, 2):
            runs[workers].append(common.run_child(__file__, [str(store), str(workers), f"w{workers}r{run}"]))
    best = {w: common.best(r) for w, r in runs.items()}
    common.print_table(
        f"label_store --from recist, {args.cases} cases, best of 2 (fresh processes, store I/O included)",
        ["workers", "lesions", "seconds", "lesions/s", "CPU s / wall s"],
        [[w, b["lesions"], b["seconds"], b["lesions"] / b["seconds"], b["cpu_s"] / b["seconds"]]
         for w, b in best.items()])

    verdicts = common.Verdicts()
    for r in rows:
        verdicts.check(f"one lesion, RECIST -> soft mask, median ({r['crop']})", r["lesion_ms"], TARGET_MS, " ms",
                       higher=False)
    for r in rows:
        verdicts.check(f"GrabCut whole crop 1 it. / one lesion ({r['crop']})", r["gc_whole_1_ms"] / r["lesion_ms"], 1.0)
    for r in rows:
        verdicts.check(f"matting whole crop / band box ({r['crop']})", r["matting_whole_ms"] / r["matting_band_ms"],
                       2.0)
        if not r["matting_identical"]:
            verdicts.lines.append((False, f"FAIL  band-box matting differs from the whole crop ({r['crop']})"))
    speedup = (best[2]["lesions"] / best[2]["seconds"]) / (best[1]["lesions"] / best[1]["seconds"])
    verdicts.note(f"--workers 2 / 1: {speedup:.2f}x lesions/s (a note: the main process reads and writes "
                  "the store while workers solve; 2 cores shared)")
    print(common.machine_line())
    return verdicts.print()


if __name__ == "__main__":
    sys.exit(main())
