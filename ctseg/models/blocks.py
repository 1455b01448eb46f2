"""Building blocks shared by the models (written once, configured by each model).

* :func:`conv_norm_act` — convolution, normalisation, activation.
* :class:`StridedUNet` — pix2pix-style encoder-decoder: 4x4 stride-2 convolutions down
  (no pooling), transposed 4x4 stride-2 convolutions or x2 nearest-neighbour resize + 3x3 convolution up (resize-convolution, Odena et al. 2016),
  U-Net skips by concatenation, an optional hook at the bottleneck (CTumorGAN's noise,
  crgan's ConvLSTM) and one before every decoder up-sampling (CTumorGAN's paper noise). Used by ctumorgan, segan and (issue 6) crgan.
* :class:`PoolUNet` — the classic U-Net: two 3x3 convolutions per level, max-pooling
  down, transposed 2x2 convolutions up. Used by unet and (issue 6) LGAN.
* :class:`PatchDiscriminator` (pix2pix's N-layer PatchGAN) and
  :class:`PixelDiscriminator` (its 1x1 "pixel GAN").
* :func:`init_weights` — pix2pix's N(0, 0.02) initialisation.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ctseg.errors import ConfigError

NORMS = ("batch", "instance", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"norm must be one of {NORMS}, found {kind!r}")


def act_layer(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "lrelu":
        return nn.LeakyReLU(0.2, inplace=True)
    if kind == "tanh":
        return nn.Tanh()
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"activation must be relu, lrelu, tanh or none, found {kind!r}")


def conv_norm_act(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
                  norm: str = "batch", act: str = "relu") -> nn.Sequential:
    """Conv (no bias before a norm that has its own) -> norm -> activation."""
    padding = (kernel - 1) // 2 if padding is None else padding
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=norm != "batch")
    return nn.Sequential(conv, norm_layer(norm, out_ch), act_layer(act))


class Up(nn.Module):
    """x2 up-sampling: a 4x4 stride-2 transposed convolution, or nearest-neighbour resize + 3x3 convolution."""

    def __init__(self, in_ch: int, out_ch: int, *, mode: str = "deconv", norm: str = "batch", act: str = "relu",
                 dropout: float = 0.0):
        super().__init__()
        bias = norm != "batch"
        if mode == "deconv":
            self.up = nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=bias)
        elif mode == "resize":
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                    nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=bias))
        else:
            raise ConfigError(f"up mode must be deconv or resize, found {mode!r}")
        self.post = nn.Sequential(norm_layer(norm, out_ch), act_layer(act),
                                  nn.Dropout(dropout) if dropout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.up(x))


def output_activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    """sigmoid | tanh01 (tanh mapped to [0, 1]) | none (logits)."""
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "tanh01":
        return (torch.tanh(x) + 1) / 2
    if kind == "none":
        return x
    raise ConfigError(f"output activation must be sigmoid, tanh01 or none, found {kind!r}")


class StridedUNet(nn.Module):
    """Encoder of 4x4 stride-2 convolutions, decoder of x2 up-sampling, skips by concatenation.

    ``features`` are the encoder widths, one per halving (input H -> H / 2**len).
    The first encoder layer has no normalisation and neither has the innermost one
    (pix2pix: at 1x1 with batch size 1 batch norm has one value per channel). The
    decoder mirrors the encoder; its last block maps to ``out_ch`` at full resolution.
    ``bottleneck`` (optional) transforms the innermost features (it receives the
    forward's keyword arguments) and adds ``bottleneck_extra`` channels; ``decoder_hook``
    (optional) does the same before every decoder up-sampling, adding ``decoder_extra``.
    """

    def __init__(self, in_ch: int, out_ch: int, *, features: Sequence[int] = (64, 128, 256, 512, 512, 512, 512, 512),
                 up: str = "deconv", norm: str = "batch", down_act: str = "lrelu", up_act: str = "relu",
                 dropout: float = 0.0, dropout_layers: int = 3, out_act: str = "sigmoid",
                 bottleneck: nn.Module | None = None, bottleneck_extra: int = 0,
                 decoder_hook: nn.Module | None = None, decoder_extra: int = 0):
        super().__init__()
        features = list(features)
        n = len(features)
        self.down = nn.ModuleList()
        prev = in_ch
        for i, width in enumerate(features):
            plain = i == 0 or i == n - 1
            self.down.append(conv_norm_act(prev, width, 4, 2, 1, norm="none" if plain else norm, act=down_act))
            prev = width
        self.bottleneck = bottleneck
        self.up = nn.ModuleList()
        prev = features[-1] + bottleneck_extra
        for i in range(n - 1, 0, -1):  # up to the resolution of encoder level i-1, then concat its skip
            width = features[i - 1]
            drop = dropout if (n - 1 - i) < dropout_layers else 0.0
            self.up.append(Up(prev + decoder_extra, width, mode=up, norm=norm, act=up_act, dropout=drop))
            prev = width * 2
        self.final = Up(prev + decoder_extra, out_ch, mode=up, norm="none", act="none")
        self.decoder_hook = decoder_hook
        self.out_act = out_act
        self.size_multiple = 2 ** n

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        if self.bottleneck is not None:
            x = self.bottleneck(x, **kwargs)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = torch.cat([block(self._hook(x, kwargs)), skip], dim=1)
        return output_activation(self.out_act, self.final(self._hook(x, kwargs)))

    def _hook(self, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
        return x if self.decoder_hook is None else self.decoder_hook(x, **kwargs)


class PoolUNet(nn.Module):
    """The classic U-Net (Ronneberger et al.): two 3x3 conv-norm-act per level, 2x2 max-pooling down,
    2x2 transposed convolutions up, skips by concatenation, 1x1 convolution out."""

    def __init__(self, in_ch: int, out_ch: int, *, features: Sequence[int] = (64, 128, 256, 512, 1024),
                 norm: str = "batch", act: str = "relu", out_act: str = "sigmoid", dropout: float = 0.0):
        super().__init__()
        features = list(features)
        self.down = nn.ModuleList()
        prev = in_ch
        for width in features:
            self.down.append(nn.Sequential(conv_norm_act(prev, width, 3, norm=norm, act=act),
                                           conv_norm_act(width, width, 3, norm=norm, act=act)))
            prev = width
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(features[:-1]):
            self.up.append(nn.ConvTranspose2d(prev, width, 2, 2))
            self.merge.append(nn.Sequential(conv_norm_act(2 * width, width, 3, norm=norm, act=act),
                                            conv_norm_act(width, width, 3, norm=norm, act=act)))
            prev = width
        self.head = nn.Conv2d(prev, out_ch, 1)
        self.out_act = out_act
        self.size_multiple = 2 ** (len(features) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = self.drop(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return output_activation(self.out_act, self.head(x))


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: ``n_layers`` 4x4 stride-2 conv blocks, one stride-1 block, a 1-channel logit map.

    With n_layers=3 each output logit sees a 70x70 patch of the input.
    """

    def __init__(self, in_ch: int, *, features: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        layers = [nn.Conv2d(in_ch, features, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        width = features
        for i in range(1, n_layers):
            nxt = features * min(2 ** i, 8)
            layers.append(conv_norm_act(width, nxt, 4, 2, 1, norm=norm, act="lrelu"))
            width = nxt
        nxt = features * min(2 ** n_layers, 8)
        layers.append(conv_norm_act(width, nxt, 4, 1, 1, norm=norm, act="lrelu"))
        layers.append(nn.Conv2d(nxt, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PixelDiscriminator(nn.Module):
    """pix2pix's 1x1 PatchGAN ("pixel GAN"): a real/fake logit per pixel."""

    def __init__(self, in_ch: int, *, features: int = 64, norm: str = "batch"):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_ch, features, 1), nn.LeakyReLU(0.2, inplace=True),
                                 conv_norm_act(features, 2 * features, 1, norm=norm, act="lrelu"),
                                 nn.Conv2d(2 * features, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_weights(net: nn.Module, std: float = 0.02) -> nn.Module:
    """pix2pix/DCGAN initialisation: convolutions N(0, std), norm scales N(1, std), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return net


def has_batch_norm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
