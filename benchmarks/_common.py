"""Shared pieces of the benchmark scripts: test data (generated once, cached), child runs, tables.

Every target is a ratio between two measurements taken in the same run, never an
absolute time, so a slower or busier machine moves both sides. Each measurement is
repeated and the best (smallest) time kept: noise from other programs only ever
adds time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The volume every benchmark uses: LiTS layout, 512x512 in-plane, CT-like values
# (ctprep.phantoms.nifti: air, fat, body, spine, liver with a small tumour, Gaussian noise
# sd 8 HU everywhere) so it compresses like a scan (~2.2:1 with gzip), not like zeros.
SPACING = (1.0, 0.75, 0.75)  # z, y, x mm


def out_dir(path: str | None, name: str) -> Path:
    """The benchmark's folder: --out, or a folder in the system temp dir kept between runs."""
    folder = Path(path) if path else Path(tempfile.gettempdir()) / f"lesionkit-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def lits_volume(out: Path, slices: int, size: int, number: int = 0) -> Path:
    """A folder holding ``volume-N.nii.gz`` + ``segmentation-N.nii.gz``; generated once, then reused.

    The 512x512x300 case takes ~25 s and ~3.7 GB to generate (ctprep.phantoms.nifti works in
    float64 on the whole grid); it is written to a temporary folder first so an
    interrupted generation is never reused.
    """
    folder = out / "data" / f"lits-{size}x{size}x{slices}"
    if (folder / f"volume-{number}.nii.gz").is_file() and (folder / f"segmentation-{number}.nii.gz").is_file():
        return folder
    print(f"generating the test volume {size}x{size}x{slices} (once; cached in {folder}) ...", flush=True)
    started = time.perf_counter()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # In a child process, so that this one does not keep the generator's gigabytes.
    _python(f"from pathlib import Path; from ctprep.phantoms.nifti import write_lits_case; "
            f"write_lits_case(Path({str(partial)!r}), {number}, shape=({slices}, {size}, {size}), "
            f"spacing={SPACING!r}, gz=True)")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return folder


def split_cases(source: Path, out: Path, count: int, slices: int) -> Path:
    """``count`` LiTS cases of ``slices`` slices each, cut (overlapping if needed) from the case in ``source``."""
    folder = out / "data" / f"{source.name}-split{count}x{slices}"
    names = [f"volume-{i}.nii.gz" for i in range(count)] + [f"segmentation-{i}.nii.gz" for i in range(count)]
    if all((folder / n).is_file() for n in names):
        return folder
    print(f"cutting {count} cases of {slices} slices from {source.name} (once; cached) ...", flush=True)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _python(f"""
import nibabel as nib, numpy as np
from pathlib import Path
source, partial = Path({str(source)!r}), Path({str(partial)!r})
image, label = nib.load(source / "volume-0.nii.gz"), nib.load(source / "segmentation-0.nii.gz")
total = image.shape[2]  # the phantom is written RAS: the slice axis is the last one
if {slices} > total:
    raise SystemExit(f"--scaling-slices {slices} exceeds the {{total}} slices of the source volume")
for i, start in enumerate(np.linspace(0, total - {slices}, {count}).round().astype(int)):
    nib.save(image.slicer[:, :, start:start + {slices}], partial / f"volume-{{i}}.nii.gz")
    nib.save(label.slicer[:, :, start:start + {slices}], partial / f"segmentation-{{i}}.nii.gz")
""")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def _python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


def run_child(script: str, args: list[str], timeout: float = 600) -> dict:
    """Run ``python script --child ...`` in a fresh process; it prints one JSON line last.

    Adds ``process_s``: the child's whole life, interpreter start and imports included.
    """
    started = time.perf_counter()
    done = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True,
                          timeout=timeout)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = elapsed
    return result


class Clock:
    """Started after a child's imports: wall and CPU seconds (its own and its workers') of the work."""

    def __init__(self) -> None:
        self.cpu = _cpu_seconds()
        self.wall = time.perf_counter()

    def report(self, **values) -> None:
        values.setdefault("seconds", time.perf_counter() - self.wall)
        values["cpu_s"] = _cpu_seconds() - self.cpu
        child_report(**values)


def _cpu_seconds() -> float:
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def child_report(**values) -> None:
    """Print a child's result (one JSON line) with its peak memory.

    Peak memory is VmHWM from /proc/self/status, the high-water mark of this process's
    own memory since it started. ``getrusage().ru_maxrss`` is not used for the process
    itself: Linux carries the parent's high-water mark across fork+exec into it, so a
    child of a big parent reads big. Worker processes it started are counted through
    RUSAGE_CHILDREN (they are started from this lean process).
    """
    import resource

    own = _vm_hwm_kib()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    values["maxrss_mb"] = max(own, children) / 1024
    print(json.dumps(values), flush=True)


def _vm_hwm_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource  # not Linux: the best we have

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)


def best(results: list[dict], key: str = "seconds") -> dict:
    return min(results, key=lambda r: r[key])


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print()
    print(title)
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def _fmt(value) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if value < 1 else f"{value:.2f}"
    return str(value)


class Verdicts:
    """Collects the PASS/FAIL lines of a run and prints them together at the end."""

    def __init__(self) -> None:
        self.lines: list[tuple[bool, str]] = []

    def check(self, name: str, value: float, target: float, unit: str = "x", higher: bool = True) -> bool:
        ok = value >= target if higher else value < target
        relation = ">=" if higher else "<"
        self.lines.append((ok, f"{'PASS' if ok else 'FAIL'}  {name}: {value:,.2f}{unit} (target {relation} "
                               f"{target:,.2f}{unit})"))
        return ok

    def note(self, text: str) -> None:
        self.lines.append((True, f"      {text}"))

    def print(self) -> int:
        print()
        print("Targets")
        for _, line in self.lines:
            print(line)
        return 0 if all(ok for ok, _ in self.lines) else 1


def machine_line() -> str:
    load = os.getloadavg()
    import platform

    return (f"machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            + ("  (BUSY: other programs compete for the cores; timings are noisy)" if load[0] > 0.5 else ""))


def library_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("numpy", "zarr", "numcodecs", "nibabel", "SimpleITK", "isal"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} -")
    return "libraries: " + ", ".join(parts)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
