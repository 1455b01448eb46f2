"""Issue 17 B5: a .nii.gz that inflates far past the volume its header declares (a decompression
bomb) is refused while streaming, the case skipped with the reason, and memory stays bounded.

Peak memory is measured in a fresh process, never timed: its VmHWM (/proc/self/status), the
high-water mark of this process's own memory. Not ``ru_maxrss``: Linux carries that over from
the parent across fork and exec, so under a big pytest worker it reports the worker's peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from isal import igzip

from ctprep.conversion_manifest import manifest_path
from ctprep.formats.nifti import read_nifti
from ctprep.phantoms.nifti import write_lits_case

SHAPE = (16, 64, 64)            # int16: 128 kB of declared voxels
TRAILING_ZEROS = 300 << 20     # inflates to ~300 MB, compresses to ~300 kB


def _bomb(root: Path) -> Path:
    """LiTS case 3 whose volume is a valid small NIfTI followed by 300 MB of zeros, gzip written streaming."""
    volume, _ = write_lits_case(root, 3, shape=SHAPE, spacing=(2.5, 0.8, 0.8))
    bomb = volume.with_name("volume-3.nii.gz")
    zeros = bytes(1 << 20)
    with igzip.open(bomb, "wb", compresslevel=1) as out:
        out.write(volume.read_bytes())
        for _ in range(TRAILING_ZEROS >> 20):
            out.write(zeros)
    volume.unlink()
    return bomb


_PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
_MEASURE = f"""
import sys
from ctprep.cli import main
sys.argv = ["ctprep", "convert", "--source", "lits", "--input", sys.argv[1], "--output", sys.argv[2]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("peak_kib", {_PEAK}, file=sys.stderr)
"""


def _baseline_kib(tmp_path: Path) -> int:
    """The peak of the same interpreter after importing ctprep.cli, nothing converted."""
    out = subprocess.run([sys.executable, "-c", f"import ctprep.cli\nprint({_PEAK})"],
                         capture_output=True, text=True, check=True, env=os.environ.copy())
    return int(out.stdout.strip())


def test_bomb_is_skipped_with_its_reason_and_memory_stays_bounded(tmp_path):
    root = tmp_path / "lits"
    write_lits_case(root, 1, shape=SHAPE, spacing=(2.5, 0.8, 0.8))
    bomb = _bomb(root)
    assert bomb.stat().st_size < 2 << 20  # small on disk
    store = tmp_path / "store.zarr"
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(root), str(store)], capture_output=True,
                            text=True, env=os.environ.copy())
    assert "Traceback" not in result.stderr, result.stderr
    peak_kib = int(result.stderr.rsplit("peak_kib", 1)[1].split()[0])
    declared = 2 * SHAPE[0] * SHAPE[1] * SHAPE[2]
    assert peak_kib * 1024 < 2 * declared + (200 << 20), (peak_kib, _baseline_kib(tmp_path))
    skipped = [line for line in result.stdout.splitlines() if line.startswith("  skipped volume-3:")]
    assert len(skipped) == 1 and str(bomb) in skipped[0], result.stdout
    assert "inflates past the" in skipped[0] and "decompression bomb" in skipped[0], skipped[0]
    cases = json.loads(Path(manifest_path(store)).read_text())["cases"]
    assert cases["volume-3"]["status"] == "skipped" and cases["volume-1"]["status"] == "converted"
    print(f"peak RSS {peak_kib / 1024:.0f} MiB (interpreter with ctprep.cli alone: "
          f"{_baseline_kib(tmp_path) / 1024:.0f} MiB); bomb {bomb.stat().st_size / 1024:.0f} kB on disk")


def test_trailing_bytes_within_the_tolerance_still_read(tmp_path):
    volume, _ = write_lits_case(tmp_path, 4, shape=SHAPE, spacing=(2.5, 0.8, 0.8))
    padded = volume.with_name("volume-4.nii.gz")
    padded.write_bytes(igzip.compress(volume.read_bytes() + bytes(4096)))
    assert read_nifti(padded).array.size == SHAPE[0] * SHAPE[1] * SHAPE[2]
    assert (read_nifti(padded).array == read_nifti(volume).array).all()
