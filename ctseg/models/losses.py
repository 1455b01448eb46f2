"""Loss functions shared by the models (float32, outside autocast)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctseg.errors import ConfigError


def soft_dice(pred: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over each sample and channel, averaged: 2|P.T| / (|P| + |T|), smoothed by ``eps``.

    ``eps`` (in pixels) makes an empty prediction of an empty truth score 1 and
    keeps the gradient finite.
    """
    dims = tuple(range(2, pred.ndim))
    inter = (pred * target).sum(dims)
    total = pred.sum(dims) + target.sum(dims)
    return ((2 * inter + eps) / (total + eps)).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1 - soft_dice(pred, target)


def weighted_bce(pred: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None,
                 max_weight: float = 100.0) -> torch.Tensor:
    """Class-weighted binary cross-entropy on probabilities.

    Foreground pixels weigh ``pos_weight``; ``None`` uses the batch's background /
    foreground ratio (capped at ``max_weight``), the usual remedy for small tumours.
    """
    pred = pred.clamp(1e-6, 1 - 1e-6)
    if pos_weight is None:
        fg = target.sum()
        pos_weight = float(((target.numel() - fg) / fg).clamp(max=max_weight)) if fg > 0 else 1.0
    weight = 1 + (pos_weight - 1) * target
    return F.binary_cross_entropy(pred, target, weight=weight)


STUDY_LOSSES = ("mae", "mse", "weighted_ce", "dice", "mse_dice")  # CTumorGAN Table 2


def study_loss(kind: str, pred: torch.Tensor, target: torch.Tensor, *, pos_weight: float | None = None,
               mse_weight: float = 1.0, dice_weight: float = 1.0) -> torch.Tensor:
    """One of the losses CTumorGAN's Table 2 compares (Sec. 3.1), on probabilities: ``mae`` (L1), ``mse``
    (L2), ``weighted_ce`` (:func:`weighted_bce`, "weighted in this work"), ``dice``, ``mse_dice``."""
    if kind == "mae":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "weighted_ce":
        return weighted_bce(pred, target, pos_weight)
    if kind == "dice":
        return dice_loss(pred, target)
    if kind == "mse_dice":
        return mse_weight * F.mse_loss(pred, target) + dice_weight * dice_loss(pred, target)
    raise ConfigError(f"loss must be one of {STUDY_LOSSES}, found {kind!r}")


def gan_loss(logits: torch.Tensor, real: bool, kind: str = "bce") -> torch.Tensor:
    """The discriminator criterion against the all-real or all-fake label: bce (vanilla) or lsgan."""
    label = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, label)
    if kind == "lsgan":
        return F.mse_loss(logits, label)
    raise ConfigError(f"gan loss must be bce or lsgan, found {kind!r}")
