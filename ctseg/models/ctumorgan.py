"""``ctumorgan``: CTumorGAN (Han et al., "CTumorGAN: a unified framework for automatic computed
tomography tumor segmentation", Eur J Nucl Med Mol Imaging 2020).

Generator ``g``: an encoder-decoder of 4x4 stride-2 convolutions (no pooling) with U-Net
skips, leaky ReLU, and a tanh output mapped to [0, 1] ((tanh + 1) / 2). The 100-d noise
vector z ~ N(0, I) is tiled over a feature map's grid and concatenated to it as 100 extra
channels (a learned projection of z is exactly the next convolution's weights on those
channels). ``z_at: decoder`` (the paper preset) feeds z to **every** deconvolution layer
of the decoder, deconv8 (the bottleneck) to deconv1, as Sec. 2.2.4 says: "the input image
c and 100-d noise vector z are respectively forwarded to convolutional layers and
deconvolutional layers"; ``z_at: bottleneck`` (the default, and every checkpoint written
before the option) feeds it to deconv8 only. Prediction uses z = 0, the noise's mean, so
that outputs are deterministic (``predict_noise: sample`` draws z instead).

Discriminator ``d``: pix2pix's 70x70 PatchGAN on (CT, mask) pairs. Real pairs are
(CT, truth); fakes are (CT, G(CT)) on detached outputs; and, as in the paper, the
discriminator also learns **(CT, wrong mask)** pairs as fake: truths of other slices
of the batch (the batch rolled by one), or, when the batch has one slice (the paper's
batch size 1), a truth from a small bank of recent batches (other cases). A wrong mask
too similar to the slice's own truth (Dice >= 0.5, e.g. two empty masks) is not used.
D loss = (bce(real, 1) + (bce(fake, 0) + bce(wrong, 0)) / 2) / 2 (GAN-CLS form).

Generator loss: alpha * bce(D(CT, G(CT)), 1) + beta * MSE(G, truth) + gamma * (1 - Dice)
("shape context"), weights from ``loss_weights`` and each phase. The defaults weigh
(alpha, beta, gamma) = (0.01, 10, 10): on a lesion of a few dozen pixels the patch
discriminator's loss is ~100 times the MSE, and at alpha 1 it drowned the supervised
terms (measured, issue 13); the paper's own second phase weighs it 1 against Dice's 100.
The paper's two phases (``--preset paper``): Adam beta1 0.5, batch 1, lr 2e-4 for 200 epochs with (alpha, beta,
gamma) = (0, 1, 0), then lr 5e-5 for 100 epochs with (1, 0, 100); the paper binarises
at 0.1 (``threshold``; 0.5 elsewhere). The paper trains on tumour slices only (Sec. 2.1:
"we only focus on slices that have tumor"), whole slices (512 x 512), no augmentation.

The Table 2 loss study (Sec. 3.1: MAE, MSE, weighted cross entropy, Dice, MSE+Dice "on our
proposed Generator networks"): ``g_loss`` other than ``gan`` (one of ctseg.models.losses'
STUDY_LOSSES, the same names as unet's ``loss``) trains ``g`` with that loss only (the
adversarial weight 0, ``d`` not trained, alpha/beta/gamma unused). The ``unet`` model stays the plain baseline.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctseg.errors import ConfigError
from ctseg.models.base import SegModel, StepContext, scalar
from ctseg.models.blocks import PatchDiscriminator, StridedUNet, init_weights
from ctseg.models.losses import STUDY_LOSSES, dice_loss, gan_loss, soft_dice, study_loss
from ctseg.models.registry import register

BANK_SIZE = 8  # recent truths kept for wrong-mask pairs when the batch has a single slice
Z_AT = ("bottleneck", "decoder")
G_LOSSES = ("gan", *STUDY_LOSSES)  # gan: Eq. (7); the rest: Table 2 on G alone


class NoiseBottleneck(nn.Module):
    """Concatenates z (B, dim), tiled over the grid, to the bottleneck features (B, C, h, w)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, features: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = features.shape
        if z is None:
            z = features.new_zeros(b, self.dim)
        return torch.cat([features, z.to(features.dtype)[:, :, None, None].expand(b, self.dim, h, w)], dim=1)


@register("ctumorgan")
class CTumorGAN(SegModel):
    options_defaults = {"features": [64, 128, 256, 512, 512, 512, 512, 512], "z_dim": 100, "norm": "batch",
                        "d_features": 64, "d_layers": 3, "gan_loss": "bce", "wrong_pairs": True,
                        "predict_noise": "zero", "z_at": "bottleneck", "g_loss": "gan"}

    def build(self):
        z_dim = int(self.options["z_dim"])
        for key, allowed in (("z_at", Z_AT), ("g_loss", G_LOSSES)):
            if self.options[key] not in allowed:
                raise ConfigError(f"model_options.{key} must be one of {allowed}, found {self.options[key]!r}")
        noise = {"bottleneck": {"bottleneck": NoiseBottleneck(z_dim), "bottleneck_extra": z_dim},
                 "decoder": {"decoder_hook": NoiseBottleneck(z_dim), "decoder_extra": z_dim}}[self.options["z_at"]]
        g = StridedUNet(self.in_channels, self.out_channels, features=self.options["features"], up="deconv",
                        norm=self.options["norm"], down_act="lrelu", up_act="lrelu", out_act="tanh01", **noise)
        d = PatchDiscriminator(self.in_channels + self.out_channels, features=int(self.options["d_features"]),
                               n_layers=int(self.options["d_layers"]), norm=self.options["norm"])
        self.bank: torch.Tensor | None = None
        return {"g": init_weights(g), "d": init_weights(d)}

    @classmethod
    def defaults(cls) -> dict:
        adam = {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]}
        # alpha 0.01 (was 1): measured on whole slices of a real CT (issue 13, docs/models.md "Whole-slice
        # results"), with the adversarial term at 1 G learnt nothing in 300 steps (Dice 0; 0.1: 0.48, 0.01: 0.79)
        return {**super().defaults(), "optimizers": {"g": adam, "d": adam},
                "loss_weights": {"alpha": 0.01, "beta": 10.0, "gamma": 10.0}}

    @classmethod
    def paper_preset(cls) -> dict:
        adam = {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]}
        # Sec. 2.1: tumour slices only, whole 512 x 512 slices; Sec. 2.3.2: batch 1; no augmentation is described.
        return {"batch_size": 1, "threshold": 0.1, "optimizers": {"g": adam, "d": adam},
                "sampling": "lesion_only", "crop": "resize", "size": 512, "augment": {"enabled": False},
                "model_options": {"z_at": "decoder"},
                "phases": [{"epochs": 200, "lr": {"g": 2e-4, "d": 2e-4},
                            "loss_weights": {"alpha": 0.0, "beta": 1.0, "gamma": 0.0}},
                           {"epochs": 100, "lr": {"g": 5e-5, "d": 5e-5},
                            "loss_weights": {"alpha": 1.0, "beta": 0.0, "gamma": 100.0}}]}

    # ---- wrong-mask pairs -------------------------------------------------------------------------
    def wrong_masks(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks of other slices for each sample, and a 0/1 weight saying which are really different."""
        if target.shape[0] > 1:
            wrong = target.roll(1, dims=0)
        elif self.bank is not None and self.bank.shape[1:] == target.shape[1:]:
            wrong = self.bank[:1].to(target.device)
        else:
            return target, torch.zeros(target.shape[0], device=target.device)
        dims = tuple(range(1, target.ndim))
        overlap = (2 * (wrong * target).sum(dims) + 1) / (wrong.sum(dims) + target.sum(dims) + 1)
        return wrong, (overlap < 0.5).float()

    def remember(self, target: torch.Tensor) -> None:
        """Keep the batch's truths (newest first) for the next single-slice batches."""
        recent = target.detach()[:BANK_SIZE]
        if self.bank is None or self.bank.shape[1:] != recent.shape[1:]:
            self.bank = recent.clone()
        else:
            self.bank = torch.cat([recent, self.bank.to(recent.device)])[:BANK_SIZE]

    # ---- the step ------------------------------------------------------------------------------------
    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        image, target = batch["image"], batch["target"]
        kind = self.options["gan_loss"]
        z = torch.randn(image.shape[0], int(self.options["z_dim"]), device=image.device)
        with ctx.amp.autocast():
            fake = self.net("g")(image, z=z)
        fake = fake.float()
        if self.options["g_loss"] != "gan":
            return self.loss_study_step(fake, target, ctx)

        # Discriminator on real, detached fake and wrong-mask pairs.
        wrong, valid = self.wrong_masks(target) if self.options["wrong_pairs"] else (target, target.new_zeros(0))
        use_wrong = bool(valid.sum() > 0)
        pairs = [torch.cat([image, target], 1), torch.cat([image, fake.detach()], 1)]
        if use_wrong:
            pairs.append(torch.cat([image, wrong], 1))
        with ctx.amp.autocast():
            logits = self.net("d")(torch.cat(pairs, 0)).float()
        parts = logits.split(image.shape[0])
        loss_real, loss_fake = gan_loss(parts[0], True, kind), gan_loss(parts[1], False, kind)
        loss_d = loss_real + loss_fake
        if use_wrong:
            per_sample = F.binary_cross_entropy_with_logits(parts[2], torch.zeros_like(parts[2]), reduction="none")
            loss_wrong = (per_sample.mean(dim=(1, 2, 3)) * valid).sum() / valid.sum()
            loss_d = loss_real + (loss_fake + loss_wrong) / 2
        loss_d = loss_d / 2
        ctx.update("d", loss_d)

        # Generator with the discriminator frozen.
        alpha, beta, gamma = ctx.weight("alpha"), ctx.weight("beta"), ctx.weight("gamma")
        mse, dice = F.mse_loss(fake, target), dice_loss(fake, target)
        loss_g = beta * mse + gamma * dice
        adv = torch.zeros((), device=image.device)
        if alpha:
            with self.frozen("d") as d, ctx.amp.autocast():
                adv = gan_loss(d(torch.cat([image, fake], 1)).float(), True, kind)
            loss_g = loss_g + alpha * adv
        ctx.update("g", loss_g)
        self.remember(target)
        return {"loss_d": scalar(loss_d), "loss_g": scalar(loss_g), "g_adv": scalar(adv), "g_mse": scalar(mse),
                "g_dice": scalar(soft_dice(fake.detach(), target)),
                "d_real": scalar(torch.sigmoid(parts[0]).mean()), "d_fake": scalar(torch.sigmoid(parts[1]).mean())}

    def loss_study_step(self, fake: torch.Tensor, target: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Table 2: the generator alone with one of the compared losses (no adversarial term)."""
        loss = study_loss(self.options["g_loss"], fake, target)
        ctx.update("g", loss)
        return {"loss_g": scalar(loss), "g_mse": scalar(F.mse_loss(fake.detach(), target)),
                "g_dice": scalar(soft_dice(fake.detach(), target))}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        z = None
        if self.options["predict_noise"] == "sample":
            z = torch.randn(image.shape[0], int(self.options["z_dim"]), device=image.device)
        return self.nets["g"](image, z=z).float()

    def extra_state(self) -> dict:
        return {"bank": self.bank.cpu() if self.bank is not None else None}

    def load_extra_state(self, state: Mapping) -> None:
        bank = state.get("bank")
        self.bank = bank.to(self.device) if bank is not None else None

