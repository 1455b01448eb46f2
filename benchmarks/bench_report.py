"""``ctprep report`` on a 1,000-case store: how long the page takes, first and again.

Builds (once, cached in ``bench_out/report``) a LiTS-layout phantom download of N tiny
cases (12 x 64 x 64), converts it, then times ``write_store_report`` from scratch
(every thumbnail written) and again (thumbnails reused), against ``ctprep info`` on the
same store (which reads every case record) as the same-run baseline. Target (issue 18):
the first page in under a minute on 2 cores.

    python benchmarks/bench_report.py [--cases 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path


def build_store(root: Path, cases: int) -> Path:
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.phantoms.nifti import write_lits_case

    store = root / f"lits{cases}.zarr"
    if store.exists():
        return store
    download = root / f"lits{cases}"
    for number in range(cases):
        write_lits_case(download, number, shape=(12, 64, 64))
    convert_dataset(ConvertConfig(source="lits", input_dir=str(download), output=str(store), workers=2),
                    progress=False)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    args = parser.parse_args()
    from ctprep.commands.info import store_info
    from ctprep.commands.report import write_store_report

    root = Path("bench_out/report")
    root.mkdir(parents=True, exist_ok=True)
    store = build_store(root, args.cases)
    out = root / "page"
    shutil.rmtree(out, ignore_errors=True)
    timings = {}
    for name, call in (("info", lambda: store_info(store)),
                       ("report, first", lambda: write_store_report(store, out, progress=False)),
                       ("report, again", lambda: write_store_report(store, out, progress=False))):
        started = time.perf_counter()
        call()
        timings[name] = time.perf_counter() - started
    print(f"{args.cases} cases; load {os.getloadavg()[0]:.1f}")
    for name, seconds in timings.items():
        print(f"  {name:<14} {seconds:7.2f} s  ({seconds / timings['info']:.1f}x info)")
    print(f"  target: first page < 60 s: {'PASS' if timings['report, first'] < 60 else 'FAIL'}")


if __name__ == "__main__":
    main()
