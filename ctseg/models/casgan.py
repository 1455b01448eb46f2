"""``casgan``: the cascade of Wang, Xu, Xu, Meng, Xiao, Peng and Zhang, "Accurate 2D soft segmentation
of medical image via SoftGAN network", arXiv:2007.14556, 2020 (CasGAN): a trained ``srgan``
super-resolves the lesion crop x4, ``softgan``'s segmentor makes its soft mask.

Networks and losses are SoftGAN's (ctseg.models.softgan: segmentor ``g``, a strided
encoder-decoder without pooling, on (super-resolved crop, bilinear up-sampling); pixel
discriminator ``d``; generator mse * MSE + l1 * L1 + adversarial * BCE, discriminator BCE on
real and detached fake pairs, trained first each step), with the SR network inside ``g``.

A trained ``srgan`` run (``model_options.sr_checkpoint``) feeds the segmentor.
The crop (``size``) is super-resolved by the SR network's ``scale`` (x4) and also
bilinearly up-sampled; the segmentor works at ``scale * size``; the soft target is
bilinearly up-sampled to that grid (``loss_resolution: high``, the paper's setting of
masks on the super-resolved crop) or the prediction is averaged back to the stored grid
(``native``). ``predict`` returns the mask averaged over each ``scale`` x ``scale`` block,
i.e. on the stored grid, so validation, ``ctseg predict`` and ``ctseg evaluate`` work
unchanged. The SR network is frozen (``freeze_sr: true``, eval mode, no gradients) by
default; with ``freeze_sr: false`` it is fine-tuned end to end by the segmentor's loss
with the segmentor's optimiser. Its weights are part of ``g`` and so of every casgan
checkpoint; the srgan checkpoint is read when the model is built (its architecture).
Whole-slice prediction costs ``scale``^2 times a crop's: casgan is meant for lesion crops.


Paper preset: SoftGAN's on 64 x 64 crops (x4 = the paper's 256 x 256 segmentor input).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctseg.errors import ConfigError
from ctseg.models.registry import register
from ctseg.models.softgan import SoftGAN

LOSS_RESOLUTIONS = ("high", "native")


@register("casgan")
class CasGAN(SoftGAN):
    options_defaults = {**SoftGAN.options_defaults, "sr_checkpoint": None, "freeze_sr": True,
                        "loss_resolution": "high"}
    preset_scale = 4

    def sr_stage(self) -> tuple[nn.Module, int]:
        path = self.options["sr_checkpoint"]
        if not path:
            raise ConfigError("casgan: model_options.sr_checkpoint is required (a trained srgan run's last.pt or "
                              "best.pt)")
        if self.options["loss_resolution"] not in LOSS_RESOLUTIONS:
            raise ConfigError(f"casgan: model_options.loss_resolution must be one of {LOSS_RESOLUTIONS}, "
                              f"found {self.options['loss_resolution']!r}")
        sr_model = self.pretrained(path, models=("srgan",), role="casgan sr_checkpoint")
        mine, theirs = self.config, sr_model.config
        if sr_model.in_channels != self.in_channels or (mine.channels, mine.context) != (theirs.channels,
                                                                                         theirs.context):
            raise ConfigError(f"{path}: the srgan run takes {sr_model.in_channels} input channels (channels "
                              f"{theirs.channels}, context {theirs.context}); this casgan run gives "
                              f"{self.in_channels} (channels {mine.channels}, context {mine.context})")
        return sr_model.nets["g"], sr_model.scale

    def loss_pair(self, fake: torch.Tensor, truth: torch.Tensor, target: torch.Tensor):
        if self.options["loss_resolution"] == "native":
            return F.avg_pool2d(fake, self.scale), target
        return fake, truth
