"""Your own NIfTI data: image/label pairs found by patterns, or a Decathlon / nnU-Net v2 folder.

``ctprep convert --source nifti --input FOLDER`` recognises, in this order:

* patterns given as options (``--images 'imagesTr/*.nii.gz' --labels 'labelsTr/{id}.nii.gz'``): the
  ``*`` of the image file name is the case's ``{id}``;
* the Medical Segmentation Decathlon layout: ``dataset.json`` with ``modality``, ``labels``
  (value -> name) and ``training`` ([{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]);
  only CT tasks are converted (modality ``CT``, one channel);
* nnU-Net v2's raw ``DatasetXXX_Name`` layout: ``dataset.json`` with ``channel_names``, ``labels``
  (name -> value, or a list of values for a region) and ``file_ending``; images
  ``imagesTr/<case>_<CT channel as 4 digits><file_ending>``, labels ``labelsTr/<case><file_ending>``.

The label map (``--label-map``) overrides dataset.json: a JSON file, a JSON text in either
dataset.json form, or ``name=v[+v...],...`` (``liver=1+2,tumour=2``). Each label is stored as a
binary mask of its values; the lesion label (``--lesion-label``, else the first whose name says
tumour/cancer/lesion/nodule/mass/metastasis) drives ``--slices lesion``.

Privacy convention: a case id taken from a file name is kept only when it is a number behind a
prefix shared by several cases (``liver_3``, ``case_00001``), a generic prefix (case, volume, ...) or
a word of the dataset's name or folder (``liver_0`` in ``Task03_Liver``);
otherwise every case becomes ``case-<12 hex of sha256(file stem)>`` and its recorded input paths
are replaced by ``<case id>/<role>.nii[.gz]``, so no file name reaches the store or manifest.
Each case is its own patient (these layouts do not say which scans share a patient).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ctprep.case import CaseRef, CaseVolume, InputFile, LabelSpec
from ctprep.datasets import DatasetManifest
from ctprep.errors import CaseInputError, ManifestError
from ctprep.slabs import CaseStream
from ctprep.sources.base import NiftiPairSource
from lkbase.errors import ParameterError

_LESION_WORDS = re.compile(r"tumou?r|cancer|lesion|nodule|mass|metasta", re.IGNORECASE)
_GENERIC_PREFIXES = {"", "case", "patient", "subject", "volume", "scan", "ct", "img", "image", "sample"}
_NUMBERED = re.compile(r"([A-Za-z]*[_-]?)([0-9]+)")  # fullmatch, ASCII digits
_NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True, kw_only=True)
class NiftiLayout:
    """What was recognised in a folder: the kind, the (stem, image, label) pairs and the label map."""

    kind: str  # "patterns", "msd" or "nnunet"
    pairs: tuple[tuple[str, str, str], ...]  # (file stem, image path, label path), relative to the root
    labels: tuple[LabelSpec, ...]
    label_values: Mapping[int, str]
    title: str = ""
    licence: str = ""
    citation: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("patterns", "msd", "nnunet"):
            raise ParameterError(f"layout kind must be patterns, msd or nnunet, found {self.kind!r}")
        if not self.labels:
            raise ParameterError("a NIfTI layout needs at least one non-background label, found none")


class NiftiGenericSource(NiftiPairSource):
    name = "nifti"
    description = ("your own NIfTI image/label pairs: a Decathlon or nnU-Net v2 folder (dataset.json), "
                   "or --images/--labels patterns")
    options_help = {
        "images": "glob of the images below the input folder, e.g. 'imagesTr/*.nii.gz' (the * is the case id)",
        "labels": "label file of each image, e.g. 'labelsTr/{id}.nii.gz'",
        "label_map": "JSON file or text, or 'name=v[+v],...' (default: dataset.json's labels)",
        "lesion_label": "the label that is the lesion (default: a label named tumour/cancer/lesion/...)",
    }

    def __init__(self, manifest: DatasetManifest | None = None, options: Mapping[str, Any] | None = None):
        super().__init__(manifest=manifest or _placeholder_manifest(), options=options)
        self._roots: dict[str, NiftiLayout] = {}

    def layout(self, root: Path) -> NiftiLayout:
        """The layout of ``root`` (read once per source object); sets :attr:`manifest` from it."""
        key = str(root)
        if key not in self._roots:
            self._roots[key] = find_layout(Path(root), self.options)
            self.manifest = self._manifest_of(self._roots[key])
        return self._roots[key]

    def discover(self, root: Path) -> list[CaseRef]:
        layout = self.layout(root)
        dataset_words = set(re.split(r"[^a-z]+", f"{layout.title} {Path(root).name}".lower()))
        ids = safe_case_ids([stem for stem, _, _ in layout.pairs], dataset_words)
        refs = [CaseRef(source=self.name, case_id=ids[stem], patient_id=ids[stem], root=str(root),
                        files=(("image", image), ("label", label)))
                for stem, image, label in layout.pairs]
        return sorted(refs, key=lambda r: r.case_id)

    def load(self, ref: CaseRef) -> CaseVolume:
        self.layout(Path(ref.root))
        if not ref.case_id.startswith(_HASHED):
            return super().load(ref)
        try:
            volume = super().load(ref)
        except CaseInputError as exc:  # the message names the file: say the case id instead
            reason = exc.reason
            for role in ("image", "label"):
                reason = reason.replace(_stem(ref.path(role).name), f"{ref.case_id} {role}")
            raise CaseInputError(ref.case_id, reason) from None
        return dataclasses.replace(volume, inputs=_hidden(ref, volume.inputs))

    def stream(self, ref: CaseRef) -> CaseStream:
        self.layout(Path(ref.root))
        stream = super().stream(ref)  # errors: as load words them (NiftiPairSource._refuse_as_load)
        if not ref.case_id.startswith(_HASHED):
            return stream
        return dataclasses.replace(stream, inputs=lambda: _hidden(ref, stream.inputs()))

    def _manifest_of(self, layout: NiftiLayout) -> DatasetManifest:
        lesion = self.options.get("lesion_label") or next(
            (s.name for s in layout.labels if _LESION_WORDS.search(s.name)), None)
        if lesion is not None and lesion not in {s.name for s in layout.labels}:
            raise ParameterError(f"--lesion-label {lesion!r} is not among the labels "
                                 f"{', '.join(s.name for s in layout.labels)}")
        return DatasetManifest(
            name=self.name, title=layout.title or f"own NIfTI data ({layout.kind})", case_ids=(),
            label_values=dict(layout.label_values), labels=layout.labels, lesion_label=lesion,
            default_windows=("abdomen",), lesion_window=None,
            official_split=None, quirks=(), citation=layout.citation, licence=layout.licence, url="")


_HASHED = "case-h"


def _placeholder_manifest() -> DatasetManifest:
    """The manifest before a folder is read: no labels known yet."""
    return DatasetManifest(name="nifti", title="own NIfTI data", case_ids=(), label_values={0: "background"},
                           labels=(), lesion_label=None, default_windows=("abdomen",), lesion_window=None, official_split=None,
                           quirks=(), citation="", licence="", url="")


def _hidden(ref: CaseRef, inputs: tuple[InputFile, ...]) -> tuple[InputFile, ...]:
    """A hashed id hides the file name: the recorded inputs must not give it back."""
    return tuple(InputFile(role=f.role, path=f"{ref.case_id}/{f.role}{_ending(f.path)}", size=f.size,
                           sha256=f.sha256) for f in inputs)


def _ending(path: str) -> str:
    return next((e for e in _NIFTI_ENDINGS if path.endswith(e)), "")


def _stem(name: str) -> str:
    return name[: -len(_ending(name))] if _ending(name) else name


def safe_case_ids(stems: list[str], dataset_words: set[str] = frozenset()) -> dict[str, str]:
    """Case ids for file stems: kept when clearly non-identifying (see the module docstring), else hashed.

    ``dataset_words``: words of the dataset's name and folder (Task03_Liver: task, liver), also safe prefixes."""
    matches = [_NUMBERED.fullmatch(s) for s in stems]
    prefixes = {m[1] for m in matches if m}
    if stems and all(matches) and len(prefixes) == 1:
        prefix = next(iter(prefixes))
        if len(stems) >= 2 or prefix.rstrip("_-").lower() in _GENERIC_PREFIXES | set(dataset_words):
            return {s: s for s in stems}
    return {s: f"{_HASHED}{hashlib.sha256(s.encode()).hexdigest()[:12]}" for s in stems}


# ---- recognising a folder ------------------------------------------------------------------

def find_layout(root: Path, options: Mapping[str, Any]) -> NiftiLayout:
    """The layout of ``root``: patterns from ``options`` first, else its dataset.json (MSD or nnU-Net v2)."""
    info = _dataset_json(root)
    if options.get("images") or options.get("labels"):
        layout = _pattern_layout(root, options, info)
    elif info is None:
        raise ParameterError(f"{root}: no dataset.json (Decathlon or nnU-Net v2 layout); give --images and "
                             "--labels patterns, e.g. --images 'imagesTr/*.nii.gz' --labels 'labelsTr/{id}.nii.gz'")
    elif "channel_names" in info:
        layout = _nnunet_layout(root, info)
    elif "training" in info:
        layout = _msd_layout(root, info)
    else:
        raise ParameterError(f"{root / 'dataset.json'}: neither a Decathlon ('training', 'modality') nor an "
                             "nnU-Net v2 ('channel_names', 'file_ending') dataset.json")
    if options.get("label_map"):
        specs, values = parse_label_map(options["label_map"])
        layout = dataclasses.replace(layout, labels=specs, label_values=values)
    return layout


def _dataset_json(root: Path) -> dict | None:
    path = root / "dataset.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _pattern_layout(root: Path, options: Mapping[str, Any], info: dict | None) -> NiftiLayout:
    images, labels = options.get("images"), options.get("labels")
    if not images or not labels or "{id}" not in str(labels):
        raise ParameterError("--images and --labels go together, and --labels must contain {id}: "
                             f"found --images {images!r} --labels {labels!r}")
    if "*" not in Path(images).name:
        raise ParameterError(f"--images {images!r}: the file name part must contain * (it becomes the case id)")
    name_re = re.compile(fnmatch.translate(Path(images).name).replace(".*", "(.*)", 1))
    pairs = []
    for path in sorted(root.glob(images)):
        if path.name.startswith("._") or not path.is_file():
            continue  # macOS resource forks, shipped in the Decathlon tarballs
        match = name_re.fullmatch(path.name)
        stem = match[1] if match else _stem(path.name)
        pairs.append((stem, str(path.relative_to(root)), str(labels).format(id=stem)))
    if not options.get("label_map") and info is None:
        raise ParameterError("--label-map is needed with --images/--labels when the folder has no dataset.json "
                             "(e.g. --label-map 'liver=1+2,tumour=2')")
    specs, values = _labels_of(root, info) if info is not None else parse_label_map(options["label_map"])
    return _layout("patterns", pairs, specs, values, info or {})


def _layout(kind: str, pairs, specs, values, info: dict) -> NiftiLayout:
    return NiftiLayout(kind=kind, pairs=tuple(pairs), labels=tuple(specs), label_values=values,
                       title=str(info.get("name") or info.get("description") or ""),
                       licence=str(info.get("licence") or info.get("license") or ""),
                       citation=str(info.get("reference") or ""))


def _msd_layout(root: Path, info: dict) -> NiftiLayout:
    modality = {str(k): str(v) for k, v in (info.get("modality") or {"0": "CT"}).items()}
    if [m.upper() for m in modality.values()] != ["CT"]:
        raise ParameterError(f"{root / 'dataset.json'}: modality {modality}; only single-channel CT "
                             "Decathlon tasks are converted (e.g. Task03_Liver, Task06_Lung, Task10_Colon)")
    pairs = []
    for entry in info.get("training") or []:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise ManifestError(f"{root / 'dataset.json'}: a 'training' entry lacks image/label: {entry!r}")
        image, label = (str(Path(entry[k])) for k in ("image", "label"))  # drops the leading ./
        pairs.append((_stem(Path(image).name), image, label))
    specs, values = _labels_of(root, info)
    return _layout("msd", pairs, specs, values, info)


def _nnunet_layout(root: Path, info: dict) -> NiftiLayout:
    channels = {int(k): str(v) for k, v in info["channel_names"].items()}
    ct = [k for k, v in channels.items() if v.upper() == "CT"]
    if not ct:
        raise ParameterError(f"{root / 'dataset.json'}: channel_names {channels} has no CT channel")
    ending = str(info.get("file_ending", ".nii.gz"))
    if ending not in _NIFTI_ENDINGS:
        raise ParameterError(f"{root / 'dataset.json'}: file_ending {ending!r}; only NIfTI (.nii.gz, .nii) is read")
    suffix = f"_{ct[0]:04d}{ending}"
    pairs = [(path.name[: -len(suffix)], str(path.relative_to(root)), f"labelsTr/{path.name[: -len(suffix)]}{ending}")
             for path in sorted((root / "imagesTr").glob(f"*{suffix}")) if not path.name.startswith("._")]
    specs, values = _labels_of(root, info)
    return _layout("nnunet", pairs, specs, values, info)


def _labels_of(root: Path, info: dict) -> tuple[tuple[LabelSpec, ...], dict[int, str]]:
    try:
        return parse_label_map(info.get("labels") or {})
    except ParameterError as exc:
        raise ManifestError(f"{root / 'dataset.json'}: {exc}") from exc


def parse_label_map(given: Any) -> tuple[tuple[LabelSpec, ...], dict[int, str]]:
    """Binary labels and value names from a label map: a dict in Decathlon form ({"1": "liver"}) or
    nnU-Net v2 form ({"liver": 1, "tumour": [2]}), JSON text or a JSON file of either, or 'name=v+v,...'."""
    data = _label_map_data(given)
    values: dict[int, str] = {0: "background"}
    specs: dict[str, list[int]] = {}
    for key, value in data.items():
        if str(key).isdigit():  # Decathlon: value -> name
            pairs = [(str(value), [int(key)])]
        else:  # nnU-Net v2: name -> value or region (list of values)
            numbers = value if isinstance(value, list) else [value]
            pairs = [(str(key), [int(v) for v in numbers])]
        for name, numbers in pairs:
            if any(not 0 <= v <= 255 for v in numbers):
                raise ParameterError(f"label {name!r}: values must be 0..255, found {numbers}")
            if numbers == [0] or name.lower() == "background":
                continue
            specs.setdefault(name, []).extend(numbers)
            for v in numbers:
                values.setdefault(v, name)
    if not specs:
        raise ParameterError(f"label map {given!r} names no label other than background")
    return tuple(LabelSpec(name=n, values=tuple(sorted(set(v)))) for n, v in specs.items()), values


def _label_map_data(given: Any) -> dict:
    if isinstance(given, dict):
        return given
    text = str(given).strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ParameterError(f"label map {text!r}: not valid JSON ({exc})") from exc
    if text.endswith(".json"):
        try:
            return json.loads(Path(text).read_text())
        except (OSError, ValueError) as exc:
            raise ParameterError(f"{text}: label map not readable ({exc})") from exc
    out: dict[str, list[int]] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, numbers = item.partition("=")
        try:
            out[name.strip()] = [int(v) for v in numbers.split("+")]
        except ValueError:
            raise ParameterError(f"label map entry {item!r}: expected name=value[+value...]") from None
    return out
