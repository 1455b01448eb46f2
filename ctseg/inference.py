"""How a batch of whole slices goes through a model: flips, sliding windows, batch size.

Convention: inputs are float tensors (n, C, H, W) in [0, 1] on the model's device; outputs
are probabilities (n, labels, H, W). :class:`InferenceOptions` holds the choices:

* ``tta``: flip test-time augmentation, the mean of the model on the slice and on its
  left-right and up-down flips (each flipped back);
* ``window``: sliding windows of the training crop size for crop-trained models, stride
  ``size * (1 - overlap)``, each window's output weighted by a Gaussian (sigma = size / 8,
  as nnU-Net) so that window borders count little; the whole slice at once otherwise;
* ``batch_size``: slices per forward; 0 picks it from the free accelerator memory
  (:func:`auto_batch_size`; 16 on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, kw_only=True)
class InferenceOptions:
    tta: bool = False
    window: bool = False
    overlap: float = 0.5
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), found {self.overlap}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0: by memory), found {self.batch_size}")


def gaussian_weight(size: int, device) -> torch.Tensor:
    """(size, size) Gaussian, sigma size / 8, peak 1, floored at 1e-3 (no window counts zero)."""
    ax = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(ax ** 2) / (2 * (size / 8) ** 2))
    return (g[:, None] * g[None, :]).clamp_min(1e-3)


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride)) + [length - size]
    return sorted(set(starts))


def sliding_window(forward, x: torch.Tensor, size: int, overlap: float) -> torch.Tensor:
    """``forward`` over ``size`` windows of ``x`` (padded when smaller), Gaussian-blended."""
    n, _, h, w = x.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    hh, ww = x.shape[-2:]
    stride = max(int(size * (1 - overlap)), 1)
    weight = gaussian_weight(size, x.device)
    out = acc = None
    for y0 in _starts(hh, size, stride):
        for x0 in _starts(ww, size, stride):
            prob = forward(x[:, :, y0:y0 + size, x0:x0 + size]).float()
            if out is None:
                out = torch.zeros((n, prob.shape[1], hh, ww), device=x.device)
                acc = torch.zeros((hh, ww), device=x.device)
            out[:, :, y0:y0 + size, x0:x0 + size] += prob * weight
            acc[y0:y0 + size, x0:x0 + size] += weight
    return (out / acc)[:, :, :h, :w]


def with_flips(forward, x: torch.Tensor) -> torch.Tensor:
    """Mean of ``forward`` on x and its flips along x and y (flipped back)."""
    total = forward(x).float()
    for dims in ((-1,), (-2,)):
        total = total + forward(torch.flip(x, dims)).float().flip(dims)
    return total / 3


def auto_batch_size(model, channels: int, h: int, w: int, device) -> int:
    """Slices per forward that fit in half the free accelerator memory (one slice measured); 16 on CPU."""
    if device.type != "cuda":
        return 16
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        model.predict(torch.zeros((1, channels, h, w), device=device))
    per_slice = max(torch.cuda.max_memory_allocated(device) - before, 1)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(256, free * 0.5 // per_slice)))
