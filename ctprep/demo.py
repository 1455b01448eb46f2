"""``ctprep demo``: phantom LiTS and KiTS19 downloads, converted, summarised and previewed.

Nothing is downloaded: the raw data are fabricated in the real layouts
(ctprep.phantom), in several orientations, so the demo also shows that every
orientation lands on the same canonical grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctprep.convert import ConversionReport, ConvertConfig, convert_dataset
from ctprep.info import StoreInfo, store_info
from ctprep.phantom import write_kits19_case, write_lits_case
from ctprep.preview import write_preview
from ctprep.store import SliceStore


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    reports: dict[str, ConversionReport]
    infos: dict[str, StoreInfo]
    previews: list[Path]


def make_demo_inputs(out_dir: Path) -> dict[str, Path]:
    """Write the phantom downloads: 3 LiTS volumes (two batches, three orientations) and 2 KiTS19 cases."""
    lits, kits = out_dir / "raw" / "lits", out_dir / "raw" / "kits19"
    write_lits_case(lits / "Training Batch 1", 0, axcodes=("R", "A", "S"))
    write_lits_case(lits / "Training Batch 1", 1, axcodes=("L", "P", "S"), gz=True)
    write_lits_case(lits / "Training Batch 2", 2, axcodes=("R", "P", "I"), shape=(48, 128, 128))
    for number in (0, 1):
        write_kits19_case(kits, number)
    return {"lits": lits, "kits19": kits}


def run_demo(out_dir: str | Path, workers: int = 1, progress: bool = True) -> DemoResult:
    out_dir = Path(out_dir)
    inputs = make_demo_inputs(out_dir)
    reports, infos, previews = {}, {}, []
    for source, folder in inputs.items():
        store_path = out_dir / f"{source}.zarr"
        config = ConvertConfig(source=source, input_dir=str(folder), output=str(store_path),
                               workers=workers, overwrite=True)
        reports[source] = convert_dataset(config, progress=progress, created_by=f"ctprep demo {out_dir}")
        infos[source] = store_info(store_path)
        store = SliceStore.open(store_path)
        case_id = store.case_ids()[0]
        previews.append(write_preview(store_path, case_id, out_dir / f"{source}_{case_id}.png"))
    return DemoResult(reports=reports, infos=infos, previews=previews)
