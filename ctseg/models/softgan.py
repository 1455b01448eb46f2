"""``softgan``: soft lesion masks (Wang, Xu, Xu, Meng, Xiao, Peng and Zhang, "Accurate 2D
soft segmentation of medical image via SoftGAN network", arXiv:2007.14556, 2020).

The paper's cascade (CasGAN) super-resolves a lesion crop x4 with an SRGAN (``srgan``),
then segments it with SoftGAN, a pix2pix-style conditional GAN whose output is a
**soft mask** (matting-like alpha in [0, 1]) learned from soft ground truth (here
ctlabel's ``soft_<x>`` masks made by matting, or its ``softened_<x>`` = max(soft, binary)).

Segmentor ``g`` (:class:`SoftNet`): input = the super-resolved crop concatenated with the
bilinear up-sampling of the original crop (2C channels); an encoder-decoder **without
pooling**: 4x4 stride-2 convolutions down, 4x4 stride-2 transposed convolutions up,
U-Net skips, leaky ReLU (slope 0.2) in both halves, batch norm, sigmoid output
(blocks.StridedUNet; ``features`` per level, 6 levels by default; the paper preset uses
pix2pix's U-Net-256, 8 levels, on 256 x 256 crops: softgan ``size`` 256, casgan 64 x4).

Discriminator ``d``: pixel-wise (pix2pix's 1x1 "PixelGAN", blocks.PixelDiscriminator) on
(segmentor input, mask): a real/fake logit per pixel.

Losses (``loss_weights``): generator = mse * MSE(S, T) + l1 * |S - T|_1 (lambda = 100,
pix2pix's) + adversarial * BCE(D(x, S), real); discriminator = (BCE(D(x, T), real) +
BCE(D(x, S), fake)) / 2 on detached S, trained first each step.

``softgan`` alone (no SR network): the "super-resolved" half of the input is the image
itself at the model's resolution (scale 1), so the input is the crop twice; the model
and the discriminator are the same as in the cascade, so a softgan run shows what the
segmentor does without super-resolution.

``casgan`` (ctseg.models.casgan) is this model fed by a trained ``srgan`` run.

Evaluation (ctseg.score.evaluate_soft): binarised at 0.5 (the paper's 128/255) for Dice, and
soft metrics against the soft truth: MSE, SAD (sum of absolute differences, in pixels;
matting papers often print SAD / 1000) and AUC (ctseg.metrics.auc, truth >= 0.5).

Ambiguities resolved: the paper's segmentor is pix2pix's U-Net generator with leaky ReLU
"and no pooling"; we use leaky ReLU in the decoder as well. The paper's Adam lr 2e-3 is
10x pix2pix's 2e-4: it is the paper preset (with linear decay to 0 after 35 epochs, over
35 more: pix2pix's schedule shape; the paper gives no total), the default is 2e-4.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctseg.errors import ConfigError
from ctseg.models.base import SegModel, StepContext, scalar
from ctseg.models.blocks import PixelDiscriminator, StridedUNet, init_weights
from ctseg.models.losses import gan_loss
from ctseg.models.registry import register

PIX2PIX_256 = (64, 128, 256, 512, 512, 512, 512, 512)  # pix2pix's U-Net-256: 8 levels down to 1x1


class SoftNet(nn.Module):
    """(super-resolution, bilinear up-sampling) of a crop -> the segmentor's soft mask.

    ``forward(image)`` returns (segmentor input (B, 2C, sH, sW), mask (B, labels, sH, sW)).
    Without ``sr`` the scale is 1 and both halves are the image itself (softgan alone).
    """

    def __init__(self, seg: StridedUNet, sr: nn.Module | None = None, scale: int = 1, freeze_sr: bool = True):
        super().__init__()
        self.seg, self.sr, self.scale, self.freeze_sr = seg, sr, scale, freeze_sr
        if sr is not None and freeze_sr:
            sr.requires_grad_(False)
        self.size_multiple = max(1, seg.size_multiple // scale)

    def train(self, mode: bool = True) -> "SoftNet":
        super().train(mode)
        if self.sr is not None and self.freeze_sr:
            self.sr.eval()  # a frozen stage keeps its batch-norm statistics
        return self

    def inputs(self, image: torch.Tensor) -> torch.Tensor:
        if self.sr is None:
            return torch.cat([image, image], dim=1)
        if self.freeze_sr:
            with torch.no_grad():
                sr = self.sr(image)
        else:
            sr = self.sr(image)
        up = F.interpolate(image, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return torch.cat([sr.clamp(0, 1).to(up.dtype), up], dim=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs(image)
        return x, self.seg(x)


@register("softgan")
class SoftGAN(SegModel):
    options_defaults = {"features": [64, 128, 256, 512, 512, 512], "norm": "batch", "d_features": 64,
                        "gan_loss": "bce"}
    preset_scale = 1  # the paper segments 256 x 256 crops: softgan's size 256, casgan's 64 (x4)

    # ---- networks ------------------------------------------------------------------------------------
    def build(self):
        sr, scale = self.sr_stage()
        self.scale = scale
        features = list(self.options["features"])
        seg = StridedUNet(2 * self.in_channels, self.out_channels, features=features, up="deconv",
                          norm=self.options["norm"], down_act="lrelu", up_act="lrelu", out_act="sigmoid")
        if (self.config.size * scale) % seg.size_multiple:
            raise ConfigError(f"{self.name}: size {self.config.size} (x{scale} = {self.config.size * scale}) must be a "
                              f"multiple of {seg.size_multiple} / {scale} for {len(features)} levels of features")
        g = SoftNet(init_weights(seg), sr, scale, bool(self.options.get("freeze_sr", True)))
        d = PixelDiscriminator(2 * self.in_channels + self.out_channels, features=int(self.options["d_features"]),
                               norm=self.options["norm"])
        return {"g": g, "d": init_weights(d)}

    def sr_stage(self) -> tuple[nn.Module | None, int]:
        """The super-resolution network and its scale (softgan alone: none, 1)."""
        return None, 1

    @classmethod
    def defaults(cls) -> dict:
        adam = {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]}
        return {**super().defaults(), "optimizers": {"g": adam, "d": adam},
                "loss_weights": {"mse": 1.0, "l1": 100.0, "adversarial": 1.0}}

    @classmethod
    def paper_preset(cls) -> dict:
        adam = {"name": "adam", "lr": 2e-3, "betas": [0.5, 0.999]}
        return {"threshold": 0.5, "size": 256 // cls.preset_scale, "optimizers": {"g": adam, "d": adam},
                "model_options": {"features": list(PIX2PIX_256)},
                "phases": [{"epochs": 35}, {"epochs": 35, "decay": "linear"}]}

    # ---- the step ------------------------------------------------------------------------------------
    def target_at(self, target: torch.Tensor) -> torch.Tensor:
        """The soft target on the segmentor's grid (bilinear, stays in [0, 1])."""
        if self.scale == 1:
            return target
        return F.interpolate(target, scale_factor=self.scale, mode="bilinear", align_corners=False)

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        image, target = batch["image"], batch["target"]
        kind = self.options["gan_loss"]
        with ctx.amp.autocast():
            x, fake = self.net("g")(image)
        x, fake = x.float(), fake.float()
        truth = self.target_at(target)
        logs: dict[str, torch.Tensor] = {}

        # Discriminator on (x, truth) and (x, detached prediction).
        if ctx.updates("d"):
            x_d = x.detach()
            with ctx.amp.autocast():
                logits = self.net("d")(torch.cat([torch.cat([x_d, truth], 1), torch.cat([x_d, fake.detach()], 1)]))
            real, fake_logits = logits.float().split(image.shape[0])
            loss_d = (gan_loss(real, True, kind) + gan_loss(fake_logits, False, kind)) / 2
            ctx.update("d", loss_d)
            logs.update(loss_d=scalar(loss_d), d_real=scalar(torch.sigmoid(real).mean()),
                        d_fake=scalar(torch.sigmoid(fake_logits).mean()))

        # Segmentor with the discriminator frozen.
        pred, want = self.loss_pair(fake, truth, target)
        mse, l1 = F.mse_loss(pred, want), F.l1_loss(pred, want)
        loss_g = ctx.weight("mse") * mse + ctx.weight("l1") * l1
        adv_weight = ctx.weight("adversarial")
        if adv_weight:
            with self.frozen("d") as d, ctx.amp.autocast():
                adv = gan_loss(d(torch.cat([x, fake], 1)).float(), True, kind)
            loss_g = loss_g + adv_weight * adv
            logs["g_adv"] = scalar(adv)
        ctx.update("g", loss_g)
        logs.update(loss_g=scalar(loss_g), g_mse=scalar(mse), g_l1=scalar(l1))
        return logs

    def loss_pair(self, fake: torch.Tensor, truth: torch.Tensor, target: torch.Tensor):
        """(prediction, truth) the pixel losses compare: on the segmentor's grid (softgan)."""
        return fake, truth

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        _, mask = self.nets["g"](image)
        mask = mask.float()
        if self.scale > 1:  # back on the stored grid: the mean of each scale x scale block
            mask = F.avg_pool2d(mask, self.scale)
        return mask.clamp(0, 1)
