"""Random augmentation of training crops: one draw per item, one affine grid for image and target.

Convention: tensors are (C, L, L) per item or (B, C, L, L) per batch, float in [0, 1],
on any device (the grid is built where the data is). :func:`augment_pair` is one item
(the reference); :func:`augment_batch` applies each item's own draw to a whole batch,
item by item for the geometry (so every output is exactly what :func:`augment_pair`
gives on the same device) and at once for the intensity jitter (elementwise float32
arithmetic in the same order, so bit-identical on the CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ctseg.config import AugmentConfig

@dataclass(frozen=True)
class AugmentParams:
    """One draw of the random augmentation (angles in degrees, shift in output fractions)."""

    flip_x: bool = False
    flip_y: bool = False
    angle: float = 0.0
    zoom: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    @classmethod
    def draw(cls, config: AugmentConfig, rng: np.random.Generator) -> "AugmentParams":
        return cls(flip_x=bool(config.flip and rng.random() < 0.5), flip_y=bool(config.flip and rng.random() < 0.5),
                   angle=float(rng.uniform(-config.rotate_deg, config.rotate_deg)),
                   zoom=float(rng.uniform(*config.scale)),
                   shift_x=float(rng.uniform(-config.shift, config.shift)),
                   shift_y=float(rng.uniform(-config.shift, config.shift)),
                   brightness=float(rng.uniform(-config.intensity, config.intensity)),
                   contrast=float(rng.uniform(-config.intensity, config.intensity)))


def geometric_transform(x: torch.Tensor, params: AugmentParams, size: int, mode: str) -> torch.Tensor:
    """Resample ``x`` (C, L, L) to (C, size, size) under the flips/rotation/zoom/shift of ``params``.

    The output is the centre ``size`` of the input when ``params`` is the identity
    (exactly, when L - size is even: output pixels land on input pixel centres), so
    a crop with a margin lets rotations fill the corners with real pixels.
    """
    length = x.shape[-1]
    base = size / length
    angle = math.radians(params.angle)
    cos, sin = math.cos(angle), math.sin(angle)
    fx, fy = (-1.0 if params.flip_x else 1.0), (-1.0 if params.flip_y else 1.0)
    k = base / params.zoom
    theta = torch.tensor([[[k * cos * fx, -k * sin * fy, 2 * params.shift_x * base],
                           [k * sin * fx, k * cos * fy, 2 * params.shift_y * base]]], dtype=torch.float32,
                         device=x.device)
    grid = F.affine_grid(theta, [1, x.shape[0], size, size], align_corners=False)
    return F.grid_sample(x[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


def augment_pair(image: torch.Tensor, target: torch.Tensor, size: int, params: AugmentParams,
                 soft_target: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The same geometry on image (bilinear) and target (nearest, bilinear for soft masks), then intensity."""
    image = geometric_transform(image, params, size, "bilinear")
    target = geometric_transform(target, params, size, "bilinear" if soft_target else "nearest")
    image = (image - 0.5) * (1 + params.contrast) + 0.5 + params.brightness
    return image.clamp_(0, 1), target.clamp_(0, 1)


def augment_batch(image: torch.Tensor, target: torch.Tensor, size: int, params: Sequence[AugmentParams],
                  soft_target: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`augment_pair` for a batch (B, C, L, L), item ``b`` under ``params[b]``: -> (B, C, size, size)."""
    if len(params) != image.shape[0]:
        raise ValueError(f"augment_batch: one draw per item must be given, found {len(params)} for {image.shape[0]}")
    mode = "bilinear" if soft_target else "nearest"
    image = torch.stack([geometric_transform(x, p, size, "bilinear") for x, p in zip(image, params)])
    target = torch.stack([geometric_transform(t, p, size, mode) for t, p in zip(target, params)])
    shape = (len(params), 1, 1, 1)
    contrast = torch.tensor([1 + p.contrast for p in params], dtype=torch.float32, device=image.device).view(shape)
    bright = torch.tensor([p.brightness for p in params], dtype=torch.float32, device=image.device).view(shape)
    image = (image - 0.5) * contrast + 0.5 + bright
    return image.clamp_(0, 1), target.clamp_(0, 1)
