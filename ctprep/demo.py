"""``ctprep demo``: phantom LiTS, KiTS19, NSCLC-Radiomics and LIDC-IDRI downloads, converted,
summarised and previewed.

Nothing is downloaded: the raw data are fabricated in the real layouts
(ctprep.phantom for the NIfTI datasets, in several orientations, so the demo also
shows that every orientation lands on the same canonical grid; ctprep.nsclc_phantom
for CT series + RTSTRUCT written with rt-utils; ctprep.lidc_phantom for CT series +
four readers' XML in the LIDC schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctprep.convert import ConversionReport, ConvertConfig, convert_dataset
from ctprep.info import StoreInfo, store_info
from ctprep.lidc_phantom import write_lidc_case
from ctprep.nsclc_phantom import write_nsclc_case
from ctprep.phantom import write_kits19_case, write_lits_case
from ctprep.preview import write_preview
from ctprep.store import SliceStore


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    reports: dict[str, ConversionReport]
    infos: dict[str, StoreInfo]
    previews: list[Path]


# Source options the demo converts with (the ``--roi`` flags): NSCLC stores the lungs too.
DEMO_OPTIONS = {"nsclc": {"rois": ["Lung-Left=lungs", "Lung-Right=lungs"]}}


def make_demo_inputs(out_dir: Path) -> dict[str, Path]:
    """Write the phantom downloads: 3 LiTS volumes (two batches, three orientations), 2 KiTS19 cases,
    2 NSCLC-Radiomics patients (one with two GTVs) and 2 LIDC-IDRI patients (four readers each)."""
    lits, kits = out_dir / "raw" / "lits", out_dir / "raw" / "kits19"
    write_lits_case(lits / "Training Batch 1", 0, axcodes=("R", "A", "S"))
    write_lits_case(lits / "Training Batch 1", 1, axcodes=("L", "P", "S"), gz=True)
    write_lits_case(lits / "Training Batch 2", 2, axcodes=("R", "P", "I"), shape=(48, 128, 128))
    for number in (0, 1):
        write_kits19_case(kits, number)
    nsclc, lidc = out_dir / "raw" / "NSCLC-Radiomics", out_dir / "raw" / "LIDC-IDRI"
    write_nsclc_case(nsclc, 1, tumours=2)
    write_nsclc_case(nsclc, 2)
    for number in (1, 2):
        write_lidc_case(lidc, number)
    return {"lits": lits, "kits19": kits, "nsclc": nsclc, "lidc": lidc}


def run_demo(out_dir: str | Path, workers: int = 1, progress: bool = True) -> DemoResult:
    out_dir = Path(out_dir)
    inputs = make_demo_inputs(out_dir)
    reports, infos, previews = {}, {}, []
    for source, folder in inputs.items():
        store_path = out_dir / f"{source}.zarr"
        config = ConvertConfig(source=source, input_dir=str(folder), output=str(store_path),
                               workers=workers, overwrite=True, source_options=DEMO_OPTIONS.get(source, {}))
        reports[source] = convert_dataset(config, progress=progress, created_by=f"ctprep demo {out_dir}")
        infos[source] = store_info(store_path)
        store = SliceStore.open(store_path)
        case_id = store.case_ids()[0]
        previews.append(write_preview(store_path, case_id, out_dir / f"{source}_{case_id}.png"))
    return DemoResult(reports=reports, infos=infos, previews=previews)
