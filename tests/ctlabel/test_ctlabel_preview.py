"""ctlabel.preview: a grid of lesion tiles with RECIST axes, trimap, soft mask and outlines."""

from __future__ import annotations

import numpy as np
import pytest

from ctlabel.label import LabelConfig, label_store
from ctlabel.preview import BAR, CAPTION, PANEL, TITLE, render_lesion_preview, write_lesion_preview
from ctlabel.trimap import recist_from_mask
from ctprep.store import SliceStore

SPACING = (2.0, 0.8, 0.8)


@pytest.fixture
def labelled(tmp_path, lk):
    """Four lesions over two slices, RECIST annotations, soft masks from RECIST."""
    store = lk.new_store(tmp_path / "p.zarr")
    volume = np.full((2, 96, 96), -800.0)
    mask = np.zeros((2, 96, 96), np.uint8)
    annotations = []
    for z, centres in ((0, [(25, 25), (70, 30)]), (1, [(30, 70), (68, 66)])):
        for k, centre in enumerate(centres):
            hu, truth = lk.lesion_slice(shape=(96, 96), centre=centre, radii=(11, 8), angle=0.4 * k)
            volume[z] = np.maximum(volume[z], hu)
            mask[z] |= truth
            annotations.append(lk.recist_annotation(f"z{z}-{k}", z, recist_from_mask(truth, SPACING[1:]),
                                                    SPACING[1:]))
    lk.write_case(store, "c", volume.astype(np.int16), {"tumour": mask}, SPACING,
                  annotations={"lesions": annotations})
    label_store(LabelConfig(store=str(tmp_path / "p.zarr"), source="recist"), progress=False)
    return tmp_path / "p.zarr"


def test_grid_of_tiles(labelled):
    image = render_lesion_preview(SliceStore.open(labelled), "c")
    tile_h, tile_w = CAPTION + TITLE + PANEL, 3 * (PANEL + 2) + BAR + 14
    assert image.shape == (2 * (tile_h + 4), 2 * (tile_w + 4), 3)  # 4 lesions: 2 x 2
    top = CAPTION + TITLE  # the tile's caption, then the panels' titles
    first = image[top:top + PANEL, :PANEL]
    red = (first[..., 2] > 150) & (first[..., 1] < 80) & (first[..., 0] < 80)
    green = (first[..., 1] > 150) & (first[..., 2] < 80) & (first[..., 0] < 80)
    assert red.sum() > 20  # the RECIST long axis
    assert green.sum() > 20  # the binarised soft mask's outline
    trimap_panel = image[top:top + PANEL, PANEL + 2:2 * PANEL + 2]
    assert {0, 128, 255} <= set(np.unique(trimap_panel))
    titles = image[CAPTION:top, :PANEL]
    assert (titles > 200).sum() > 20  # "CT + RECIST" written above the first panel
    bar = image[top + 10:top + PANEL - 10, 3 * (PANEL + 2) + 4]
    assert len({tuple(p) for p in bar}) > 20  # alpha's colour bar: a ramp of colours
    one = render_lesion_preview(SliceStore.open(labelled), "c", max_lesions=1)
    assert one.shape == (tile_h + 4, tile_w + 4, 3)


def test_write_and_errors(labelled, tmp_path):
    out = write_lesion_preview(labelled, "c", tmp_path / "x" / "c.png", name="soft_recist")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no trimap_nope"):
        write_lesion_preview(labelled, "c", tmp_path / "y.png", name="nope")
    with pytest.raises(ValueError, match="channel 5 out of range"):
        write_lesion_preview(labelled, "c", tmp_path / "y.png", channel=5)
    label_store(LabelConfig(store=str(labelled), source="mask", matting=False), progress=False)
    with pytest.raises(ValueError, match="several: recist, tumour"):
        write_lesion_preview(labelled, "c", tmp_path / "y.png")
    trimap_only = render_lesion_preview(SliceStore.open(labelled), "c", name="tumour")
    assert trimap_only.shape[0] > PANEL
