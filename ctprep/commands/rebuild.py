"""Rebuilding a store from its conversion manifest and the raw download: ``ctprep rebuild``.

A shared store is only as trustworthy as the ability to make it again. The manifest
records the conversion parameters, every case with its input files (size, sha256)
and the checksum of every case's chunks; rebuilding converts the same cases with the
same parameters and then holds the new chunks against the recorded checksums, so
"identical" is proved, not assumed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ctprep.convert import ConversionReport, ConvertConfig, convert_dataset
from ctprep.errors import ManifestError
from ctprep.public_paths import resolve
from ctprep.store import SliceStore, checksums_digest, is_url


@dataclass(frozen=True, kw_only=True)
class RebuildReport:
    conversion: ConversionReport
    identical: tuple[str, ...]
    different: tuple[tuple[str, str], ...]  # (case id, why)

    @property
    def ok(self) -> bool:
        return not self.different

    def lines(self) -> list[str]:
        lines = self.conversion.lines()
        lines += [f"  differs {case}: {why}" for case, why in self.different]
        lines.append(f"rebuilt {len(self.identical)} case(s) identical to the manifest's checksums"
                     + (f", {len(self.different)} different" if self.different else ""))
        return lines


def load_manifest(path: str | Path) -> dict:
    """The manifest JSON at a path or an fsspec URL (the manifest beside an s3:// store is one)."""
    try:
        if is_url(path):
            import fsspec

            with fsspec.open(str(path), "rt") as handle:
                manifest = json.load(handle)
        else:
            manifest = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError, ImportError) as exc:  # ImportError: s3:// without s3fs
        raise ManifestError(f"{path}: not a readable JSON manifest ({exc})") from exc
    if manifest.get("format") != "lesionkit-conversion-manifest":
        raise ManifestError(f"{path}: field 'format' is {manifest.get('format')!r}, "
                            "expected 'lesionkit-conversion-manifest'")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_differences(manifest: dict, input_dir: Path) -> list[tuple[str, str]]:
    """(case id, why) for every recorded input file that is missing or changed in ``input_dir``.

    Recorded paths are public (hashed names, ctprep/public_paths.py): they are found again by the same rule.
    """
    entries = {c: e for c, e in sorted(manifest.get("cases", {}).items()) if e.get("status") == "converted"}
    found = resolve(input_dir, (item["path"] for e in entries.values() for item in e.get("inputs", [])))
    problems = []
    for case_id, entry in entries.items():
        for item in entry.get("inputs", []):
            path = found.get(item["path"])
            if path is None:
                problems.append((case_id, f"{item['path']}: input file missing in {input_dir}"))
            elif path.stat().st_size != item["size"] or _sha256(path) != item["sha256"]:
                problems.append((case_id, f"{path}: differs from the file the store was built from (sha256)"))
    return problems


def rebuild_store(manifest_file: str | Path, input_dir: str | Path, output: str | Path, *,
                  workers: int = 1, progress: bool = True) -> RebuildReport:
    """Convert the manifest's cases from ``input_dir`` into ``output`` and compare their checksums."""
    manifest = load_manifest(manifest_file)
    input_dir = Path(input_dir)
    cases = {c: e for c, e in manifest.get("cases", {}).items() if e.get("status") == "converted"}
    if not cases:
        raise ManifestError(f"{manifest_file}: lists no converted case to rebuild")
    if problems := input_differences(manifest, input_dir):
        case_id, why = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ManifestError(f"cannot rebuild {case_id}: {why}{more}")
    config = ConvertConfig.from_dict({**manifest["parameters"], "input_dir": str(input_dir), "output": str(output),
                                      "cases": sorted(cases), "workers": workers,
                                      "folds": (manifest.get("folds") or {}).get("k")})
    report = convert_dataset(config, progress=progress, created_by=f"ctprep rebuild {manifest_file}")
    store = SliceStore.open(output)
    identical, different = [], []
    for case_id, entry in sorted(cases.items()):
        if case_id not in store:
            different.append((case_id, "not rebuilt"))
            continue
        recorded = store.recorded_checksums(case_id)
        covered = {k: v for k, v in recorded.items() if k in set(entry.get("arrays", recorded))}
        if "checksum" not in entry:
            different.append((case_id, "the manifest records no checksum for this case"))
        elif checksums_digest(covered) != entry["checksum"]:
            different.append((case_id, "chunk checksums differ from the manifest's"))
        else:
            identical.append(case_id)
    return RebuildReport(conversion=report, identical=tuple(identical), different=tuple(different))
