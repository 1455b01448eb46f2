"""``crgan``: the conditional generative refinement adversarial network (Rezaei, Yang and Meinel,
"Conditional Generative Refinement Adversarial Networks for Unbalanced Medical Image Semantic
Segmentation", WACV 2019, arXiv:1810.03871), with the recurrent variant of Rezaei et al.,
"Recurrent generative adversarial network for learning imbalanced medical image semantic
segmentation" (Multimedia Tools and Applications 79, 2020).

Three networks, trained in two stages (Sec. 3.2.1: "trained separately"; docs/models.md):

* ``g`` (generator): a U-Net encoder-decoder, 4x4 stride-2 convolutions down (leaky ReLU),
  x2 nearest-neighbour resize + 3x3 convolution up (ReLU), skips by concatenation,
  sigmoid output (ctseg.models.blocks.StridedUNet with ``up="resize"``).
* ``d`` (discriminator): fully convolutional on (CT, mask) pairs. ``d_patch`` 1 is the
  paper's pixel-level "N = 1" PatchGAN (1x1 convolutions, a real/fake logit per pixel);
  16, 34, 70, 142 or 286 give pix2pix's N-layer PatchGAN with that receptive field.
* ``r`` (refinement): the same encoder-decoder, taking the CT and the **detached**
  generator output, predicting two maps per label: false positives
  FP = clip(G - truth, 0, 1) and false negatives FN = clip(truth - G, 0, 1).
  The final mask is clip(G - FP + FN, 0, 1) (exactly the truth when R is exact).

Stage 1 (epochs before ``cgan_epochs``, default half the run): D: bce(D(CT, truth), real) +
bce(D(CT, G), fake) on detached G; G: ``adv`` * bce(D(CT, G), real) + ``l1`` * rec(G, truth),
D frozen: Eq. 4 with unit weights; ``g_loss`` rec is ``balanced_l1`` (default: L1 per class,
because plain L1 through the sigmoid collapses G to background on small lesions,
measured in docs/models.md), ``l1`` (Eq. 3 literally) or ``weighted_bce``. Stage 2: R
only, on the fixed G's FP/FN maps (Eq. 5-6), ``r_loss`` ``l1`` (default), ``bce``,
``weighted_bce`` or ``mse``. The final output is Eq. 7, G's alone until R was trained.

**Patient-wise batch normalisation** (``norm: patient``, the default, with
``patient_batches: true`` in the defaults): every batch holds consecutive slices of one
patient (ctseg.data.PatientBatches) and each normalisation layer uses the statistics of
the batch it sees, in training *and* at inference (:class:`PatientNorm`, batch norm
without running statistics), so the statistics are always those of one patient. At
inference ``predict_volume`` feeds a case in runs of ``val_batch_size`` consecutive
slices, so each run is normalised by its own statistics, as in training (set
``val_batch_size`` = ``batch_size`` for the same run length). PatientNorm is not a torch
``_BatchNorm``, so the loop never turns it into SyncBatchNorm: under DDP each rank
normalises its own patient. ``norm: batch`` with ``patient_batches: false`` is the
ordinary set-up (running statistics at inference).

**Recurrent variant** (``recurrent: true``, ``--preset paper-recurrent``): a bidirectional
ConvLSTM (:class:`BiConvLSTM`) across neighbouring slices at the bottleneck of G and R and
before the last convolution of D. The sequence axis is the batch axis, which with
patient batches is a run of consecutive slices in ascending z (predict_volume keeps that
order too); it therefore needs ``patient_batches: true``. Neighbouring slices should be
aligned: use ``crop: center`` or ``resize`` and no geometric augmentation (the lesion and
random crops and the augmentation are drawn per slice).

Optimisers: the paper trains the cGAN with Adadelta and the recurrent parts and the
refinement network with RMSprop, lr 1e-3 (``--preset paper``; Keras' rho/eps; torch's
Adadelta with lr 1e-3 is Keras' Adadelta with learning_rate 0.001). One optimiser per
network here, so the paper-recurrent preset trains all of G, D and R with RMSprop rather
than splitting G's parameters between two optimisers. The defaults are Adam (2e-4,
beta1 0.5), which trains faster on small sets.

``predict`` returns the final composition; ``model_options.predict: g`` returns G alone;
:meth:`CRGAN.predict_parts` returns G, FP, FN and the final mask together.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctseg.errors import ConfigError
from ctseg.models.base import SegModel, StepContext, scalar
from ctseg.models.blocks import PatchDiscriminator, PixelDiscriminator, StridedUNet, init_weights
from ctseg.models.losses import gan_loss, soft_dice, weighted_bce
from ctseg.models.registry import register

#: receptive field of pix2pix's N-layer PatchGAN -> number of stride-2 layers (1: the pixel GAN)
PATCH_LAYERS = {16: 1, 34: 2, 70: 3, 142: 4, 286: 5}
NORMS = ("patient", "batch", "instance", "none")
R_LOSSES = ("weighted_bce", "bce", "l1", "mse")
G_LOSSES = ("l1", "balanced_l1", "weighted_bce")
OUTPUTS = ("final", "g")


# ---- patient-wise normalisation ------------------------------------------------------------------
class PatientNorm(nn.Module):
    """Batch normalisation that always uses the statistics of the batch it is given.

    Written here rather than ``nn.BatchNorm2d(track_running_stats=False)`` because it must
    not be a ``_BatchNorm``: the loop converts those to SyncBatchNorm under DDP, which
    would pool the statistics of the patients of all ranks.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)


def use_patient_norm(net: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of ``net`` by a PatientNorm with the same affine parameters."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            norm = PatientNorm(child.num_features, child.eps)
            with torch.no_grad():
                norm.weight.copy_(child.weight)
                norm.bias.copy_(child.bias)
            setattr(net, name, norm)
        else:
            use_patient_norm(child)
    return net


# ---- recurrence across slices --------------------------------------------------------------------
class ConvLSTMCell(nn.Module):
    """A convolutional LSTM cell (Shi et al. 2015): the four gates from one convolution of [x, h]."""

    def __init__(self, in_ch: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_ch + hidden, 4 * hidden, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """x (S, T, C, h, w): S sequences of T steps -> hidden states (S, T, hidden, h, w)."""
        s, t, _, hh, ww = x.shape
        h = x.new_zeros(s, self.hidden, hh, ww)
        c = x.new_zeros(s, self.hidden, hh, ww)
        out = []
        for step in range(t):
            h, c = self(x[:, step], (h, c))
            out.append(h)
        return torch.stack(out, dim=1)


class BiConvLSTM(nn.Module):
    """A bidirectional ConvLSTM along the batch axis, merged back to ``channels`` by a 1x1 convolution.

    The batch (B, C, h, w) holds ``sequences`` runs of B / sequences consecutive slices
    (e.g. the real and the fake pairs of a discriminator pass); each run is one sequence,
    read forwards and backwards. Output: conv1x1([x, h_forward, h_backward]).
    """

    def __init__(self, channels: int, hidden: int | None = None, kernel: int = 3):
        super().__init__()
        hidden = hidden or max(channels // 2, 1)
        self.forward_cell = ConvLSTMCell(channels, hidden, kernel)
        self.backward_cell = ConvLSTMCell(channels, hidden, kernel)
        self.merge = nn.Conv2d(channels + 2 * hidden, channels, 1)

    def forward(self, x: torch.Tensor, sequences: int = 1) -> torch.Tensor:
        b, c, h, w = x.shape
        if b % sequences:
            raise ConfigError(f"a batch of {b} cannot hold {sequences} equal sequences")
        seq = x.reshape(sequences, b // sequences, c, h, w)
        ahead = self.forward_cell.run(seq)
        behind = self.backward_cell.run(seq.flip(1)).flip(1)
        hidden = torch.cat([ahead, behind], dim=2).reshape(b, -1, h, w)
        return self.merge(torch.cat([x, hidden], dim=1))


class RecurrentBottleneck(nn.Module):
    """StridedUNet bottleneck hook: a BiConvLSTM over the innermost features (one sequence)."""

    def __init__(self, channels: int, hidden: int | None, kernel: int):
        super().__init__()
        self.rnn = BiConvLSTM(channels, hidden, kernel)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.rnn(features)


# ---- the discriminator ---------------------------------------------------------------------------
class CRDiscriminator(nn.Module):
    """Fully convolutional (CT, mask) discriminator: pixel GAN (patch 1) or N-layer PatchGAN.

    Built from blocks.PixelDiscriminator / PatchDiscriminator; the recurrent variant puts a
    BiConvLSTM before the last (1-channel) convolution, with 1x1 kernels in the pixel GAN
    so that each logit still sees one pixel of each slice.
    """

    def __init__(self, in_ch: int, *, features: int = 64, patch: int = 1, norm: str = "batch",
                 recurrent: bool = False, lstm_hidden: int | None = None, lstm_kernel: int = 3):
        super().__init__()
        if patch == 1:
            base: nn.Module = PixelDiscriminator(in_ch, features=features, norm=norm)
            lstm_kernel = 1
        elif patch in PATCH_LAYERS:
            base = PatchDiscriminator(in_ch, features=features, n_layers=PATCH_LAYERS[patch], norm=norm)
        else:
            raise ConfigError(f"crgan: model_options.d_patch must be 1 (pixel) or one of {sorted(PATCH_LAYERS)}, "
                              f"found {patch!r}")
        layers = list(base.net)
        self.body = nn.Sequential(*layers[:-1])
        self.head = layers[-1]
        self.rnn = BiConvLSTM(self.head.in_channels, lstm_hidden, lstm_kernel) if recurrent else None

    def forward(self, x: torch.Tensor, sequences: int = 1) -> torch.Tensor:
        x = self.body(x)
        if self.rnn is not None:
            x = self.rnn(x, sequences)
        return self.head(x)


def error_maps(pred: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R's targets: false positives clip(pred - truth, 0, 1) and false negatives clip(truth - pred, 0, 1)."""
    return (pred - truth).clamp(0, 1), (truth - pred).clamp(0, 1)


def compose(pred: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """The final mask clip(G - FP + FN, 0, 1); with R's exact maps it is the truth."""
    return (pred - fp + fn).clamp(0, 1)


def balanced_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 averaged over the lesion and over the background separately, then the two means averaged.

    Plain L1 on a 2-4 % lesion pushes every pixel down first and, through the sigmoid,
    its gradient at a saturated missed pixel is s(1 - s) ~ s: G ends at the all-background
    mask (docs/models.md, "crgan: why G did not learn"). Weighting each class equally keeps
    the lesion's share of the gradient at one half. A class without pixels counts 0.
    """
    error = (pred - target).abs()
    fg = (target > 0.5).float()
    bg = 1 - fg
    return (error * fg).sum() / fg.sum().clamp(min=1) / 2 + (error * bg).sum() / bg.sum().clamp(min=1) / 2


def generator_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """G's reconstruction term (Eq. 3): plain ``l1`` (the paper), ``balanced_l1`` or ``weighted_bce``."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "balanced_l1":
        return balanced_l1(pred, target)
    return weighted_bce(pred, target)


def refinement_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """R's loss of a predicted FP/FN map against its target map (float32)."""
    if kind == "weighted_bce":
        return weighted_bce(pred, target)
    if kind == "bce":
        return F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    return F.mse_loss(pred, target)


@register("crgan")
class CRGAN(SegModel):
    options_defaults = {"features": [64, 128, 256, 512, 512, 512, 512, 512], "r_features": None, "norm": "patient",
                        "d_features": 64, "d_patch": 1, "gan_loss": "bce", "r_loss": "l1", "recurrent": False,
                        "lstm_hidden": None, "lstm_kernel": 3, "predict": "final", "g_loss": "balanced_l1",
                        "cgan_epochs": None}

    def __init__(self, config, in_channels: int):
        super().__init__(config, in_channels)
        #: whether R has been trained (stage 2); until then the final output is G's
        self.refined = False

    def build(self):
        opts = self.options
        self._check_options()
        recurrent = bool(opts["recurrent"])
        norm = "batch" if opts["norm"] == "patient" else opts["norm"]
        labels = self.out_channels
        g = self.encoder_decoder(self.in_channels, labels, opts["features"], norm, recurrent)
        r = self.encoder_decoder(self.in_channels + labels, 2 * labels, opts["r_features"] or opts["features"],
                                 norm, recurrent)
        d = CRDiscriminator(self.in_channels + labels, features=int(opts["d_features"]), patch=int(opts["d_patch"]),
                            norm=norm, recurrent=recurrent, lstm_hidden=opts["lstm_hidden"],
                            lstm_kernel=int(opts["lstm_kernel"]))
        nets = {"g": init_weights(g), "d": init_weights(d), "r": init_weights(r)}
        if opts["norm"] == "patient":
            nets = {name: use_patient_norm(net) for name, net in nets.items()}
        return nets

    def _check_options(self) -> None:
        opts = self.options
        for key, value, allowed in (("norm", opts["norm"], NORMS), ("r_loss", opts["r_loss"], R_LOSSES),
                                    ("predict", opts["predict"], OUTPUTS), ("g_loss", opts["g_loss"], G_LOSSES)):
            if value not in allowed:
                raise ConfigError(f"crgan: model_options.{key} must be one of {allowed}, found {value!r}")
        stage_one = opts["cgan_epochs"]
        if stage_one is not None and not (isinstance(stage_one, int) and 0 <= stage_one <= self.config.total_epochs):
            raise ConfigError(f"crgan: model_options.cgan_epochs must be an integer from 0 to the run's "
                              f"{self.config.total_epochs} epochs (null: half of them), found {stage_one!r}")
        if opts["recurrent"] and not self.config.patient_batches:
            raise ConfigError("crgan: model_options.recurrent runs a ConvLSTM across the slices of a batch; "
                              "it needs patient_batches: true (batches of one patient's consecutive slices)")

    def encoder_decoder(self, in_ch: int, out_ch: int, features, norm: str, recurrent: bool) -> StridedUNet:
        bottleneck = None
        if recurrent:
            bottleneck = RecurrentBottleneck(int(features[-1]), self.options["lstm_hidden"],
                                             int(self.options["lstm_kernel"]))
        return StridedUNet(in_ch, out_ch, features=features, up="resize", norm=norm, down_act="lrelu",
                           up_act="relu", out_act="sigmoid", bottleneck=bottleneck)

    @classmethod
    def defaults(cls) -> dict:
        adam = {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]}
        return {**super().defaults(), "patient_batches": True,
                "optimizers": {"g": adam, "d": adam, "r": adam},
                "loss_weights": {"adv": 1.0, "l1": 1.0}}

    @classmethod
    def paper_preset(cls) -> dict:
        adadelta = {"name": "adadelta", "lr": 1e-3, "rho": 0.95, "eps": 1e-7}
        rmsprop = {"name": "rmsprop", "lr": 1e-3, "alpha": 0.9, "eps": 1e-7}
        return {"patient_batches": True, "optimizers": {"g": adadelta, "d": adadelta, "r": rmsprop},
                "loss_weights": {"adv": 1.0, "l1": 1.0}, "model_options": {"norm": "patient", "d_patch": 1}}

    @classmethod
    def presets(cls) -> dict[str, dict]:
        rmsprop = {"name": "rmsprop", "lr": 1e-3, "alpha": 0.9, "eps": 1e-7}
        recurrent = {**cls.paper_preset(), "crop": "center",
                     "optimizers": {"g": rmsprop, "d": rmsprop, "r": rmsprop},
                     "model_options": {"norm": "patient", "d_patch": 1, "recurrent": True}}
        return {"paper": cls.paper_preset(), "paper-recurrent": recurrent}

    # ---- the step ------------------------------------------------------------------------------------
    def stage(self, epoch: int) -> int:
        """1 (G and D, Sec. 3.2.1: "trained separately") before ``cgan_epochs``, then 2 (R on the fixed G)."""
        first = self.options["cgan_epochs"]
        first = self.config.total_epochs // 2 if first is None else first
        return 1 if epoch < first else 2

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        if self.stage(ctx.epoch) == 1:
            return self.cgan_step(batch, ctx)
        return self.refinement_step(batch, ctx)

    def cgan_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Stage 1: D on real and detached fake pairs, then G on adv + l1 * reconstruction (Eq. 4)."""
        image, target = batch["image"], batch["target"]
        kind = self.options["gan_loss"]
        with ctx.amp.autocast():
            fake = self.net("g")(image)
        fake = fake.float()
        detached = fake.detach()
        # one D pass over both (two sequences for the recurrent D)
        pairs = torch.cat([torch.cat([image, target], 1), torch.cat([image, detached], 1)], 0)
        with ctx.amp.autocast():
            logits = self.net("d")(pairs, sequences=2).float()
        real_logits, fake_logits = logits.split(image.shape[0])
        loss_d = (gan_loss(real_logits, True, kind) + gan_loss(fake_logits, False, kind)) / 2
        ctx.update("d", loss_d)

        with self.frozen("d") as d, ctx.amp.autocast():
            adv = gan_loss(d(torch.cat([image, fake], 1)).float(), True, kind)
        rec = generator_loss(self.options["g_loss"], fake, target)
        loss_g = ctx.weight("adv") * adv + ctx.weight("l1") * rec
        ctx.update("g", loss_g)
        return {"loss_d": scalar(loss_d), "loss_g": scalar(loss_g), "g_adv": scalar(adv), "g_l1": scalar(rec),
                "d_real": scalar(torch.sigmoid(real_logits).mean()),
                "d_fake": scalar(torch.sigmoid(fake_logits).mean()),
                "dice_g": scalar(soft_dice(detached, target)), "dice": scalar(soft_dice(detached, target))}

    def generator_output(self, image: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The fixed G's output for stage 2: no gradient, G in inference mode (as R will see it)."""
        g = self.nets["g"]
        mode = g.training
        g.eval()
        try:
            with torch.no_grad(), ctx.amp.autocast():
                return g(image).float()
        finally:
            g.train(mode)

    def refinement_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Stage 2: R learns the FP and FN maps (Eq. 5, 6) of the fixed G; final = G - FP + FN (Eq. 7)."""
        image, target = batch["image"], batch["target"]
        labels = self.out_channels
        g = self.generator_output(image, ctx)
        fp_truth, fn_truth = error_maps(g, target)
        with ctx.amp.autocast():
            maps = self.net("r")(torch.cat([image, g], 1))
        maps = maps.float()
        fp, fn = maps[:, :labels], maps[:, labels:]
        kind_r = self.options["r_loss"]
        loss_r = refinement_loss(kind_r, fp, fp_truth) + refinement_loss(kind_r, fn, fn_truth)
        ctx.update("r", loss_r)
        if ctx.updates("r"):
            self.refined = True
        final = compose(g, fp.detach(), fn.detach())
        return {"loss_r": scalar(loss_r), "dice_g": scalar(soft_dice(g, target)),
                "dice": scalar(soft_dice(final, target))}

    def extra_state(self) -> dict:
        return {"refined": self.refined}

    def load_extra_state(self, state: Mapping) -> None:
        self.refined = bool(state.get("refined", False))

    def validation_outputs(self) -> dict[str, dict]:
        """G alone next to the final output in validation and evaluation (Table 4's two rows)."""
        return {"g": {"predict": "g"}}

    # ---- inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_parts(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """G's output, R's FP and FN maps and the final clip(G - FP + FN, 0, 1), each (B, labels, H, W)."""
        labels = self.out_channels
        g = self.nets["g"](image).float()
        maps = self.nets["r"](torch.cat([image, g.to(image.dtype)], 1)).float()
        fp, fn = maps[:, :labels], maps[:, labels:]
        return {"g": g, "fp": fp, "fn": fn, "final": compose(g, fp, fn)}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """The final composition once R is trained (stage 2), else G's output; ``predict: g``: G alone."""
        if self.options["predict"] == "g" or not self.refined:
            return self.nets["g"](image).float()
        return self.predict_parts(image)["final"]
