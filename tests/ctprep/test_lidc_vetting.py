"""LIDC XML values kept only in the schema's form: reader ids of the real XMLs' shape, integer ratings in range."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctprep.formats.lidc_xml import is_public_lidc_id, parse_lidc_xml, public_lidc_id
from ctprep.phantoms.lidc import write_lidc_xml

LIDC_DIR = Path("/work/shared/data/lidc_xml")

ROI = {"z": -100.0, "sop_uid": "1.2.3.4", "inclusion": True, "points": [(10, 10), (12, 10), (12, 12), (10, 12)]}
GOOD = {"subtlety": 5, "internalStructure": 1, "calcification": 6, "sphericity": 4, "margin": 4,
        "lobulation": 2, "spiculation": 1, "texture": 5, "malignancy": 3}


def _xml(tmp_path: Path, nodule_id: str, characteristics: dict, non_nodule_id: str = "_Non-nodule 001") -> Path:
    session = {"nodules": [{"id": nodule_id, "characteristics": characteristics,
                            "rois": [ROI, {**ROI, "z": -97.5}]}],
               "non_nodules": [{"id": non_nodule_id, "z": -100.0, "sop_uid": "1.2.3.4", "x": 3, "y": 4}]}
    return write_lidc_xml(tmp_path / "crafted.xml", "1.2.3", "1.2", [session])


@pytest.mark.parametrize("planted", ["Jane Doe", "DOE^JANE", "Mary Smith 12", "nodule of Mr Brown", "x" * 40])
def test_a_name_in_an_id_is_replaced_and_counted(tmp_path, planted):
    ann = parse_lidc_xml(_xml(tmp_path, planted, GOOD, non_nodule_id=planted))
    (session,) = ann.sessions
    (nodule,) = session.nodules
    assert planted not in repr(ann.to_dict())
    assert nodule.nodule_id == public_lidc_id(planted) and nodule.nodule_id.startswith("id-")
    assert session.non_nodules[0].nodule_id == nodule.nodule_id
    assert ann.replaced_values == 2


@pytest.mark.parametrize("name, text", [("malignancy", "likely benign per Dr Who"), ("subtlety", "9"),
                                        ("internalStructure", "5"), ("calcification", "0"), ("texture", "2.5"),
                                        ("margin", "-1"), ("patientName", "3")])
def test_characteristics_outside_the_schema_are_dropped_and_counted(tmp_path, name, text):
    ann = parse_lidc_xml(_xml(tmp_path, "Nodule 001", {**GOOD, name: text}))
    (nodule,) = ann.sessions[0].nodules
    assert name not in nodule.characteristics
    assert "Dr Who" not in repr(ann.to_dict())
    assert all(isinstance(v, int) for v in nodule.characteristics.values())
    assert ann.replaced_values == 1


def test_real_ids_and_ratings_are_kept():
    for name in ("069.xml", "071.xml"):
        ann = parse_lidc_xml(LIDC_DIR / name)
        assert ann.replaced_values == 0, name
        ids = [n.nodule_id for s in ann.sessions for n in s.nodules + s.small_nodules + s.non_nodules]
        assert ids and all(is_public_lidc_id(i) and not i.startswith("id-") for i in ids)


def test_id_rule():
    for good in ("Nodule 001", "_Non-nodule 001", "MI014_12126", "IL057_127367", "3", "id-0123abcd", "small", "N1"):
        assert is_public_lidc_id(good), good
    for bad in ("Jane Doe", "Nodule  001", "Nodule 001\n", "", "a/b", "Müller 1", "DOE^JANE"):
        assert not is_public_lidc_id(bad), bad


def test_a_converted_case_keeps_no_planted_id_and_audits_clean(tmp_path):
    from ctprep.commands.audit import audit_store
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.phantoms.lidc import write_lidc_case
    from ctprep.store.slicestore import SliceStore

    phantom = write_lidc_case(tmp_path / "in", 1, shape=(8, 32, 32))
    text = phantom.xml.read_text()
    assert "Nodule 001" in text and "<malignancy>" in text
    text = text.replace("Nodule 001", "Jane Doe").replace("<malignancy>3<", "<malignancy>seen by Jane Doe<", 1)
    phantom.xml.write_text(text)
    store = tmp_path / "lidc.zarr"
    convert_dataset(ConvertConfig(source="lidc", input_dir=str(tmp_path / "in"), output=str(store)), progress=False)
    assert not [p for p in store.rglob("*.json") if "Jane" in p.read_text()]
    assert audit_store(store).clean
    record = SliceStore.open(str(store)).record(phantom.patient)
    assert record.annotations["lidc"]["replaced_values"] >= 1
