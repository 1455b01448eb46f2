"""Building models: from a configuration's layers, from a checkpoint, and as frozen parts of other models.

This module sits above ctseg.config (the dataclasses), the model files and
ctseg.checkpoint (the file format), and is the one place that puts them together:

* ``MODELS``: every registered model, complete because every model file is imported
  here (``MODEL_MODULES``, explicitly: no reflection); :func:`get_model` looks one up;
* :func:`build_config` resolves a TrainConfig from its layers with the model's
  ``defaults()`` and presets (see ctseg.config for the order);
* :func:`build_model` constructs a model; :func:`load_pretrained` is provided to the
  models on import (ctseg.models.base.provide_pretrained_loader), so a model built on
  another run's networks (CasGAN's SR stage, a soft-mask prior) loads them without the
  model files importing this module;
* :func:`load_model` rebuilds a trained model from a checkpoint; :func:`select_device`
  picks the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ctseg import checkpoint as ckpt
from ctseg.config import TrainConfig, merge_layers
from ctseg.errors import CheckpointError, ConfigError
from ctseg.models import (casgan, crgan, ctumorgan, lgan_basic, lgan_ef, lgan_lf, lgan_product, lgan_regression,
                          segan, softgan, srgan, unet)
from ctseg.models.base import SegModel, provide_pretrained_loader
from ctseg.models.registry import check_name, registered

# Every model file, one per registered name; importing them fills the registry.
MODEL_MODULES = (unet, ctumorgan, segan, crgan, lgan_basic, lgan_product, lgan_ef, lgan_lf, lgan_regression, srgan,
                 softgan, casgan)
MODELS: dict[str, type[SegModel]] = registered()


def get_model(name: str) -> type[SegModel]:
    """The registered class for ``name``; unknown names list the known ones."""
    return MODELS[check_name(name)]


def build_config(*, model: str, layers: list[Mapping], preset: str | None = None) -> TrainConfig:
    """Resolve a config: dataclass defaults < model defaults < preset < ``layers`` in order.

    ``layers`` are dicts (a YAML file, then flags, then ``--set`` assignments).
    """
    model_cls = get_model(model)
    chosen: list[Mapping] = []
    if preset is not None:
        presets = model_cls.presets()
        if preset not in presets:
            raise ConfigError(f"model {model!r} has no preset {preset!r}; it has: {', '.join(sorted(presets)) or 'none'}")
        chosen.append(presets[preset])
    data = merge_layers([{"model": model}, model_cls.defaults(), *chosen, *layers])
    if data.get("model", model) != model:
        raise ConfigError(f"config names model {data['model']!r} but {model!r} was asked")
    data["model"] = model
    return TrainConfig.from_dict(data)


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this rank's GPU) when available, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked but CUDA is not available")
    return device


def build_model(config: TrainConfig, in_channels: int) -> SegModel:
    """A new (untrained) model of ``config``."""
    return get_model(config.model)(config, in_channels)


def load_model(checkpoint: str | Path, device: str = "auto") -> tuple[SegModel, TrainConfig, dict]:
    """(model in eval mode on the device, its TrainConfig, the checkpoint dict) from a checkpoint file."""
    data = ckpt.load(checkpoint)
    config = TrainConfig.from_dict(data["config"])
    model = build_model(config, int(data["in_channels"]))
    for name, state in data["networks"].items():
        model.nets[name].load_state_dict(state)
    model.to(select_device(device))
    model.load_extra_state(data.get("model_state", {}))
    return model.eval(), config, data


def load_pretrained(path: str | Path, *, models: tuple[str, ...], role: str) -> SegModel:
    """A trained model from another run's checkpoint (eval mode, on the CPU) to use as a frozen part.

    For models built on another run's networks: CasGAN's super-resolution stage (a
    ``srgan`` run), a soft-mask prior (a ``softgan``/``casgan`` run). ``role`` names the
    option that asked for it, for the error when the checkpoint is of another model.
    """
    path = Path(path)
    model, config, _ = load_model(path, device="cpu")
    if config.model not in models:
        raise CheckpointError(f"{path}: {role} needs a checkpoint of {' or '.join(models)}, "
                              f"found one of {config.model!r}")
    return model


provide_pretrained_loader(load_pretrained)
