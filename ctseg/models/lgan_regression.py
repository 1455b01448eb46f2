"""``lgan-regression``: LGAN (Tan, Jing, Huo, Tian and Akin, "LGAN: Lung segmentation in CT
scans using generative adversarial network", Computerized Medical Imaging and Graphics 87,
2021; arXiv:1901.03473), with the regression critic.

Critic ``d`` (regression): two branches on (prediction, truth), concatenated, one number
estimating the (negative) EM distance between them. By default the critic is anchored on
the pair a perfect prediction gives: L_D = D(pred, truth) - D(truth, truth)
(``anchor: false``: the literal L_D = D(pred, truth), only sensible with weight clipping);
see ctseg.models.lgan for this reading of the signs.

Generator ``g`` (the paper's U-Net), the WGAN losses, the Lipschitz constraint, the critic
schedule (D then G in ``train_step``) and the presets: :mod:`ctseg.models.lgan`.
"""

from __future__ import annotations

from ctseg.models.lgan import LGAN
from ctseg.models.registry import register


@register("lgan-regression")
class LGANRegression(LGAN):
    design = "regression"
    options_defaults = {**LGAN.options_defaults, "anchor": True}

    def anchored(self) -> bool:
        return bool(self.options["anchor"])
