"""The five LGAN designs from their defaults on whole slices of a real CT (issue 13): the other half of
test_whole_slices.py's model test, in its own file so that pytest-xdist runs both halves at once."""

from __future__ import annotations

import pytest

from whole_ct import SEGMENTERS, meets_the_bar, train_and_score


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~35-60 s each on an idle 2-core machine; several times that under load
@pytest.mark.parametrize("model", [m for m in SEGMENTERS if m.startswith("lgan")])
def test_each_lgan_from_its_defaults_segments_whole_slices_of_a_real_ct(whole_ct_store, tmp_path, model):
    """`ctseg train --model lgan-X` defaults (tiny network, 300 steps), then `ctseg predict` defaults:
    whole-case Dice >= 0.6 with precision >= 0.5."""
    scores = train_and_score(model, whole_ct_store, tmp_path / model)
    assert meets_the_bar(scores), scores
