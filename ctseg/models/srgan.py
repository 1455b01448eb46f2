"""``srgan``: x4 super-resolution of lesion crops, the first stage of CasGAN (Wang et al. 2020, see
``casgan``), after SRGAN (Ledig et al., "Photo-realistic single image super-resolution using a
generative adversarial network", CVPR 2017).

The model learns from the store's own images: each training crop (``size`` x ``size``,
the high-resolution target HR) is degraded to LR = bicubic down-sampling by ``scale``
(antialiased, i.e. the bicubic kernel widened by the factor, as Ledig et al.'s "bicubic
kernel with down-sampling factor r"), re-quantised to 8 bits like a stored image
(``quantise_lr``); the generator maps LR back to ``size``. The ``target`` label only
places the crops (``crop: lesion``); it is not learned.

Generator ``g`` (SRResNet, Ledig et al. fig. 4): 9x9 conv + PReLU; ``g_blocks`` residual
blocks (3x3 conv, BN, PReLU, 3x3 conv, BN, + input); 3x3 conv + BN + the long skip;
log2(scale) up-sampling blocks (3x3 conv to 4x channels, pixel shuffle x2, PReLU); 9x9
conv to the input's channels, linear output (clamped to [0, 1] when predicting).
``residual: true`` adds the bicubic up-sampling of LR to the output (a global residual,
not in the paper; its last convolution starts near zero, so a run starts at bicubic
quality and short CPU runs can improve on it).

Discriminator ``d`` (Ledig et al. fig. 4): 3x3 conv + leaky ReLU, then seven 3x3
conv-BN-leaky-ReLU blocks (64, 64/2, 128, 128/2, 256, 256/2, 512, 512/2; /2 = stride 2;
widths scale with ``d_features``), dense 1024 (``d_dense``), leaky ReLU, dense 1. The paper's dense
layer sees the 6x6 map of its 96x96 crops; an adaptive average pooling to ``d_pool`` x
``d_pool`` (6) before it keeps exactly that at 96 and lets other crop sizes through.

Losses (``loss_weights``): generator = content * MSE(SR, HR) + adversarial * BCE(D(SR), real)
(1e-3, Ledig et al. eq. 3 with the MSE content loss) + tv * total variation (mean absolute
horizontal and vertical differences; 0 by default) + perceptual * VGG loss (0 by
default: Ledig et al.'s VGG54, MSE of VGG19 relu5_4 features rescaled by 1/12.75, needs
``vgg_weights``, a local torchvision-layout VGG19 state dict: none can be downloaded
here, and asking for the term without the file is an error). Discriminator =
(BCE(D(HR), real) + BCE(D(SR), fake)) / 2 on detached SR; not trained while the
adversarial weight is 0 (SRResNet pre-training).

``predict(image)`` returns the reconstruction of ``image`` from its own degraded version
(same size, image channels): what the training loop shows and validates.
:meth:`SRGAN.super_resolve` up-samples a real image by ``scale`` (what CasGAN uses).
Validation reports PSNR and SSIM (ctseg.image_quality) of SR and of bicubic up-sampling
against HR on held-out crops the loop hands it (:func:`evaluate_sr`); the score is SR's
PSNR gain over bicubic. ctseg.score.evaluate_sr_checkpoint scores a saved srgan run.

Paper preset (Ledig et al.): Adam beta1 0.9, lr 1e-4, batch 16; 1e6 updates of the MSE
SRResNet, then the GAN from it: 1e5 updates at 1e-4 and 1e5 at 1e-5 (``steps_per_epoch``
1000 makes the three phases exactly 1000, 100 and 100 epochs); HR crops 256 (64 -> 256,
the CasGAN setting; Ledig et al. used 96).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ctseg.errors import ConfigError
from ctseg.models.base import SegModel, StepContext, scalar
from ctseg.models.losses import gan_loss
from ctseg.models.registry import register

DEGRADE_MODES = ("bicubic", "area")
# VGG19 ("E") feature layers in torchvision's order; "M" = 2x2 max-pooling.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
VGG_LAYERS = {"relu2_2": 9, "relu5_4": 36}  # number of `features` modules up to and including that ReLU
VGG_RESCALE = 1 / 12.75  # Ledig et al.: VGG feature maps rescaled by 1/12.75
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- degradation and interpolation --------------------------------------------------------------
def degrade(hr: torch.Tensor, scale: int, mode: str = "bicubic", quantise: bool = True) -> torch.Tensor:
    """LR = HR down-sampled by ``scale`` (antialiased bicubic or area), in [0, 1], optionally on 8-bit levels."""
    if mode == "bicubic":
        lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    elif mode == "area":
        lr = F.avg_pool2d(hr, scale)
    else:
        raise ConfigError(f"srgan: model_options.degrade must be one of {DEGRADE_MODES}, found {mode!r}")
    lr = lr.clamp(0, 1)
    return torch.round(lr * 255) / 255 if quantise else lr


def bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline: LR up-sampled by ``scale``, clamped to [0, 1]."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontal and vertical neighbours (anisotropic TV)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


# ---- networks ----------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """SRResNet block: conv-BN-PReLU-conv-BN plus the input."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.PReLU(width), nn.Conv2d(width, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """The SRGAN generator: LR (B, C, h, w) -> SR (B, C, scale*h, scale*w), linear output."""

    def __init__(self, channels: int, *, features: int = 64, blocks: int = 16, scale: int = 4,
                 residual: bool = False):
        super().__init__()
        if scale < 2 or scale & (scale - 1):
            raise ConfigError(f"srgan: model_options.scale must be a power of 2 >= 2, found {scale}")
        self.scale, self.residual = scale, residual
        self.head = nn.Sequential(nn.Conv2d(channels, features, 9, 1, 4), nn.PReLU(features))
        self.body = nn.Sequential(*[ResidualBlock(features) for _ in range(blocks)],
                                  nn.Conv2d(features, features, 3, 1, 1, bias=False), nn.BatchNorm2d(features))
        ups = []
        for _ in range(int(math.log2(scale))):
            ups += [nn.Conv2d(features, 4 * features, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU(features)]
        self.up = nn.Sequential(*ups)
        self.tail = nn.Conv2d(features, channels, 9, 1, 4)
        if residual:  # start at bicubic quality: the learned part begins near zero (not at zero, so it learns)
            with torch.no_grad():
                self.tail.weight.mul_(0.01)
                self.tail.bias.zero_()

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        head = self.head(lr)
        out = self.tail(self.up(head + self.body(head)))
        if self.residual:
            out = out + bicubic_up(lr, self.scale).to(out.dtype)
        return out


class SRDiscriminator(nn.Module):
    """The SRGAN discriminator: eight 3x3 conv blocks, adaptive pooling, dense 1024, dense 1 (a logit)."""

    def __init__(self, channels: int, *, features: int = 64, pool: int = 6, dense: int = 1024):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)]
        prev = features
        for i, (mult, stride) in enumerate([(1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2)]):
            width = features * mult
            layers += [nn.Conv2d(prev, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                       nn.LeakyReLU(0.2, inplace=True)]
            prev = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(prev * pool * pool, dense), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Linear(dense, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


class VGGFeatures(nn.Module):
    """VGG19 ``features`` up to a ReLU, loaded from a local torchvision-layout state dict (frozen).

    Written out here (13 lines of layer list) because torchvision is not a dependency;
    the module indices match torchvision's so its ``vgg19`` weights load unchanged.
    """

    def __init__(self, weights: str | Path, layer: str = "relu5_4"):
        super().__init__()
        if layer not in VGG_LAYERS:
            raise ConfigError(f"srgan: model_options.vgg_layer must be one of {sorted(VGG_LAYERS)}, found {layer!r}")
        layers: list[nn.Module] = []
        prev = 3
        for item in VGG19_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(prev, int(item), 3, 1, 1), nn.ReLU(inplace=True)]
                prev = int(item)
        self.features = nn.Sequential(*layers[:VGG_LAYERS[layer]])
        self._load(Path(weights))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"{path}: srgan's perceptual loss needs this VGG19 weights file (torchvision layout, "
                              "keys features.N.weight); none can be downloaded here")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a foreign file
            raise ConfigError(f"{path}: not a readable torch state dict ({type(exc).__name__}: {exc})") from exc
        wanted = {k: v for k, v in state.items() if k.startswith("features.")
                  and int(k.split(".")[1]) < len(self.features)} if isinstance(state, Mapping) else {}
        own = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        missing = sorted(set(own) - set(wanted))
        if missing:
            raise ConfigError(f"{path}: not VGG19 weights in torchvision's layout (missing {', '.join(missing[:3])})")
        shapes = [k for k in own if tuple(own[k].shape) != tuple(wanted[k].shape)]
        if shapes:
            raise ConfigError(f"{path}: not VGG19 weights ({shapes[0]} has shape {tuple(wanted[shapes[0]].shape)}, "
                              f"expected {tuple(own[shapes[0]].shape)})")
        self.features.load_state_dict({k[len("features."):]: v for k, v in wanted.items()})

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:  # CT windows -> a grey RGB image
            x = x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        return self.features((x - self.mean) / self.std) * VGG_RESCALE


# ---- the model ---------------------------------------------------------------------------------
@register("srgan")
class SRGAN(SegModel):
    output_kind = "image"
    options_defaults = {"scale": 4, "g_features": 64, "g_blocks": 16, "d_features": 64, "d_pool": 6, "d_dense": 1024,
                        "residual": False, "degrade": "bicubic", "quantise_lr": True,
                        "vgg_weights": None, "vgg_layer": "relu5_4"}

    def build(self):
        scale = int(self.options["scale"])
        if self.config.size % scale:
            raise ConfigError(f"srgan: size {self.config.size} is not a multiple of model_options.scale {scale}")
        if self.options["degrade"] not in DEGRADE_MODES:
            raise ConfigError(f"srgan: model_options.degrade must be one of {DEGRADE_MODES}, "
                              f"found {self.options['degrade']!r}")
        self.scale = scale
        self.out_channels = self.in_channels  # predict() returns images, not masks
        g = SRResNet(self.in_channels, features=int(self.options["g_features"]), blocks=int(self.options["g_blocks"]),
                     scale=scale, residual=bool(self.options["residual"]))
        g.size_multiple = scale
        d = SRDiscriminator(self.in_channels, features=int(self.options["d_features"]), pool=int(self.options["d_pool"]),
                            dense=int(self.options["d_dense"]))
        self.vgg = self._perceptual_network()
        return {"g": g, "d": d}

    def _perceptual_network(self) -> VGGFeatures | None:
        weights = [self.config.loss_weights.get("perceptual", 0.0)]
        weights += [p.loss_weights.get("perceptual", 0.0) for p in self.config.phases]
        if not any(weights):
            return None
        if not self.options["vgg_weights"]:
            raise ConfigError("srgan: loss_weights.perceptual > 0 needs model_options.vgg_weights, a local VGG19 "
                              "weights file (torchvision layout); none can be downloaded here")
        return VGGFeatures(self.options["vgg_weights"], self.options["vgg_layer"])

    @classmethod
    def defaults(cls) -> dict:
        adam = {"name": "adam", "lr": 1e-4, "betas": [0.9, 0.999]}
        return {**super().defaults(), "optimizers": {"g": adam, "d": adam},
                "loss_weights": {"content": 1.0, "adversarial": 1e-3, "tv": 0.0, "perceptual": 0.0}}

    @classmethod
    def paper_preset(cls) -> dict:
        adam = {"name": "adam", "lr": 1e-4, "betas": [0.9, 0.999]}
        return {"batch_size": 16, "size": 256, "steps_per_epoch": 1000, "optimizers": {"g": adam, "d": adam},
                "phases": [{"epochs": 1000, "lr": {"g": 1e-4}, "loss_weights": {"adversarial": 0.0}},
                           {"epochs": 100, "lr": {"g": 1e-4, "d": 1e-4}, "loss_weights": {"adversarial": 1e-3}},
                           {"epochs": 100, "lr": {"g": 1e-5, "d": 1e-5}, "loss_weights": {"adversarial": 1e-3}}]}

    @classmethod
    def casgan_preset(cls) -> dict:
        """CasGAN's SR stage (softgan.txt Sec. 4, "Training details"): 5 residual blocks; weights 1 / 1e-3 /
        8e-3 / 2e-8 for content (MSE) / adversarial / perceptual / TV; Adam lr 0.01; 40 epochs
        ("generations"); HR 512 x 512 whole slices, LR 128 x 128 (x4). The paper gives no batch size and
        no SRResNet pre-training phase: both networks train from the start, batch as configured."""
        adam = {"name": "adam", "lr": 1e-2, "betas": [0.9, 0.999]}
        return {"size": 512, "crop": "resize", "epochs": 40, "augment": {"enabled": False},
                "model_options": {"g_blocks": 5, "scale": 4}, "optimizers": {"g": adam, "d": adam},
                "loss_weights": {"content": 1.0, "adversarial": 1e-3, "perceptual": 8e-3, "tv": 2e-8}}

    @classmethod
    def presets(cls) -> dict[str, dict]:
        return {"paper": cls.paper_preset(), "paper-casgan": cls.casgan_preset()}

    def to(self, device: torch.device) -> "SRGAN":
        super().to(device)
        if self.vgg is not None:
            self.vgg.to(device)
        return self

    # ---- the step -----------------------------------------------------------------------------------
    def degrade(self, hr: torch.Tensor) -> torch.Tensor:
        return degrade(hr, self.scale, self.options["degrade"], bool(self.options["quantise_lr"]))

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        hr = batch["image"]
        lr = self.degrade(hr)
        with ctx.amp.autocast():
            sr = self.net("g")(lr)
        sr = sr.float()
        adv_weight = ctx.weight("adversarial")
        logs: dict[str, torch.Tensor] = {}

        # Discriminator on HR (real) and detached SR (fake); skipped while the GAN term is off.
        if adv_weight and ctx.updates("d"):
            with ctx.amp.autocast():
                logits = self.net("d")(torch.cat([hr, sr.detach()])).float()
            real, fake = logits.split(hr.shape[0])
            loss_d = (gan_loss(real, True) + gan_loss(fake, False)) / 2
            ctx.update("d", loss_d)
            logs.update(loss_d=scalar(loss_d), d_real=scalar(torch.sigmoid(real).mean()),
                        d_fake=scalar(torch.sigmoid(fake).mean()))

        # Generator with the discriminator frozen.
        content = F.mse_loss(sr, hr)
        loss_g = ctx.weight("content") * content
        if adv_weight:
            with self.frozen("d") as d, ctx.amp.autocast():
                adv = gan_loss(d(sr).float(), True)
            loss_g = loss_g + adv_weight * adv
            logs["g_adv"] = scalar(adv)
        tv_weight = ctx.weights.get("tv", 0.0)
        if tv_weight:
            loss_g = loss_g + tv_weight * total_variation(sr)
        perceptual_weight = ctx.weights.get("perceptual", 0.0)
        if perceptual_weight:
            with ctx.amp.autocast():
                pair = self.vgg(torch.cat([sr, hr]))
            f_sr, f_hr = pair.float().split(hr.shape[0])
            loss_g = loss_g + perceptual_weight * F.mse_loss(f_sr, f_hr)
        ctx.update("g", loss_g)
        mse = content.detach()
        logs.update(loss_g=scalar(loss_g), g_mse=scalar(mse), psnr=scalar(-10 * torch.log10(mse.clamp_min(1e-10))))
        return logs

    # ---- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def super_resolve(self, lr: torch.Tensor) -> torch.Tensor:
        """SR (B, C, scale*h, scale*w) in [0, 1] of images (B, C, h, w) in [0, 1]."""
        return self.nets["g"](lr).float().clamp(0, 1)

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``image`` from its degraded version (B, C, H, W): see the module docstring."""
        return self.super_resolve(self.degrade(image))

    def validation(self, config, crops, amp=None) -> dict:
        """PSNR/SSIM of SR and bicubic on the validation cases' crops; ``score`` = PSNR gain in dB."""
        result = evaluate_sr(self, crops(), batch_size=config.val_batch_size, amp=amp)
        return {**result, "score": result["psnr_gain"]}


# ---- evaluation --------------------------------------------------------------------------------
def evaluate_sr(model: SRGAN, dataset: Sequence[Mapping[str, torch.Tensor]], *, batch_size: int = 16,
                amp=None) -> dict:
    """Mean PSNR (dB) and SSIM over crops and channels of SR and of bicubic up-sampling against HR.

    ``dataset`` holds the HR crops (``image``; ctseg.data.held_out_crops: one per stored
    slice of the cases); LR is made from each as in training. Returns psnr, ssim,
    psnr_bicubic, ssim_bicubic, psnr_gain and crops.
    """
    import contextlib

    from ctseg.image_quality import psnr, ssim

    model.eval()
    scores: dict[str, list[np.ndarray]] = {"psnr": [], "ssim": [], "psnr_bicubic": [], "ssim_bicubic": []}
    for start in range(0, len(dataset), batch_size):
        hr = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
        hr = hr.to(model.device)
        lr = model.degrade(hr)
        with amp.autocast() if amp is not None else contextlib.nullcontext():
            sr = model.super_resolve(lr)
        hr_np = hr.cpu().numpy().astype(np.float64)
        for key, out in (("", sr), ("_bicubic", bicubic_up(lr, model.scale))):
            out_np = out.float().cpu().numpy().astype(np.float64)
            scores["psnr" + key].append(np.minimum(psnr(out_np, hr_np), 100.0).reshape(-1))  # cap identical crops
            scores["ssim" + key].append(np.asarray(ssim(out_np, hr_np)).reshape(-1))
    result = {k: float(np.mean(np.concatenate(v))) for k, v in scores.items()}
    result["psnr_gain"] = result["psnr"] - result["psnr_bicubic"]
    result["crops"] = len(dataset)
    return result
