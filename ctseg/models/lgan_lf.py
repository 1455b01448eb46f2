"""``lgan-lf``: LGAN (Tan, Jing, Huo, Tian and Akin, "LGAN: Lung segmentation in CT
scans using generative adversarial network", Computerized Medical Imaging and Graphics 87,
2021; arXiv:1901.03473), with the lf critic.

Critic ``d`` (late fusion): a CT branch and a mask branch of convolutions, their features
concatenated before the common layers (``branch_layers`` convolutions per branch, default
all of them: fusion just before the fully connected layers).

Generator ``g`` (the paper's U-Net), the WGAN losses, the Lipschitz constraint, the critic
schedule (D then G in ``train_step``) and the presets: :mod:`ctseg.models.lgan`.
"""

from __future__ import annotations

from ctseg.models.lgan import LGAN
from ctseg.models.registry import register


@register("lgan-lf")
class LGANLateFusion(LGAN):
    design = "lf"
