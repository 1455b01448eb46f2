"""The conversion manifest's file: where it lives beside a store, how it is written, and what
it records of the run itself (the command line, the library versions).

Convention: the manifest is JSON beside the store (``x.zarr`` -> ``x.manifest.json``, a URL
beside a URL), written whole (lkbase.atomic locally, one object on object stores); the
recorded command never carries the environment or the ``--input`` folder's name (it may name
a patient). What the manifest holds per case is built by ctprep.convert.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ctprep.store import is_url, write_file_atomic


def manifest_path(store_path: str | Path) -> Path | str:
    """The JSON manifest written beside a store: ``x.zarr`` -> ``x.manifest.json`` (a URL for a URL)."""
    if is_url(store_path):
        folder, _, name = str(store_path).rstrip("/").rpartition("/")
        return f"{folder}/{name.removesuffix('.zarr')}.manifest.json"
    path = Path(store_path)
    return path.with_name(f"{path.name.removesuffix('.zarr')}.manifest.json")


def write_json_atomic(path: str | Path, data: dict) -> None:
    """A local path (lkbase.atomic) or a URL (one whole-object write)."""
    write_file_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for name in ("numpy", "zarr", "numcodecs", "nibabel", "SimpleITK", "isal"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def command_line() -> str:
    # Only the program and its arguments: never the environment, which may hold anything;
    # the --input folder may be named after a patient: it reads INPUT.
    args, hide = [], False
    for arg in sys.argv[1:]:
        args.append("INPUT" if hide else "--input=INPUT" if arg.startswith("--input=") else arg)
        hide = arg == "--input"
    return " ".join([Path(sys.argv[0]).name, *args])
