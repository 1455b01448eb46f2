"""What the store format allows in each field: the table ``ctprep audit`` holds every string of a store to.

Convention: every string of a store's JSON (store attributes, case records, label
attributes, array metadata) and of the conversion manifest, and every key, is
checked against the rule of its field, found by the first pattern of ``FIELDS``
matching the field's dotted path (list items as ``[]``). A value is either of the
form its field allows or it is a finding ``field-rule``:

* ``case-id``: a dataset manifest's id pattern (``LUNG1-{n:03d}`` ...), DeepLesion's
  key-slice id, or an id ctprep made (``unnamed-<hex>``, ``case-h<hex>``);
* ``input-path``: relative and public (:func:`ctprep.public_paths.is_public_path`);
* ``roi-name``: a name the ROI mapping chose (label names, the GTV rule) or ``roi-<8 hex>``;
* ``lidc-id``: :func:`ctprep.formats.lidc_xml.is_public_lidc_id` (with ctprep's ``#n`` suffix);
* ``lidc-characteristic``: never a string (ratings are integers);
* ``technical``: the DICOM technical attributes ctprep keeps, a short token;
* ``message``: ctprep's own messages (skip reasons, notes): no absolute path;
* ``text``: anything else; a string with letters must be a shipped dataset manifest's
  text or an enum-like word of the format (``KNOWN_WORDS``), else it is free text.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Callable, Iterator

from ctprep.datasets import MANIFEST_DIR
from ctprep.formats.lidc_xml import CHARACTERISTICS, is_public_lidc_id
from ctprep.public_paths import is_public_path

# Enum-like values and keys of the format (split names, statuses, roles, windows, codecs ...).
KNOWN_WORDS = frozenset("""
train val test converted skipped existing failed image label labels ct xml rtstruct info context seg segmentation
abdomen bone liver lung mediastinum brain soft tissue kidney tumour nodule background outside all regular default
bytes zstd blosc gzip crc32c transpose uint8 uint16 int16 int8 float32 float64 bool group array channel x y z
lesionkit lesionkit-ct-slice-store lesionkit-conversion-manifest lits kits19 nsclc lidc deeplesion dicom nifti
CT HU MR unlabelled lymph node lung-nodule soft-tissue pelvis mediastinal abdominal
""".split())
_NON_LEXICAL = re.compile(r"[0-9+\-.:/ TZ]*|[0-9a-f]{8,}|[0-9][0-9a-zA-Z.]*", re.ASCII)
_CHUNK_KEY = re.compile(r"c(?:\.[0-9]+)+", re.ASCII)
_LABEL_NAME = re.compile(r"(?:labels/)?[a-z][a-z0-9_]{0,63}", re.ASCII)
_MADE_CASE_ID = re.compile(r"unnamed-[0-9a-f]{12}|case-h[0-9a-f]{6,64}", re.ASCII)
_DEEPLESION_ID = re.compile(r"[0-9]{6}(?:_[0-9]{2}_[0-9]{2}_[0-9]{3})?", re.ASCII)
_ROI_HASH = re.compile(r"roi-[0-9a-f]{8}", re.ASCII)
_GTV = re.compile(r"gtv[ _-]?[0-9]*", re.ASCII | re.IGNORECASE)
_ABSOLUTE = re.compile(r"(?:^|[\s'\"(=])(?:/|[A-Za-z]:\\|~/)[^\s'\"]*[A-Za-z]", re.ASCII)
# Keys of annotations["ct"]["technical"] (ctprep.formats.dicom keeps these and no other header attribute).
TECHNICAL_KEYS = frozenset({"Modality", "Manufacturer", "ManufacturerModelName", "ConvolutionKernel", "SliceThickness",
                            "KVP", "PixelSpacing", "RescaleType", "Rows", "Columns", "NumberOfSlices",
                            "TransferSyntaxUID"})
_LIBRARY = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,40}", re.ASCII)
_NAME_PAIR = re.compile(r"\b[A-Z][a-z]+[ ,]+[A-Z][a-z]+\b", re.ASCII)  # "Jane Doe": no message of ctprep has one
_AXCODES = re.compile(r"(?=.*[LR])(?=.*[AP])(?=.*[SI])[LRAPSI]{3}", re.ASCII)  # one letter per axis
_TECHNICAL = re.compile(r"[A-Za-z0-9 ._/+\-]{1,64}", re.ASCII)


def _walk(value) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, str):
        yield value


@lru_cache(maxsize=1)
def _shipped() -> tuple[frozenset[str], tuple[re.Pattern, ...]]:
    """Every string of the shipped dataset manifests, and their case id patterns."""
    texts: set[str] = set()
    patterns = []
    for path in sorted(MANIFEST_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        texts.update(_walk(data))
        form = re.escape(data["case_id_format"]).replace(r"\{", "{").replace(r"\}", "}")
        form = re.sub(r"\{n:0?([0-9]+)d\}", r"[0-9]{\1}", form).replace("{n}", "[0-9]+")
        patterns.append(re.compile(form, re.ASCII))
    return frozenset(texts), tuple(patterns)


def _case_id(value: str) -> bool:
    return bool(_MADE_CASE_ID.fullmatch(value) or _DEEPLESION_ID.fullmatch(value)
                or any(p.fullmatch(value) for p in _shipped()[1]))


def _roi_name(value: str) -> bool:
    return bool(_ROI_HASH.fullmatch(value) or _GTV.fullmatch(value) or _LABEL_NAME.fullmatch(value)
                or value.lower() in KNOWN_WORDS)


def _text(value: str) -> bool:
    return (not re.search(r"[^\W\d_]", value) or bool(_NON_LEXICAL.fullmatch(value))
            or value in KNOWN_WORDS or value in _shipped()[0] or bool(_LABEL_NAME.fullmatch(value)))


def _message(value: str) -> bool:
    return not (_ABSOLUTE.search(value) or _NAME_PAIR.search(value))


RULES: dict[str, Callable[[str], bool]] = {
    "case-id": _case_id,
    "input-path": is_public_path,
    "roi-name": _roi_name,
    "lidc-id": lambda v: is_public_lidc_id(re.sub(r"#[0-9]+$", "", v)),
    "lidc-characteristic": lambda v: False,
    "characteristic-name": lambda v: v in CHARACTERISTICS,
    "technical-key": lambda v: v in TECHNICAL_KEYS,
    "library": lambda v: bool(_LIBRARY.fullmatch(v)),
    "axcodes": lambda v: bool(_AXCODES.fullmatch(v)),
    "technical": lambda v: bool(_TECHNICAL.fullmatch(v)),
    "message": _message,
    "text": _text,
}

# field (dotted path, list items as []) -> rule; the first match wins, "text" for any other field.
FIELDS: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"(?:^|\.)(?:case_id|patient_id|case_ids\[\]|summary\.skipped\[\])$", "case-id"),
    (r"(?:^|\.)(?:cases|split\.patients|folds\.cases|folds\.patients)\.\{key\}$", "case-id"),
    (r"\.inputs\[\]\.path$|\.superseded_xml\[\]$", "input-path"),
    (r"\.rtstruct\.(?:rois\[\]|labels\.[^.]+\[\])$", "roi-name"),
    (r"\.reader_nodule_ids\.[0-9]+$|\.(?:small_nodules|non_nodules)\[\]\.id$", "lidc-id"),
    (r"\.characteristics\.[0-9]+\.\{key\}$", "characteristic-name"),
    (r"\.ct\.technical\.\{key\}$", "technical-key"),
    (r"(?:^|\.)libraries\.\{key\}$", "library"),
    (r"\.characteristics\.[0-9]+\.[^.]+$", "lidc-characteristic"),
    (r"\.ct\.technical\.[A-Za-z]+$", "technical"),
    (r"\.axcodes$", "axcodes"),
    # ctprep's own prose (skip reasons, notes, label descriptions a source writes)
    (r"(?:^|\.)(?:reason|command|created_by|notes\[\]|quirks\[\]|rejected_lesions\[\]|warnings\[\]|"
     r"slice_order|labels\[\]\.description|attributes\.description)$", "message"),
))


def rule_of(field: str) -> str:
    return next((rule for pattern, rule in FIELDS if pattern.search(field)), "text")


def field_findings(document, field: str = "", shown: str = "") -> Iterator[tuple[str, str, str]]:
    """(where, rule, value) for every key and string of ``document`` not of the form its field allows.

    ``where`` names the place as ``ctprep audit``'s other rules do (``a.b[2].c``; a key by its own path).
    """
    if isinstance(document, dict):
        for key, item in document.items():
            key = str(key)
            here = f"{shown}.{key}" if shown else key
            rule = rule_of(f"{field}.{{key}}")
            if not (RULES[rule](key) or _CHUNK_KEY.fullmatch(key)):
                yield here, f"field-{rule}", key
            yield from field_findings(item, f"{field}.{key}", here)
    elif isinstance(document, list):
        for i, item in enumerate(document):
            yield from field_findings(item, f"{field}[]", f"{shown}[{i}]")
    elif isinstance(document, str):
        rule = rule_of(field)
        if not RULES[rule](document):
            yield shown or "(root)", f"field-{rule}", document
