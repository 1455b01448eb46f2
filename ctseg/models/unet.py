"""``unet``: the U-Net baseline with the loss study of the CTumorGAN paper.

Network: the classic U-Net (two 3x3 conv-BN-ReLU per level, max-pooling down, 2x2
transposed convolutions up, skips by concatenation, 1x1 convolution, sigmoid), widths
``features`` (64 ... 1024 by default).

Loss (``model_options.loss``), as compared for the U-Net in the CTumorGAN paper:
``mae`` (L1), ``mse`` (L2), ``weighted_ce`` (binary cross-entropy with foreground weight
``pos_weight``, or the batch's background/foreground ratio when null), ``dice``
(1 - soft Dice), ``mse_dice`` (loss_weights.mse * MSE + loss_weights.dice * (1 - Dice)).

``prior_checkpoint`` (a trained ``softgan``/``casgan`` run): its soft mask is computed
for every input and added as an extra input channel (Wang et al.'s CE-Net++ experiment;
ctseg.models.prior), the prior frozen and saved inside ``net``.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from ctseg.models.base import SegModel, StepContext, scalar
from ctseg.models.blocks import PoolUNet
from ctseg.models.losses import STUDY_LOSSES, soft_dice, study_loss
from ctseg.models.registry import register



@register("unet")
class UNet(SegModel):
    options_defaults = {"features": [64, 128, 256, 512, 1024], "norm": "batch", "loss": "mse_dice",
                        "pos_weight": None, "dropout": 0.0, "prior_checkpoint": None}

    def build(self):
        if self.options["loss"] not in STUDY_LOSSES:
            from ctseg.errors import ConfigError

            raise ConfigError(f"unet: model_options.loss must be one of {STUDY_LOSSES}, found {self.options['loss']!r}")
        prior = None
        if self.options["prior_checkpoint"]:  # a trained softgan's mask as an extra input channel (ctseg.models.prior)
            from ctseg.models.prior import load_prior

            prior = load_prior(self.pretrained, self.options["prior_checkpoint"], self.in_channels, self.config)
        extra = prior.out_channels if prior is not None else 0
        net = PoolUNet(self.in_channels + extra, self.out_channels, features=self.options["features"],
                       norm=self.options["norm"], dropout=float(self.options["dropout"]))
        if prior is not None:
            from ctseg.models.prior import WithPrior

            net = WithPrior(prior, net)
        return {"net": net}

    @classmethod
    def defaults(cls) -> dict:
        return {**super().defaults(),
                # lr 2e-3 (was 1e-4): measured on whole slices of a real CT (issue 13), 1e-4 had learnt nothing
                # in 150 steps (Dice 0), 2e-3 gave 0.61 (150 steps) and 0.85 (300 steps); the paper preset keeps 2e-4
                "optimizers": {"net": {"name": "adam", "lr": 2e-3, "betas": [0.9, 0.999]}},
                "loss_weights": {"mse": 1.0, "dice": 1.0}}

    @classmethod
    def paper_preset(cls) -> dict:
        # The CTumorGAN paper trains its baselines like its generator: Adam beta1 0.5, lr 2e-4, batch 1.
        return {"batch_size": 1, "epochs": 300, "optimizers": {"net": {"name": "adam", "lr": 2e-4,
                                                                        "betas": [0.5, 0.999]}}}

    def loss(self, pred: torch.Tensor, target: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        weight = self.options["pos_weight"]
        mixed = {"mse_weight": ctx.weight("mse"), "dice_weight": ctx.weight("dice")} if self.options["loss"] == "mse_dice" else {}
        return study_loss(self.options["loss"], pred, target, pos_weight=None if weight is None else float(weight),
                          **mixed)

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        image, target = batch["image"], batch["target"]
        with ctx.amp.autocast():
            pred = self.net("net")(image)
        pred = pred.float()
        loss = self.loss(pred, target, ctx)
        ctx.update("net", loss)
        return {"loss": scalar(loss), "dice": scalar(soft_dice(pred.detach(), target))}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.nets["net"](image).float()
