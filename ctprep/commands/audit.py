"""Scanning a store, its manifest and logs for values that look like patient-identifying data.

ctprep never copies PHI out of DICOM headers (it keeps an allowlist of technical
attributes), so a finding here means something went wrong upstream: a new source
that copied a header, a user's own attribute, a log pasted beside the store.
The rules are heuristics meant to have few false positives on lesionkit's own
artifacts while catching what a DICOM header would bring along:

* ``phi-keyword``: a DICOM attribute of the PS3.15 Annex E confidentiality profile
  named as a JSON key or in text (``PatientName``, ``(0010,0010)``, ``00100030`` ...).
* ``person-name``: a value in DICOM person-name form, ``FAMILY^GIVEN``.
* ``birth-date``: a key mentioning birth (``birth_date``, ``DOB``) with a non-empty value.
* ``contact``: e-mail addresses, telephone and US social security numbers.
* ``field-<rule>``: in a store's and its manifest's JSON, a key or string that is not of the form its
  field allows (case ids, public input paths, ROI names, LIDC ids, no free text ...): the table of
  :mod:`ctprep.commands.audit_fields`.

Binary chunks are not scanned (they hold pixels); every JSON and text file is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from ctprep.commands.audit_fields import field_findings
from lkbase.errors import ParameterError

# Identity-bearing attributes of the Basic Application Level Confidentiality Profile
# (DICOM PS3.15 Annex E, table E.1-1): keyword -> tag. UIDs and dates of the study are
# in the profile too but lesionkit keeps no DICOM UIDs or study dates, so their keywords
# suffice here.
PHI_ATTRIBUTES = {
    "PatientName": "00100010", "PatientID": "00100020", "PatientBirthDate": "00100030",
    "PatientBirthTime": "00100032", "PatientSex": "00100040", "OtherPatientIDs": "00101000",
    "OtherPatientNames": "00101001", "PatientBirthName": "00101005", "PatientAddress": "00101040",
    "PatientMotherBirthName": "00101060", "MilitaryRank": "00101080", "BranchOfService": "00101081",
    "MedicalRecordLocator": "00101090", "PatientTelephoneNumbers": "00102154", "EthnicGroup": "00102160",
    "Occupation": "00102180", "AdditionalPatientHistory": "001021B0", "PatientComments": "00104000",
    "PatientReligiousPreference": "001021F0", "ResponsiblePerson": "00102297",
    "ResponsibleOrganization": "00102299", "AccessionNumber": "00080050", "InstitutionName": "00080080",
    "InstitutionAddress": "00080081", "ReferringPhysicianName": "00080090",
    "ReferringPhysicianAddress": "00080092", "ReferringPhysicianTelephoneNumbers": "00080094",
    "StationName": "00081010", "InstitutionalDepartmentName": "00081040",
    "PhysiciansOfRecord": "00081048", "PerformingPhysicianName": "00081050",
    "NameOfPhysiciansReadingStudy": "00081060", "OperatorsName": "00081070", "AdmittingDiagnosesDescription": "00081080",
    "DeviceSerialNumber": "00181000", "StudyID": "00200010", "RequestingPhysician": "00321032",
    "RequestingService": "00321033", "RequestedProcedureDescription": "00321060",
    "CurrentPatientLocation": "00380300", "PatientState": "00380500", "PerformedProcedureStepDescription": "00400254",
    "ContentCreatorName": "00700084", "PersonName": "0040A123", "VerifyingObserverName": "0040A075",
    "ReviewerName": "300E0008", "IssuerOfPatientID": "00100021", "PatientInsurancePlanCodeSequence": "00100050",
    "CountryOfResidence": "00102150", "RegionOfResidence": "00102152", "PatientWeight": "00101030",
    "PatientSize": "00101020", "PatientAge": "00101010",
}

TEXT_SUFFIXES = {".json", ".log", ".txt", ".csv", ".html", ".yaml", ".yml", ".md", ".tsv"}

_KEYWORD = re.compile(r"\b(" + "|".join(sorted(PHI_ATTRIBUTES, key=len, reverse=True)) + r")\b")
_TAG = re.compile(r"\(?\b(" + "|".join(sorted({f"{t[:4]},?{t[4:]}" for t in PHI_ATTRIBUTES.values()})) + r")\b\)?",
                  re.IGNORECASE)
_PERSON_NAME = re.compile(r"\b[A-Za-z][A-Za-z'\-]+\^[A-Za-z][A-Za-z'\-^ ]*")
_BIRTH_KEY = re.compile(r"birth|\bdob\b", re.IGNORECASE)
_CONTACT = re.compile(
    r"[\w.+-]+@[\w-]+\.[\w.-]+"  # e-mail
    r"|\b\d{3}-\d{2}-\d{4}\b"  # US social security number
    r"|\+?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"  # telephone number
)


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One suspicious value: the file, where in it, which rule, and a short masked excerpt."""

    path: str
    where: str
    rule: str
    excerpt: str

    def line(self) -> str:
        return f"{self.path}: {self.where}: {self.rule}: {self.excerpt}"


@dataclass(frozen=True, kw_only=True)
class AuditReport:
    files_scanned: int
    findings: tuple[Finding, ...]

    @property
    def clean(self) -> bool:
        return not self.findings

    def lines(self) -> list[str]:
        head = f"{self.files_scanned} files scanned, {len(self.findings)} finding(s)"
        return [f.line() for f in self.findings] + [head + ("" if self.findings else ": no PHI found")]


def _mask(text: str) -> str:
    """Enough of a value to find it again, not enough to repeat the PHI in a report."""
    text = text.strip()
    return text if len(text) <= 3 else f"{text[:2]}…{text[-1:]} ({len(text)} chars)"


def scan_text(text: str) -> Iterator[tuple[str, str]]:
    """(rule, matched text) for every rule that matches free text."""
    for rule, pattern in (("phi-keyword", _KEYWORD), ("phi-keyword", _TAG), ("person-name", _PERSON_NAME),
                          ("contact", _CONTACT)):
        for match in pattern.finditer(text):
            yield rule, match.group(0)


def scan_json(value, where: str = "") -> Iterator[tuple[str, str, str]]:
    """(where, rule, matched text) for every key and string value of a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            for rule, hit in scan_text(str(key)):
                yield here, rule, hit
            if _BIRTH_KEY.search(str(key)) and item not in (None, "", [], {}):
                yield here, "birth-date", str(item)
            yield from scan_json(item, here)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from scan_json(item, f"{where}[{i}]")
    elif isinstance(value, str):
        for rule, hit in scan_text(value):
            yield where, rule, hit


def audit_text(name: str, text: str, fields: bool = False) -> list[Finding]:
    """Findings in one document called ``name``: JSON is walked key by key, other text line by line.

    ``fields``: the document is a store's or manifest's JSON, so every key and string must also be of the
    form its field allows (:mod:`ctprep.commands.audit_fields`); one finding per place, the PHI rules first.
    """
    if name.endswith(".json"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None
        if document is not None:
            found = [(where or "(root)", rule, hit) for where, rule, hit in scan_json(document)]
            if fields:
                seen = {where for where, _, _ in found}
                found += [f for f in field_findings(document) if f[0] not in seen]
            return [Finding(path=name, where=where, rule=rule, excerpt=_mask(hit)) for where, rule, hit in found]
    return [Finding(path=name, where=f"line {n}", rule=rule, excerpt=_mask(hit))
            for n, line in enumerate(text.splitlines(), 1) for rule, hit in scan_text(line)]


def audit_file(path: Path) -> list[Finding]:
    """Findings in one JSON or text file."""
    return audit_text(str(path), path.read_text(encoding="utf-8", errors="replace"))


def audit_files(paths: list[Path]) -> AuditReport:
    """Audit every text file under ``paths`` (folders are walked; chunk files are skipped)."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found")
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [f for f in candidates if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES]
    findings = [finding for f in files for finding in audit_file(f)]
    return AuditReport(files_scanned=len(files), findings=tuple(findings))


def _store_documents(store_path: str | Path) -> list[tuple[str, str]]:
    """(name, text) of every text file of a store and of the manifest beside it, local or at an fsspec URL."""
    import fsspec

    from ctprep.conversion_manifest import manifest_path

    base = str(store_path).rstrip("/")
    try:
        fs, root = fsspec.core.url_to_fs(base)
    except (ValueError, ImportError) as exc:  # "Protocol not known: foo", "Install s3fs to access S3"
        raise ParameterError(f"{store_path}: cannot open the storage ({exc})") from None
    if not fs.isdir(root):
        raise FileNotFoundError(f"{store_path}: store folder not found")
    names = sorted(n for n in fs.find(root) if PurePosixPath(n).suffix.lower() in TEXT_SUFFIXES)
    documents = [(f"{base}/{n[len(root.rstrip('/')) + 1:]}", fs.cat_file(n)) for n in names]
    manifest = str(manifest_path(store_path))
    manifest_fs, manifest_root = fsspec.core.url_to_fs(manifest)
    if manifest_fs.isfile(manifest_root):
        documents.append((manifest, manifest_fs.cat_file(manifest_root)))
    return [(name, data.decode("utf-8", errors="replace")) for name, data in documents]


def audit_store(store_path: str | Path, extra: list[str | Path] = ()) -> AuditReport:
    """Audit a store (a folder or an fsspec URL), the manifest written beside it (if any) and ``extra`` files (logs)."""
    documents = _store_documents(store_path)
    others = audit_files([Path(p) for p in extra])
    findings = [f for name, text in documents for f in audit_text(name, text, fields=True)] + list(others.findings)
    return AuditReport(files_scanned=len(documents) + others.files_scanned, findings=tuple(findings))
