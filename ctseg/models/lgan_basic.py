"""``lgan-basic``: LGAN (Tan, Jing, Huo, Tian and Akin, "LGAN: Lung segmentation in CT
scans using generative adversarial network", Computerized Medical Imaging and Graphics 87,
2021; arXiv:1901.03473), with the basic critic.

Critic ``d``: on the predicted (or true) mask alone — 3x3 stride-2 convolutions with leaky
ReLU, adaptive pooling, FC 1024, leaky ReLU, FC 1.

Generator ``g`` (the paper's U-Net), the WGAN losses, the Lipschitz constraint, the critic
schedule (D then G in ``train_step``) and the presets: :mod:`ctseg.models.lgan`.
"""

from __future__ import annotations

from ctseg.models.lgan import LGAN
from ctseg.models.registry import register


@register("lgan-basic")
class LGANBasic(LGAN):
    design = "basic"
