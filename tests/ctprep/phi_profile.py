"""The DICOM Basic Application Level Confidentiality Profile, as a table, and PHI planting for the tests.

``PROFILE`` lists the attributes of DICOM PS3.15 Annex E, Table E.1-1 ("Application Level
Confidentiality Profile Attributes"), edition 2013, with their Basic Profile action
(D dummy, Z zero/empty, X remove, U new UID, and the combinations the table allows),
transcribed from the standard: https://dicom.nema.org/medical/dicom/2013/output/chtml/part15/chapter_E.html
Left out, because they are not attributes one can plant in a CT or RT Structure Set
object: the command group (0000,xxxx), DICOMDIR (0004,xxxx), the repeating curve (50xx)
and overlay (60xx) groups, the Digital Signatures Sequence (FFFA,FFFA) and Data Set
Trailing Padding (FFFC,FFFC). Media Storage SOP Instance UID (0002,0003) is planted
through SOP Instance UID, which it copies.

``LATER`` adds attributes that later editions of the table list (checked against the
2023 edition); ``RT_FREE_TEXT`` adds free-text attributes of RT Structure Sets that a
hospital may fill with names, planted too although not all are in the table.

Every value planted is distinctive (``ZQ<nnn>PHI`` tokens, dates in 1901-1930, times with
an odd fraction, UIDs under the root ``2.25.98765432101234``), so a byte search of the
outputs finds any that leaked.
"""

from __future__ import annotations

import datetime
import json

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

UID_ROOT = "2.25.98765432101234"

# (tag, Basic Profile action) in the table's order (alphabetical by attribute name).
PROFILE = (
    (0x00080050, "Z"), (0x00184000, "X"), (0x00400555, "X/Z"), (0x00080022, "X/Z"), (0x0008002A, "X/D"),
    (0x00181400, "X/D"), (0x00189424, "X"), (0x00080032, "X/Z"), (0x00404035, "X"), (0x001021B0, "X"),
    (0x00380010, "X"), (0x00380020, "X"), (0x00081084, "X"), (0x00081080, "X"), (0x00380021, "X"),
    (0x00102110, "X"), (0x40000010, "X"), (0x0040A078, "X"), (0x00101081, "X"), (0x00181007, "X"),
    (0x00400280, "X"), (0x00209161, "U"), (0x00403001, "X"), (0x00080023, "Z/D"), (0x00080033, "Z/D"),
    (0x00700086, "X"), (0x00700084, "Z"), (0x0040A730, "X"), (0x0008010D, "U"), (0x00180010, "Z/D"),
    (0x0018A003, "X"), (0x00102150, "X"), (0x00089123, "U"), (0x00380300, "X"), (0x00080025, "X"),
    (0x00080035, "X"), (0x0040A07C, "X"), (0x00082111, "X"), (0x0018700A, "X/D"), (0x00181000, "X/Z/D"),
    (0x00181002, "U"), (0x04000100, "X"), (0x00209164, "U"), (0x00380040, "X"), (0x4008011A, "X"),
    (0x40080119, "X"), (0x300A0013, "U"), (0x00102160, "X"), (0x00080058, "U"), (0x0070031A, "U"), (0x00402017, "Z"),
    (0x00209158, "X"), (0x00200052, "U"), (0x00181008, "X"), (0x00181005, "X"), (0x00700001, "D"),
    (0x00404037, "X"), (0x00404036, "X"), (0x00880200, "X"), (0x00084000, "X"), (0x00204000, "X"),
    (0x00284000, "X"), (0x00402400, "X"), (0x40080300, "X"), (0x00080014, "U"), (0x00080081, "X"),
    (0x00080082, "X/Z/D"), (0x00080080, "X/Z/D"), (0x00081040, "X"), (0x00101050, "X"), (0x00401011, "X"),
    (0x40080111, "X"), (0x4008010C, "X"), (0x40080115, "X"), (0x40080202, "X"), (0x40080102, "X"),
    (0x4008010B, "X"), (0x4008010A, "X"), (0x00083010, "U"), (0x00380011, "X"), (0x00100021, "X"),
    (0x00380061, "X"), (0x00281214, "U"), (0x001021D0, "X"), (0x04000404, "X"), (0x00102000, "X"),
    (0x00101090, "X"), (0x00101080, "X"), (0x04000550, "X"), (0x00203406, "X"), (0x00203401, "X"),
    (0x00203404, "X"), (0x00081060, "X"), (0x00401010, "X"), (0x00102180, "X"), (0x00081072, "X/D"),
    (0x00081070, "X/Z/D"), (0x04000561, "X"), (0x00402010, "X"), (0x00402008, "X"), (0x00402009, "X"),
    (0x00101000, "X"), (0x00101002, "X"), (0x00101001, "X"), (0x00080024, "X"), (0x00080034, "X"),
    (0x00281199, "U"), (0x0040A07A, "X"), (0x00101040, "X"), (0x00104000, "X"), (0x00100020, "Z"),
    (0x00102203, "X/Z"), (0x00380500, "X"), (0x00401004, "X"), (0x00101010, "X"), (0x00100030, "Z"),
    (0x00101005, "X"), (0x00100032, "X"), (0x00380400, "X"), (0x00100050, "X"), (0x00101060, "X"),
    (0x00100010, "Z"), (0x00100101, "X"), (0x00100102, "X"), (0x001021F0, "X"), (0x00100040, "Z"),
    (0x00101020, "X"), (0x00102154, "X"), (0x00101030, "X"), (0x00400243, "X"), (0x00400254, "X"),
    (0x00400250, "X"), (0x00400251, "X"), (0x00400253, "X"), (0x00400244, "X"), (0x00400245, "X"),
    (0x00400241, "X"), (0x00404030, "X"), (0x00400242, "X"), (0x00404028, "X"), (0x00081052, "X"),
    (0x00081050, "X"), (0x00401101, "D"), (0x0040A123, "D"), (0x00401102, "X"), (0x00401103, "X"),
    (0x40080114, "X"), (0x00081062, "X"), (0x00081048, "X"), (0x00081049, "X"), (0x00402016, "Z"),
    (0x00181004, "X"), (0x00400012, "X"), (0x001021C0, "X"), (0x00181030, "X/D"), (0x00402001, "X"),
    (0x00321030, "X"), (0x04000402, "X"), (0x3006_0024, "U"), (0x00404023, "U"), (0x00081140, "X/Z/U*"),
    (0x00380004, "X"), (0x00081120, "X"), (0x00081111, "X/Z/D"), (0x04000403, "X"), (0x00081155, "U"),
    (0x00081110, "X/Z"), (0x00080092, "X"), (0x00080096, "X"), (0x00080090, "Z"), (0x00080094, "X"),
    (0x00102152, "X"), (0x3006_00C2, "U"), (0x00400275, "X"), (0x00321070, "X"), (0x00401400, "X"),
    (0x00321060, "X/Z"), (0x00401001, "X"), (0x00401005, "X"), (0x00321032, "X"), (0x00321033, "X"),
    (0x00102299, "X"), (0x00102297, "X"), (0x40084000, "X"), (0x40080118, "X"), (0x40080042, "X"),
    (0x300E0008, "X/Z"), (0x00404034, "X"), (0x0038001E, "X"), (0x0040000B, "X"), (0x00400006, "X"),
    (0x00400004, "X"), (0x00400005, "X"), (0x00400007, "X"), (0x00400011, "X"), (0x00400002, "X"),
    (0x00400003, "X"), (0x00400001, "X"), (0x00404027, "X"), (0x00400010, "X"), (0x00404025, "X"),
    (0x00321020, "X"), (0x00321021, "X"), (0x00080021, "X/D"), (0x0008103E, "X"), (0x0020000E, "U"),
    (0x00080031, "X/D"), (0x00380062, "X"), (0x00380060, "X"), (0x001021A0, "X"), (0x00080018, "U"),
    (0x00082112, "X/Z/U*"), (0x00380050, "X"), (0x00081010, "X/Z/D"), (0x00880140, "U"), (0x00324000, "X"),
    (0x00080020, "Z"), (0x00081030, "X"), (0x00200010, "Z"), (0x00320012, "X"), (0x0020000D, "U"),
    (0x00080030, "Z"), (0x00200200, "U"), (0x0040DB0D, "U"), (0x0040DB0C, "U"), (0x40004000, "X"),
    (0x20300020, "X"), (0x00080201, "X"), (0x00880910, "X"), (0x00880912, "X"), (0x00880906, "X"),
    (0x00880904, "X"), (0x00081195, "U"), (0x0040A124, "U"), (0x0040A088, "Z"), (0x0040A075, "D"),
    (0x0040A073, "D"), (0x0040A027, "X"), (0x00384000, "X"),
)

# In later editions of Table E.1-1 (e.g. 2023): consulting physicians, telecom, alternative calendars, ...
LATER = (
    (0x0008009C, "Z"), (0x0008009D, "X"), (0x00100024, "X"), (0x00100033, "X"), (0x00100034, "X"),
    (0x00102155, "X"), (0x00101100, "X"), (0x00321031, "X"), (0x00380014, "X"),
)

# Free text of an RT Structure Set that may hold names; the ROI-level ones are planted in every item.
RT_FREE_TEXT = ("StructureSetLabel", "StructureSetName", "StructureSetDescription", "ROIGenerationDescription",
                "ROIDescription", "ROIObservationDescription", "ROIInterpreter", "ApprovalStatus")

# Attributes whose planted value the test series must not take: it needs them as written
# (the case's UIDs are themselves planted: written under UID_ROOT from the start).
STRUCTURAL = {"SOPInstanceUID", "SeriesInstanceUID"}


def profile_keywords() -> list[str]:
    """Keywords of every planted profile attribute (table order, then the later editions')."""
    return [keyword_for_tag(tag) for tag, _ in PROFILE + LATER]


def uid(n: int) -> str:
    return f"{UID_ROOT}.{n}"


def _value(keyword: str, vr: str, n: int):
    token = f"ZQ{n:03d}PHI"
    day = datetime.date(1901, 1, 1) + datetime.timedelta(days=97 * n)
    clock = f"{n % 24:02d}{(7 * n) % 60:02d}{(11 * n) % 60:02d}.{900000 + n}"
    return {
        "PN": f"{token}^GIVEN{n:03d}", "DA": day.strftime("%Y%m%d"), "TM": clock,
        "DT": day.strftime("%Y%m%d") + clock, "DS": f"{n}.{n:03d}987", "IS": f"{9000000 + n}",
        "AS": f"{n % 100:03d}Y", "UI": uid(900 + n), "US": 4, "OB": token.encode(),
    }.get(vr, token)


def _item(n: int) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = f"ZQ{n:03d}PHIC", "99PHI"
    item.CodeMeaning = f"ZQ{n:03d}PHI item"
    item.PersonName = f"ZQ{n:03d}PHI^ITEM"
    return item


def plant(ds: Dataset, skip: set[str] = STRUCTURAL, shared_uids: dict | None = None) -> dict[str, bytes]:
    """Give ``ds`` a distinctive value in every profile attribute; returns keyword -> needle bytes.

    UIDs that must agree across a series (StudyInstanceUID, FrameOfReferenceUID) come from
    ``shared_uids`` when given. Sequences get one item with a code and a person name.
    """
    needles: dict[str, bytes] = {}
    for n, (tag, _) in enumerate(PROFILE + LATER):
        keyword, vr = keyword_for_tag(tag), dictionary_VR(tag)
        if keyword in skip:
            continue
        if vr == "SQ":
            ds.add_new(tag, vr, Sequence([_item(n)]))
            needles[keyword] = f"ZQ{n:03d}PHI".encode()
            continue
        value = (shared_uids or {}).get(keyword) or _value(keyword, vr, n)
        ds.add_new(tag, vr, value)
        if vr not in ("US", "AS"):  # a 4-byte age or an enumerated number is not distinctive
            needles[keyword] = value if isinstance(value, bytes) else str(value).encode()
    return needles


def plant_rt_free_text(ds: Dataset, start: int = 800) -> dict[str, bytes]:
    """The RT Structure Set's free text (top level and every ROI item) set to distinctive values."""
    needles = {}
    for n, keyword in enumerate(RT_FREE_TEXT, start=start):
        token = f"ZQ{n:03d}PHI"
        value = f"{token}^RT" if keyword == "ROIInterpreter" else token
        needles[keyword] = token.encode()
        if keyword.startswith("ROI") and keyword != "ROIGenerationDescription" and keyword != "ROIDescription":
            for item in ds.get("RTROIObservationsSequence", []):
                setattr(item, keyword, value)
        elif keyword in ("ROIGenerationDescription", "ROIDescription"):
            for item in ds.get("StructureSetROISequence", []):
                setattr(item, keyword, value)
        else:
            setattr(ds, keyword, value)
    return needles


def encodings(needle: bytes) -> set[bytes]:
    """The byte strings a leaked value may take in an output: raw/UTF-8, JSON-escaped, lower case,
    and for a DICOM date the ISO form."""
    text = needle.decode("latin-1")
    forms = {needle, json.dumps(text)[1:-1].encode(), text.lower().encode()}
    if len(text) == 8 and text.isdigit():
        forms.add(f"{text[:4]}-{text[4:6]}-{text[6:]}".encode())
    for part in text.split("^"):
        if len(part) >= 6:
            forms.add(part.encode())
    return forms
