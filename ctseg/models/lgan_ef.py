"""``lgan-ef``: LGAN (Tan, Jing, Huo, Tian and Akin, "LGAN: Lung segmentation in CT
scans using generative adversarial network", Computerized Medical Imaging and Graphics 87,
2021; arXiv:1901.03473), with the ef critic.

Critic ``d`` (early fusion): the CT channels and the mask as channels of one input, then
the critic layers of ``lgan-basic``.

Generator ``g`` (the paper's U-Net), the WGAN losses, the Lipschitz constraint, the critic
schedule (D then G in ``train_step``) and the presets: :mod:`ctseg.models.lgan`.
"""

from __future__ import annotations

from ctseg.models.lgan import LGAN
from ctseg.models.registry import register


@register("lgan-ef")
class LGANEarlyFusion(LGAN):
    design = "ef"
