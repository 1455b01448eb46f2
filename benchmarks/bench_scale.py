"""Scale-out figures of ``ctprep convert``: local workers and a dask LocalCluster, and memory per worker.

1. Throughput of a phantom corpus (several LiTS-layout cases cut from the benchmark
   volume) with ``--workers 1``, ``--workers 2`` and ``--dask local:2``, as ratios to
   the single worker, measured in the same run (interleaved, best of --reps).
2. Peak resident memory of the process converting one 600-slice 512x512 case: what
   each worker (local or dask) needs, since a worker converts one case at a time.

Every run is a fresh child process; the dask runs include starting the cluster, which
is reported separately so the steady-state ratio can be read too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

WINDOW = "liver"


def child_convert(input_dir: str, output: str, workers: int, dask_workers: int) -> None:
    import contextlib

    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.windowing import parse_window

    shutil.rmtree(output, ignore_errors=True)
    startup, address = 0.0, None
    with contextlib.ExitStack() as stack:
        if dask_workers:
            # A running cluster whose workers have imported ctprep, as on a real deployment;
            # its start is timed apart and `--dask ADDRESS` points the conversion at it.
            from distributed import Client, LocalCluster

            started = time.perf_counter()
            cluster = stack.enter_context(LocalCluster(n_workers=dask_workers, threads_per_worker=1,
                                                       processes=True, dashboard_address=None))
            client = stack.enter_context(Client(cluster))
            client.run(lambda: __import__("ctprep.sources.lits"))
            startup, address = time.perf_counter() - started, cluster.scheduler_address
        clock = common.Clock()
        config = ConvertConfig(source="lits", input_dir=input_dir, output=output, windows=(parse_window(WINDOW),),
                               workers=workers, dask=address, overwrite=True)
        report = convert_dataset(config, progress=False)
        seconds = time.perf_counter() - clock.wall
    if report.with_status("skipped"):
        raise SystemExit(f"skipped: {[o.reason for o in report.with_status('skipped')]}")
    clock.report(seconds=seconds, slices=report.slices_written, cluster_start_s=startup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="working folder (default: <tmp>/lesionkit-bench); test data is cached there")
    parser.add_argument("--cases", type=int, default=6, help="cases in the corpus (default 6)")
    parser.add_argument("--case-slices", type=int, default=100, help="slices per corpus case (default 100)")
    parser.add_argument("--memory-slices", type=int, default=600, help="slices of the memory case (default 600)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 cases of 30 slices, a 120-slice memory case")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        input_dir, output, workers, dask_workers = args.child
        import ctprep.convert  # noqa: F401  (imports before the clock)
        import ctprep.sources.lits  # noqa: F401

        child_convert(input_dir, output, int(workers), int(dask_workers))
        return 0
    if args.quick:
        args.cases, args.case_slices, args.memory_slices, args.reps = 4, 30, 120, 1

    script = str(Path(__file__).resolve())
    out = common.out_dir(args.out, "bench")
    print(common.machine_line())
    print(common.library_line())
    source = common.lits_volume(out, max(args.case_slices, 300 if not args.quick else 60), 512)
    corpus = common.split_cases(source, out, args.cases, args.case_slices)

    modes = {"--workers 1": ("1", "0"), "--workers 2": ("2", "0"), "--dask (LocalCluster, 2 workers)": ("1", "2")}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.reps):
        for mode, (workers, dask) in modes.items():
            runs[mode].append(common.run_child(script, [str(corpus), str(out / "scale.zarr"), workers, dask]))
    best = {m: common.best(v) for m, v in runs.items()}
    base = best["--workers 1"]["seconds"]
    total = args.cases * args.case_slices
    common.print_table(f"Corpus: {args.cases} cases x {args.case_slices} slices 512x512 (best of {args.reps}; "
                       "seconds exclude the cluster start)",
                       ["mode", "seconds", "slices/s", "ratio to 1 worker", "cores busy", "cluster start s"],
                       [[m, r["seconds"], total / r["seconds"], base / r["seconds"], r["cpu_s"] / r["seconds"],
                         r["cluster_start_s"]] for m, r in best.items()])

    big = common.lits_volume(out, args.memory_slices, 512)
    memory = common.run_child(script, [str(big), str(out / "memory.zarr"), "1", "0"])
    raw_mb = args.memory_slices * 512 * 512 * 2 / 1e6
    common.print_table(f"Peak memory converting one {args.memory_slices}-slice 512x512 case (one worker's load)",
                       ["case int16 MB", "peak RSS MB", "peak / case", "seconds"],
                       [[raw_mb, memory["maxrss_mb"], memory["maxrss_mb"] / raw_mb, memory["seconds"]]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
