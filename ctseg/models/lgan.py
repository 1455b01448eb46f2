"""What the five LGAN models share (this file registers none): LGAN (Tan, Jing,
Huo, Tian and Akin, "LGAN: Lung segmentation in CT scans using generative adversarial network",
Computerized Medical Imaging and Graphics 87, 2021; arXiv:1901.03473), a Wasserstein GAN
whose generator segments and whose critic comes in five designs (one generator, five critics).

Generator ``g``: the U-Net of Ronneberger et al.: two 3x3 convolutions per level (64 to
1024 channels, ``features``), 2x2 max-pooling down, 2x2 stride-2 transposed convolutions
up, skips by concatenation, leaky ReLU, a 1x1 convolution to a sigmoid mask; 224 x 224
inputs by default (blocks.PoolUNet; it outputs logits, the sigmoid is applied here so the
BCE is computed from logits).

Critic ``d`` (3x3 stride-2 convolutions with leaky ReLU, ``critic_features``, then an
adaptive average pooling to ``pool`` x ``pool`` so any crop size works — ``pool: null``
flattens the last map of a ``size`` input as the paper does — then FC 1024, leaky ReLU,
FC 1). What it sees, per registered name (one file each, ``lgan_<design>.py``, a
subclass of :class:`LGAN` setting ``design``):

* ``lgan-basic``: the mask alone;
* ``lgan-product``: the mask times the CT (each window channel times each label);
* ``lgan-ef`` (early fusion): the CT and the mask as channels of one input;
* ``lgan-lf`` (late fusion): a CT branch and a mask branch of convolutions, their
  features concatenated before the common layers (``branch_layers`` convolutions per
  branch, default all of them: fusion just before the fully connected layers);
* ``lgan-regression``: two branches on (prediction, truth) -> one number.

Losses (WGAN, Arjovsky et al. 2017): critic L_D = mean D(fake) - mean D(real) (minimised,
i.e. the critic maximises the EM-distance estimate W = mean D(real) - mean D(fake));
generator L_G = ``bce`` * BCE(pred, truth) - ``adv`` * mean D(fake). "fake" is (CT,
prediction), "real" is (CT, truth); the generator update follows the critic's.

Regression critic, our reading of the signs: D(pred, truth) plays the role that
D(fake) - D(real) plays for the others, i.e. it is the *negative* of the estimated EM
distance between prediction and truth. So the critic minimises D(pred, truth) and the
generator minimises BCE - D(pred, truth) (as the issue and the other designs have it):
the critic makes the distance estimate as large as the Lipschitz constraint allows, the
generator shrinks it. Minimising D(pred, truth) alone is unbounded below (a bias term
alone drives it to -inf under a gradient penalty, which does not constrain constants),
so by default the critic is anchored on the pair a perfect prediction gives:
L_D = D(pred, truth) - D(truth, truth) — a conditional WGAN whose real sample is
(truth, truth) and fake sample (pred, truth), with EM estimate D(truth, truth) -
D(pred, truth) >= 0. The anchor term does not depend on G, so L_G is unchanged.
``anchor: false`` gives the literal L_D = D(pred, truth) (only sensible with weight
clipping, which bounds the output).

Lipschitz constraint (the paper does not say which): ``lipschitz: gp`` (default), the
gradient penalty of Gulrajani et al. 2017, ``gp`` * (|grad_mask D(cond, m_hat)|_2 - 1)^2 at
m_hat = e * truth + (1 - e) * pred, e ~ U(0, 1) per sample, with the condition (CT, or the
truth for the regression critic) fixed — hence no batch norm in the critic with GP
(``critic_norm`` must be none); or ``lipschitz: clip``, weights clipped to [-clip, clip]
after every critic step (WGAN). ``n_critic`` critic steps per generator step:
``critic_schedule: alternate`` (default) trains the critic on every batch and the
generator on every n_critic-th batch, so each critic step sees fresh data as in WGAN's
algorithm; ``repeat`` runs n_critic critic steps on each batch, then the generator.

``pos_weight`` weighs the foreground pixels in the BCE (1, the paper's plain BCE, by
default: lungs are large; null: the batch's background/foreground ratio, for small lesions).

Paper preset (``--preset paper``, Sec. 4.2): Adam lr 1e-5 (beta1 0.9, "momentum 0.9") with
weight decay 5e-4 for both networks, Gaussian initialisation (``init: gaussian``, N(0, 0.02):
the paper gives no std), 224 x 224 whole slices (``crop: resize``). The paper names neither
n_critic nor a Lipschitz constraint: n_critic 5 and the gradient penalty are WGAN-GP's
(assumptions); ``--preset paper-n1`` trains one critic step per generator step.

Defaults (not the paper's regime, measured on whole slices of a real CT, issue 13): Adam with
WGAN-GP's betas (0.5, 0.9), the critic at 1e-4 and the generator at 2e-3, one critic step per
generator step, ``adv`` 0.01. The gradient-penalty critic's gradient with respect to the mask
has norm ~1 per sample while the mean BCE's is ~1/pixels, so at ``adv`` 1 the critic drowns
the BCE on a lesion of a few dozen pixels and G learns nothing; at 0.01 the adversarial term
still shapes the mask (Dice 0.86 against 0.84 without it, lgan-ef).
"""

from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctseg.errors import ConfigError
from ctseg.models.base import SegModel, StepContext, scalar
from ctseg.models.blocks import PoolUNet, conv_norm_act, init_weights
from ctseg.models.losses import soft_dice

DESIGNS = ("basic", "product", "ef", "lf", "regression")
LIPSCHITZ = ("gp", "clip")
INITS = ("default", "gaussian")  # PyTorch's default, or N(0, 0.02) (blocks.init_weights)
SCHEDULES = ("alternate", "repeat")


# ---- the critic ------------------------------------------------------------------------------------
def conv_stack(in_ch: int, widths: Sequence[int], norm: str) -> nn.Sequential:
    """3x3 stride-2 convolutions with leaky ReLU (LGAN's critic layers)."""
    layers, prev = [], in_ch
    for width in widths:
        layers.append(conv_norm_act(prev, width, 3, 2, 1, norm=norm, act="lrelu"))
        prev = width
    return nn.Sequential(*layers)


def masked(image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """image (B, C, H, W) times each mask channel (B, L, H, W) -> (B, L*C, H, W)."""
    return (masks[:, :, None] * image[:, None]).flatten(1, 2)


def strided_size(size: int, layers: int) -> int:
    """Spatial size after ``layers`` 3x3 stride-2 convolutions with padding 1."""
    for _ in range(layers):
        size = (size - 1) // 2 + 1
    return size


class LGANCritic(nn.Module):
    """One of LGAN's five critic designs; ``forward(cond, mask)`` -> (B,) scores.

    ``cond`` is the CT for product / ef / lf, the truth for regression, unused for basic.
    """

    def __init__(self, design: str, cond_ch: int, mask_ch: int, *, features: Sequence[int] = (64, 128, 256, 512),
                 norm: str = "none", pool: int | None = 4, fc: int = 1024, branch_layers: int | None = None,
                 size: int = 224):
        super().__init__()
        features = [int(f) for f in features]
        self.design = design
        two_branch = design in ("lf", "regression")
        split = len(features) if branch_layers is None else int(branch_layers)
        if two_branch and not 1 <= split <= len(features):
            raise ConfigError(f"lgan: model_options.branch_layers must be in 1..{len(features)}, found {split}")
        if two_branch:
            self.cond_branch = conv_stack(cond_ch, features[:split], norm)
            self.mask_branch = conv_stack(mask_ch, features[:split], norm)
            self.trunk = conv_stack(2 * features[split - 1], features[split:], norm)
        else:
            in_ch = {"basic": mask_ch, "product": cond_ch * mask_ch, "ef": cond_ch + mask_ch}[design]
            self.trunk = conv_stack(in_ch, features, norm)
        channels = features[-1] * (2 if two_branch and split == len(features) else 1)
        if pool:
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(int(pool))
            flat = channels * int(pool) ** 2
        else:  # the paper: flatten the last map of a `size` input (fixed input size)
            self.pool = nn.Identity()
            flat = channels * strided_size(size, len(features)) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, fc), nn.LeakyReLU(0.2, inplace=True), nn.Linear(fc, 1))

    def forward(self, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.design in ("lf", "regression"):
            x = self.trunk(torch.cat([self.cond_branch(cond), self.mask_branch(mask)], dim=1))
        elif self.design == "basic":
            x = self.trunk(mask)
        elif self.design == "product":
            x = self.trunk(masked(cond, mask))
        else:
            x = self.trunk(torch.cat([cond, mask], dim=1))
        return self.head(self.pool(x)).view(-1)


# ---- the model -------------------------------------------------------------------------------------
class LGAN(SegModel):
    """LGAN with the critic design ``design`` (set by each registered subclass)."""

    design: ClassVar[str] = ""
    options_defaults = {"features": [64, 128, 256, 512, 1024], "norm": "batch",
                        "critic_features": [64, 128, 256, 512], "critic_norm": "none", "pool": 4, "fc": 1024,
                        "branch_layers": None, "lipschitz": "gp", "clip": 0.01, "n_critic": 1,
                        "critic_schedule": "alternate", "pos_weight": 1.0, "init": "default"}

    def build(self):
        opts = self.options
        self._check_options()
        g = PoolUNet(self.in_channels, self.out_channels, features=opts["features"], norm=opts["norm"],
                     act="lrelu", out_act="none")
        cond_ch = self.out_channels if self.design == "regression" else self.in_channels
        d = LGANCritic(self.design, cond_ch, self.out_channels, features=opts["critic_features"],
                       norm=opts["critic_norm"], pool=opts["pool"], fc=int(opts["fc"]),
                       branch_layers=opts["branch_layers"], size=self.config.size)
        if opts["init"] == "gaussian":  # Sec. 4.2: "initialized with a Gaussian distribution" (std: ours)
            g, d = init_weights(g), init_weights(d)
        return {"g": g, "d": d}

    def _check_options(self) -> None:
        opts = self.options
        for key, allowed in (("lipschitz", LIPSCHITZ), ("critic_schedule", SCHEDULES), ("init", INITS)):
            if opts[key] not in allowed:
                raise ConfigError(f"{self.name}: model_options.{key} must be one of {allowed}, found {opts[key]!r}")
        if opts["lipschitz"] == "gp" and opts["critic_norm"] == "batch":
            raise ConfigError(f"{self.name}: the gradient penalty is per sample; batch norm in the critic breaks it "
                              "(use critic_norm none or instance, or lipschitz clip)")
        if int(opts["n_critic"]) < 1:
            raise ConfigError(f"{self.name}: model_options.n_critic must be >= 1, found {opts['n_critic']}")

    @classmethod
    def defaults(cls) -> dict:
        # Measured on whole slices of a real CT (issue 13, docs/models.md "Whole-slice results"): with G at
        # 1e-4, 5 critic steps per G step and adv 1, no design learnt the nodule in 300 steps (Dice 0); G at
        # 2e-3, one critic step per G step and adv 0.01 give Dice 0.86-0.90 (adv 0: 0.84)
        adam = {"name": "adam", "lr": 1e-4, "betas": [0.5, 0.9]}
        return {**super().defaults(), "size": 224, "optimizers": {"g": {**adam, "lr": 2e-3}, "d": adam},
                "loss_weights": {"bce": 1.0, "adv": 0.01, "gp": 10.0}}

    @classmethod
    def paper_preset(cls) -> dict:
        # Sec. 4.2: Adam lr 1e-5, momentum 0.9, weight decay 0.0005, Gaussian initialisation
        adam = {"name": "adam", "lr": 1e-5, "betas": [0.9, 0.999], "weight_decay": 5e-4}
        return {"size": 224, "crop": "resize", "optimizers": {"g": adam, "d": adam},
                "model_options": {"init": "gaussian", "n_critic": 5},
                "loss_weights": {"bce": 1.0, "adv": 1.0, "gp": 10.0}}

    @classmethod
    def presets(cls) -> dict[str, dict]:
        # n_critic 5 and the gradient penalty are WGAN-GP's, not the paper's (it names neither):
        # paper-n1 trains the critic and the segmentor one step each
        paper = cls.paper_preset()
        n1 = {**paper, "model_options": {**paper["model_options"], "n_critic": 1}}
        return {"paper": paper, "paper-n1": n1}

    # ---- pieces of the step ------------------------------------------------------------------------------
    def condition(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """What the critic is conditioned on: the truth for the regression critic, else the CT."""
        return target if self.design == "regression" else image

    def anchored(self) -> bool:
        return True

    def critic_loss(self, critic: nn.Module, cond: torch.Tensor, real: torch.Tensor, fake: torch.Tensor,
                    ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_D (+ gradient penalty), from one critic pass over real, fake (and interpolated) masks."""
        b = real.shape[0]
        gp = self.options["lipschitz"] == "gp"
        masks = [real, fake]
        if gp:
            e = torch.rand(b, *([1] * (real.ndim - 1)), device=real.device)
            mix = (e * real + (1 - e) * fake).requires_grad_(True)
            masks.append(mix)
        with ctx.amp.autocast():
            scores = critic(cond.repeat(len(masks), *([1] * (cond.ndim - 1))), torch.cat(masks, 0)).float()
        d_real, d_fake = scores[:b].mean(), scores[b:2 * b].mean()
        loss = d_fake - d_real if self.anchored() else d_fake
        logs = {"d_real": scalar(d_real), "d_fake": scalar(d_fake), "em": scalar(d_real - d_fake)}
        if gp:
            penalty = gradient_penalty(scores[2 * b:], mix, ctx.amp.scalers.get("d"))
            loss = loss + ctx.weight("gp") * penalty
            logs["gp"] = scalar(penalty)
        return loss, logs

    def clip_critic(self) -> None:
        value = float(self.options["clip"])
        with torch.no_grad():
            for p in self.nets["d"].parameters():
                p.clamp_(-value, value)

    def critic_step(self, cond, target, fake, ctx) -> dict[str, torch.Tensor]:
        loss, logs = self.critic_loss(self.net("d"), cond, target, fake, ctx)
        after = self.clip_critic if self.options["lipschitz"] == "clip" else None
        ctx.update("d", loss, after=after)
        return {"loss_d": scalar(loss), **logs}

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        image, target = batch["image"], batch["target"]
        cond = self.condition(image, target)
        n_critic = int(self.options["n_critic"])
        repeat = self.options["critic_schedule"] == "repeat"
        update_g = repeat or (ctx.step + 1) % n_critic == 0

        with ctx.amp.autocast(), torch.set_grad_enabled(update_g):
            logits = self.net("g")(image)
        logits = logits.float()
        pred = torch.sigmoid(logits)

        for _ in range(n_critic if repeat else 1):
            logs = self.critic_step(cond, target, pred.detach(), ctx)

        bce = self.bce(logits.detach(), target)
        if update_g:
            bce = self.bce(logits, target)
            with self.frozen("d") as d, ctx.amp.autocast():
                adv = d(cond, pred).float().mean()
            loss_g = ctx.weight("bce") * bce - ctx.weight("adv") * adv
            ctx.update("g", loss_g)
            logs.update({"loss_g": scalar(loss_g), "g_adv": scalar(adv)})
        logs.update({"g_bce": scalar(bce), "dice": scalar(soft_dice(pred.detach(), target))})
        return logs

    def bce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE from logits; foreground pixels weigh ``pos_weight`` (1: the paper's plain BCE; null: the
        batch's background/foreground ratio, capped at 100, for small lesions rather than lungs)."""
        weight = self.options["pos_weight"]
        if weight is None:
            fg = target.sum()
            weight = float(((target.numel() - fg) / fg).clamp(max=100.0)) if fg > 0 else 1.0
        if float(weight) == 1.0:
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=logits.new_tensor(float(weight)))

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.nets["g"](image).float())


def gradient_penalty(scores: torch.Tensor, inputs: torch.Tensor, scaler=None) -> torch.Tensor:
    """mean over samples of (|d scores / d inputs|_2 - 1)^2 (WGAN-GP), differentiable (create_graph).

    With an enabled fp16 GradScaler the scores are scaled before autograd.grad and the
    gradients unscaled after (torch's AMP recipe for gradient penalties), so small
    fp16 gradients do not underflow.
    """
    outputs = scores.sum()
    scale = 1.0
    if scaler is not None and scaler.is_enabled():
        outputs = scaler.scale(outputs)
        scale = float(scaler.get_scale())
    (grad,) = torch.autograd.grad(outputs, inputs, create_graph=True)
    grad = grad.float() / scale
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
