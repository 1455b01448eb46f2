"""What of an input path may be written out: the public form of a path relative to ``--input``.

Convention: folder and file names are the one place a download carries free text that ctprep
cannot vet by format (a folder named after the patient, a TCIA series description). A path
component is kept as it is when it is built only from ASCII digits, the separators ``. _ -`` and space
and the words of the public datasets' layouts (``volume``, ``segmentation``, ``case``,
``imaging``, ``Training Batch``, ``LUNG1``, ``LIDC-IDRI``, ``Images_png``, ``DL_info.csv``, file endings ...), or
is an id ctprep made (``unnamed-<hex>``, ``x-<hex>``, ``case-h<hex>``). Any other component becomes
``x-<first 12 hex of sha256(name)>`` plus its file ending. The store keeps no input path at
all; the manifest keeps public paths, and ``ctprep rebuild`` finds the files again by
applying the same rule to the download (``resolve``). Messages stored in the manifest go
through ``Redactor``: the ``--input`` folder becomes ``INPUT`` and each non-public name of
the download's files its public form. ``ctprep audit`` holds stores to the same rule.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Iterable

LAYOUT_WORDS = frozenset(w.lower() for w in (
    "volume", "segmentation", "imaging", "case", "image", "label", "lung1", "lidc", "idri", "images", "png",
    "dl", "info", "csv", "nii", "gz", "dcm", "xml", "json", "txt", "mhd", "raw", "dicom", "na", "training",
    "batch", "test", "data"))
_MADE_ID = re.compile(r"(?:unnamed-|x-|case-h)[0-9a-f]{12}(?:_[0-9]+)?(?:\.[A-Za-z]{2,4}){0,2}", re.ASCII)
_TOKEN = re.compile(r"[A-Za-z0-9._ -]{1,128}", re.ASCII)
_WORD = re.compile(r"[A-Za-z]+", re.ASCII)
_ENDING = re.compile(r"(?:\.(?:nii\.gz|nii|dcm|xml|png|csv|json|gz))$", re.IGNORECASE | re.ASCII)


def is_public_name(name: str) -> bool:
    """True when a folder or file name holds only digits, separators and layout words (module docstring)."""
    if _MADE_ID.fullmatch(name):
        return True
    return bool(_TOKEN.fullmatch(name)) and all(w.lower() in LAYOUT_WORDS for w in _WORD.findall(name))


def hashed_name(name: str) -> str:
    """``x-<12 hex>`` plus the name's known file ending."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    ending = _ENDING.search(name)
    return f"x-{digest}{ending.group(0).lower() if ending else ''}"


def public_name(name: str) -> str:
    return name if is_public_name(name) else hashed_name(name)


def public_path(relative: str | PurePosixPath) -> str:
    """The public form of a path relative to ``--input`` (POSIX separators)."""
    return "/".join(public_name(part) for part in PurePosixPath(str(relative)).parts)


def is_public_path(relative: str) -> bool:
    """A relative path whose every component is public (what the manifest may hold)."""
    path = PurePosixPath(relative)
    return (bool(relative) and not path.is_absolute() and ".." not in path.parts
            and all(is_public_name(part) for part in path.parts))


def resolve(input_dir: Path, recorded: Iterable[str]) -> dict[str, Path]:
    """The file of ``input_dir`` behind each recorded public path (absent: not found)."""
    recorded = set(recorded)
    found = {p: input_dir / p for p in recorded if (input_dir / p).is_file()}
    if len(found) < len(recorded):  # some names were hashed: apply the rule to the download
        for path in input_dir.rglob("*"):
            public = public_path(path.relative_to(input_dir).as_posix())
            if public in recorded and public not in found and path.is_file():
                found[public] = path
    return found


class Redactor:
    """Rewrites a message for the manifest: the input folder as ``INPUT``, non-public names hashed."""

    def __init__(self, input_dir: str | Path, relative_paths: Iterable[str]):
        self.root = str(Path(input_dir).absolute())
        self.given = str(input_dir)
        names = {part for rel in relative_paths for part in PurePosixPath(rel).parts}
        names |= {Path(self.root).name}
        self.names = sorted((n for n in names if n and not is_public_name(n)), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for root in sorted({self.root, self.given}, key=len, reverse=True):
            if root not in ("", "."):
                text = text.replace(root, "INPUT")
        for name in self.names:
            text = text.replace(name, hashed_name(name))
        return text
