"""A trained soft-mask model's output as an extra input channel of another segmentor.

Wang et al.'s CE-Net++ / CasGAN++ experiment (arXiv:2007.14556): the soft mask of a
trained SoftGAN is given to a second segmentor together with the image, as a prior.
:class:`WithPrior` wraps the second segmentor's network: ``forward(image)`` runs the
frozen prior model's ``predict`` on the image and feeds ``cat([image, prior], 1)`` to
the wrapped network. The prior's networks live inside the wrapper, so they are saved
in every checkpoint of the run, moved with it, and never trained (requires_grad off,
always in eval mode); the prior checkpoint is read when the model is built (for its
architecture). A model opts in with a ``prior_checkpoint`` option (``unet`` has one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ctseg.errors import ConfigError

PRIOR_MODELS = ("softgan", "casgan")


class WithPrior(nn.Module):
    """``net(cat([image, prior.predict(image)], 1))`` with ``prior`` a frozen, trained SegModel."""

    def __init__(self, prior, net: nn.Module):
        super().__init__()
        self.prior_nets = nn.ModuleDict(prior.nets)  # the same modules prior.predict uses
        self.prior_nets.requires_grad_(False)
        self.net = net
        self._prior = [prior]  # a list: the SegModel is not a module and must not be registered
        self.size_multiple = max(getattr(net, "size_multiple", 1), prior.size_multiple)

    def train(self, mode: bool = True) -> "WithPrior":
        super().train(mode)
        self.prior_nets.eval()  # the prior is fixed: batch-norm statistics included
        return self

    def prior(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._prior[0].predict(image).to(image.dtype)

    def forward(self, image: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.net(torch.cat([image, self.prior(image)], dim=1), **kwargs)


def load_prior(pretrained: Callable[..., object], path: str | Path, in_channels: int, config) -> object:
    """The trained soft-mask model of ``path`` (eval, CPU), checked to take this run's inputs.

    ``pretrained`` is the building model's :meth:`SegModel.pretrained` (the loader ctseg.build provides).
    """
    prior = pretrained(path, models=PRIOR_MODELS, role="prior_checkpoint")
    theirs = prior.config
    if prior.in_channels != in_channels or (theirs.channels, theirs.context) != (config.channels, config.context):
        raise ConfigError(f"{path}: the prior takes {prior.in_channels} input channels (channels {theirs.channels}, "
                          f"context {theirs.context}); this run gives {in_channels} (channels {config.channels}, "
                          f"context {config.context})")
    if config.size % prior.size_multiple:
        raise ConfigError(f"{path}: the prior takes sizes in multiples of {prior.size_multiple}; this run's size "
                          f"is {config.size}")
    if prior.config.crop == "resize" or config.crop == "resize":
        if prior.config.size != config.size:
            raise ConfigError(f"{path}: the prior was trained on slices resized to {prior.config.size}, "
                              f"this run resizes to {config.size}")
    return prior
