"""``segan``: SegAN (Xue et al., "SegAN: Adversarial Network with Multi-scale L1 Loss for Medical
Image Segmentation", Neuroinformatics 2018).

Segmentor ``s``: encoder of 4x4 stride-2 convolutions 64-128-256-512 (BN, leaky ReLU),
decoder of x2 nearest-neighbour resize + 3x3 convolution (BN, ReLU) with skips by concatenation,
sigmoid output.

Critic ``c``: three down-sampling blocks (4x4 stride-2 convolution, BN except the first,
leaky ReLU), 64-128-256 channels. Its input is the CT masked by a label map: image *
prediction or image * truth (each image channel multiplied by the mask; with several
labels and one critic, the masked images of all labels side by side).

Multi-scale L1 loss: l(x, y) = mean over layers i of mean |f_i(x * S(x)) - f_i(x * y)|,
over the critic's input (i = 0) and each block's output. The critic **maximises** it
(loss_c = -l, on detached predictions; weights clipped to [-clip, clip] after each
step) and the segmentor **minimises** it (critic frozen); one step each, critic first.

Variants (``model_options.variant``), under the paper's names (Sec. 3.1, Fig. 2), for
several labels (``--target a,b,c``): ``S1-1C`` a separate SegAN per label: one single-label
segmentor (held together in network ``s``, whose loss is the sum of the per-label losses so
each one gets exactly its own SegAN's gradient; RMSProp is per parameter) and one critic
per label; ``S3-1C`` one segmentor with a label map per label, one critic on the masked
images of all labels side by side (default); ``S3-3C`` one segmentor, one critic per label
(networks ``c``, ``c1``, ``c2`` ...), the losses averaged (the paper's chosen model, its
preset); ``S3-3C-s0`` / ``S3-3C-s3`` the single-scale ablations: the loss from the critics'
input layer (layer 0) only, or their output layer (layer 3) only. With one label S3-1C and
S3-3C are the same model.

The segmentor may add ``dice_weight`` * (1 - soft Dice) to its loss. The paper trains it with
the multi-scale loss alone (the paper preset sets 0); the authors' released PyTorch code adds
the Dice term, and without it small lesions collapse to an all-background prediction (the
background pixels dominate the L1 terms and the sigmoid saturates), so the default is 1.

Paper preset: RMSProp lr 2e-5, batch 64, no Dice term, S3-3C (``--preset paper``; Sec. 2.2, 3.1).
The defaults train the segmentor at lr 1e-4 (the critic at the paper's 2e-5): with 2e-5 a
CPU-sized SegAN learnt nothing in 300 steps of whole-slice training (measured, issue 13).
"""

from __future__ import annotations

import contextlib
from typing import Mapping

import torch
import torch.nn as nn

from ctseg.errors import ConfigError
from ctseg.models.base import SegModel, StepContext, scalar
from ctseg.models.blocks import StridedUNet, conv_norm_act, init_weights
from ctseg.models.losses import dice_loss, soft_dice
from ctseg.models.registry import register

VARIANTS = ("S1-1C", "S3-1C", "S3-3C", "S3-3C-s0", "S3-3C-s3")
PER_LABEL_CRITICS = ("S1-1C", "S3-3C", "S3-3C-s0", "S3-3C-s3")
SCALES = {"S3-3C-s0": slice(0, 1), "S3-3C-s3": slice(-1, None)}  # the critic layers a variant's loss uses


class FeatureCritic(nn.Module):
    """Down-sampling blocks returning every layer's features, input included."""

    def __init__(self, in_ch: int, features=(64, 128, 256), norm: str = "batch"):
        super().__init__()
        blocks, prev = [], in_ch
        for i, width in enumerate(features):
            blocks.append(conv_norm_act(prev, width, 4, 2, 1, norm="none" if i == 0 else norm, act="lrelu"))
            prev = width
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


def masked(image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """image (B, C, H, W) times each mask channel (B, L, H, W) -> (B, L*C, H, W)."""
    return (masks[:, :, None] * image[:, None]).flatten(1, 2)


class PerLabelSegmentors(nn.Module):
    """S1-1C's segmentors: one single-label network per label, outputs side by side."""

    def __init__(self, make: "callable", labels: int):
        super().__init__()
        self.nets = nn.ModuleList([make() for _ in range(labels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(x) for net in self.nets], 1)


def multiscale_l1(fake: list[torch.Tensor], real: list[torch.Tensor], layers: slice = slice(None)) -> torch.Tensor:
    """Eq. 3: mean over the chosen critic layers of the mean |f_i(x * S(x)) - f_i(x * y)|."""
    pairs = list(zip(fake, real))[layers]
    return torch.stack([(f.float() - r.float()).abs().mean() for f, r in pairs]).mean()


@register("segan")
class SegAN(SegModel):
    options_defaults = {"variant": "S3-1C", "features": [64, 128, 256, 512], "critic_features": [64, 128, 256],
                        "norm": "batch", "clip": 0.01, "dice_weight": 1.0}

    def build(self):
        if self.options["variant"] not in VARIANTS:
            raise ConfigError(f"segan: model_options.variant must be one of {VARIANTS}, "
                              f"found {self.options['variant']!r}")
        def segmentor(labels: int) -> nn.Module:
            return StridedUNet(self.in_channels, labels, features=self.options["features"], up="resize",
                               norm=self.options["norm"], down_act="lrelu", up_act="relu", out_act="sigmoid")

        if self.options["variant"] == "S1-1C":
            s = PerLabelSegmentors(lambda: segmentor(1), self.out_channels)
        else:
            s = segmentor(self.out_channels)
        nets = {"s": init_weights(s)}
        per_label = self.options["variant"] in PER_LABEL_CRITICS
        critic_in = self.in_channels if per_label else self.in_channels * self.out_channels
        for name in self.critic_names(per_label):
            critic = init_weights(FeatureCritic(critic_in, self.options["critic_features"], self.options["norm"]))
            with torch.no_grad():  # start inside the clipping box the critic is kept in
                for p in critic.parameters():
                    p.clamp_(-float(self.options["clip"]), float(self.options["clip"]))
            nets[name] = critic
        return nets

    def critic_names(self, per_label: bool | None = None) -> list[str]:
        if per_label is None:
            per_label = self.options["variant"] in PER_LABEL_CRITICS
        return ["c"] + [f"c{i}" for i in range(1, self.out_channels)] if per_label else ["c"]

    def optimizers(self, config):
        # Every critic uses the optimiser configured for "c".
        from ctseg.models.base import build_optimizer

        for name in ("s", "c"):
            if name not in config.optimizers:
                raise ConfigError(f"segan: no optimizer configured for network {name!r}")
        return {name: build_optimizer(net.parameters(), config.optimizers["c" if name.startswith("c") else name])
                for name, net in self.nets.items() if name not in config.frozen}

    @classmethod
    def defaults(cls) -> dict:
        # The segmentor at lr 1e-4 (measured on whole slices of a real CT, issue 13, docs/models.md "Whole-slice
        # results": the paper's 2e-5 learnt nothing in 300 steps; 2e-4 collapsed to background with 2 seeds of 3)
        return {**super().defaults(), "optimizers": {"s": {"name": "rmsprop", "lr": 1e-4},
                                                     "c": {"name": "rmsprop", "lr": 2e-5}}}

    @classmethod
    def paper_preset(cls) -> dict:
        rms = {"name": "rmsprop", "lr": 2e-5}
        # Sec. 3.1: S3-3C is the model compared with the state of the art
        return {"batch_size": 64, "optimizers": {"s": rms, "c": rms},
                "model_options": {"dice_weight": 0.0, "variant": "S3-3C"}}

    def losses(self, critics: dict[str, nn.Module], image: torch.Tensor, pred: torch.Tensor,
               target: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        """The multi-scale L1 loss of each critic (one for all labels, or one per label for S3-3C)."""
        layers = SCALES.get(self.options["variant"], slice(None))
        b = image.shape[0]
        out = {}
        for i, (name, critic) in enumerate(critics.items()):
            p, t = (pred, target) if len(critics) == 1 else (pred[:, i:i + 1], target[:, i:i + 1])
            with ctx.amp.autocast():
                features = critic(torch.cat([masked(image, p), masked(image, t)], 0))  # one pass (DDP, BN)
            out[name] = multiscale_l1([f[:b] for f in features], [f[b:] for f in features], layers)
        return out

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        image, target = batch["image"], batch["target"]
        with ctx.amp.autocast():
            pred = self.net("s")(image)
        pred = pred.float()
        names = self.critic_names()
        clip = float(self.options["clip"])

        # Each critic maximises its loss on detached predictions; its weights are clipped after the step.
        critic_losses = self.losses({n: self.net(n) for n in names}, image, pred.detach(), target, ctx)
        for name, loss in critic_losses.items():
            ctx.update(name, -loss, after=lambda n=name: self.clip(n, clip))

        # The segmentor minimises the mean loss through the frozen critics.
        with contextlib.ExitStack() as stack:
            critics = {n: stack.enter_context(self.frozen(n)) for n in names}
            loss_s = torch.stack(list(self.losses(critics, image, pred, target, ctx).values())).mean()
        dice_weight = float(self.options["dice_weight"])
        loss_total = loss_s + dice_weight * dice_loss(pred, target) if dice_weight else loss_s
        if self.options["variant"] == "S1-1C":  # separate SegANs: each segmentor gets its own loss, not a share
            loss_total = loss_total * len(names)
        ctx.update("s", loss_total)
        loss_c = -torch.stack(list(critic_losses.values())).mean()
        return {"loss_s": scalar(loss_s), "loss_c": scalar(loss_c), "dice": scalar(soft_dice(pred.detach(), target))}

    def clip(self, name: str, value: float) -> None:
        with torch.no_grad():
            for p in self.nets[name].parameters():
                p.clamp_(-value, value)

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.nets["s"](image).float()
