"""The interface the training loop drives, and what it hands to a model each step.

A model (one file under ``ctseg/models/``) subclasses :class:`SegModel` and says:

* ``build()`` — its networks by name (``{"g": ..., "d": ...}``); each gets an optimiser
  (``optimizers`` in the config, defaults from ``defaults()``), is checkpointed, moved
  to the device, converted to SyncBatchNorm and wrapped in DDP by the loop;
* ``train_step(batch, ctx)`` — one optimisation step in the order the method needs
  (e.g. discriminator on detached fakes, then generator with the discriminator frozen;
  several critic steps; three networks in turn), returning scalars to log;
* ``predict(image)`` — probabilities in [0, 1], (B, labels, H, W);
* ``defaults()`` / ``paper_preset()`` — config layers (see ctseg.config);
* ``validation(config, crops, amp)`` — optional, for a model whose output is not a mask.

What a model needs from outside the models is handed to it, so that no model file imports
the data, checkpoint or prediction modules above it: ctseg.build, when imported, provides
the loader of other runs' trained models (:func:`provide_pretrained_loader`; a model calls
``self.pretrained(...)``: CasGAN's SR stage, a soft-mask prior), and the loop gives
``validation`` a callable returning the validation crops.

Inside ``train_step`` a model calls ``self.net(name)`` for a network it trains (the DDP
wrapper under torchrun), ``with self.frozen(name) as d:`` for one it only differentiates
through (requires_grad off, the plain module so DDP expects no gradients), runs forward
passes under ``ctx.amp.autocast()`` and updates with ``ctx.update(name, loss)`` (scaled
backward, optimiser step, scaler update; a no-op for frozen networks).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from ctseg.config import OptimizerConfig, TrainConfig
from ctseg.errors import ConfigError


# ---- mixed precision -----------------------------------------------------------------------------
class Amp:
    """Autocast and one GradScaler per network, shared by the loop and the models.

    ``mode`` auto: bf16 on CUDA where supported (no scaler needed), else fp16 with
    GradScalers; off on CPU. One scaler per network because GAN networks step
    separately, each with its own loss scale.
    """

    def __init__(self, device: torch.device, mode: str, names: list[str]):
        self.device_type = device.type
        self.dtype = resolve_amp_dtype(device, mode)
        fp16 = self.dtype == torch.float16
        self.scalers = {n: torch.amp.GradScaler(self.device_type, enabled=fp16) for n in names}

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, name: str, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
             after: Callable[[], None] | None = None) -> None:
        """zero_grad, (scaled) backward, step, scaler update; ``after`` runs after the step (e.g. clipping)."""
        scaler = self.scalers[name]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if after is not None:
            after()

    def state_dict(self) -> dict:
        return {n: s.state_dict() for n, s in self.scalers.items()}

    def load_state_dict(self, state: Mapping) -> None:
        for name, scaler_state in state.items():
            if name in self.scalers and scaler_state:
                self.scalers[name].load_state_dict(scaler_state)


def resolve_amp_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if device.type != "cuda":
        raise ConfigError("amp fp16 needs a CUDA device; use amp bf16 or off on the CPU")
    return torch.float16


# ---- what a step gets ------------------------------------------------------------------------------
@dataclass
class StepContext:
    """Per-step state handed to ``train_step``: optimisers, AMP, loss weights of the phase, counters."""

    optimizers: Mapping[str, torch.optim.Optimizer]
    amp: Amp
    weights: Mapping[str, float]
    step: int = 0
    epoch: int = 0
    trainable: frozenset[str] = field(default_factory=frozenset)

    def updates(self, name: str) -> bool:
        """Whether network ``name`` is trained this run (not listed in ``frozen``)."""
        return name in self.trainable

    def update(self, name: str, loss: torch.Tensor, after: Callable[[], None] | None = None) -> None:
        if self.updates(name):
            self.amp.step(name, loss, self.optimizers[name], after)

    def weight(self, key: str) -> float:
        try:
            return float(self.weights[key])
        except KeyError:
            raise ConfigError(f"loss weight {key!r} is not set (loss_weights: {dict(self.weights)})") from None


def build_optimizer(params, config: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimiser ``config`` names, over ``params``."""
    name = config.name
    if name == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                weight_decay=config.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                 weight_decay=config.weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, alpha=config.alpha, eps=config.eps,
                                   momentum=config.momentum, weight_decay=config.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=config.lr, rho=config.rho, eps=config.eps,
                                    weight_decay=config.weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}")


# ---- other runs' models ------------------------------------------------------------------------------
_PRETRAINED_LOADER: list[Callable[..., "SegModel"]] = []  # the one loader, provided by ctseg.build


def provide_pretrained_loader(load: Callable[..., "SegModel"]) -> None:
    """Install ``load(path, models=..., role=...)``, how models load another run's trained model.

    ctseg.build calls it when imported (with its ``load_pretrained``), as ``@register``
    fills the registry: the model files never import the checkpoint-loading code above them.
    """
    _PRETRAINED_LOADER[:] = [load]


# ---- the model interface ---------------------------------------------------------------------------
class SegModel:
    """Base class of every registered model; see the module docstring."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: what predict() returns: "mask" (per-target probabilities) or "image" (srgan)
    output_kind: ClassVar[str] = "mask"
    #: model_options and their defaults; unknown options are refused
    options_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: TrainConfig, in_channels: int):
        self.config = config
        self.in_channels = in_channels
        self.out_channels = len(config.target)
        unknown = sorted(set(config.model_options) - set(self.options_defaults))
        if unknown:
            raise ConfigError(f"model {self.name}: unknown model_options {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(self.options_defaults)) or 'none'}")
        self.options = {**self.options_defaults, **config.model_options}
        self.nets: dict[str, nn.Module] = self.build()
        self._wrapped: dict[str, nn.Module] = dict(self.nets)
        unknown_frozen = sorted(set(config.frozen) - set(self.nets))
        if unknown_frozen:
            raise ConfigError(f"frozen: model {self.name} has no network {', '.join(unknown_frozen)} "
                              f"(it has {', '.join(self.nets)})")

    # ---- to override -------------------------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """One step; returns scalars to log (``scalar(...)``: detached tensors, synced only when logged)."""
        raise NotImplementedError

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, labels, H, W) for inputs (B, C, H, W) in [0, 1]; eval mode, no grad."""
        raise NotImplementedError

    @classmethod
    def defaults(cls) -> dict:
        """Config layer applied before any preset: optimisers, loss weights, model options."""
        return {"model_options": dict(cls.options_defaults)}

    @classmethod
    def paper_preset(cls) -> dict:
        """Config layer reproducing the paper's training set-up (``--preset paper``)."""
        return {}

    @classmethod
    def presets(cls) -> dict[str, dict]:
        return {"paper": cls.paper_preset()}

    def extra_state(self) -> dict:
        """Model state beyond networks (e.g. a bank of masks); tensors and plain types only."""
        return {}

    def load_extra_state(self, state: Mapping) -> None:
        pass

    def validation(self, config: TrainConfig, crops: Callable[[], Sequence[Mapping[str, torch.Tensor]]],
                   amp: "Amp | None") -> dict | None:
        """Validation metrics replacing the loop's per-case Dice (None, the default: Dice).

        For models whose output is not a mask (``srgan``: PSNR/SSIM against bicubic).
        ``crops()`` gives the validation cases' held-out crops (the training crop mode, no
        jitter, no augmentation; ctseg.data.held_out_crops), made only when called. The
        dict's ``score`` (higher is better) is tracked for best.pt and early stopping as
        ``dice`` is; its numbers are logged as ``val/<key>``.
        """
        return None

    def validation_outputs(self) -> dict[str, dict]:
        """Other outputs validated and evaluated next to the main one: name -> model_options to set.

        crgan: ``{"g": {"predict": "g"}}``, G alone next to the refined output (logged as ``dice_g``).
        """
        return {}

    @contextlib.contextmanager
    def options_set(self, options: Mapping[str, Any]) -> Iterator["SegModel"]:
        """The model with ``options`` set in ``self.options`` for the block, restored after."""
        saved = dict(self.options)
        self.options.update(options)
        try:
            yield self
        finally:
            self.options.clear()
            self.options.update(saved)

    def pretrained(self, path, *, models: tuple[str, ...], role: str) -> "SegModel":
        """Another run's trained model (eval, CPU) to use as a frozen part, by the loader ctseg.build provides.

        ``models`` are the model names accepted, ``role`` the option that asked (for errors).
        """
        if not _PRETRAINED_LOADER:
            raise ConfigError(f"model {self.name}: {role} needs another run's model; import ctseg.build, "
                              "which provides the loader")
        return _PRETRAINED_LOADER[0](path, models=models, role=role)

    # ---- used by the loop ---------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return self.nets

    @property
    def size_multiple(self) -> int:
        """Input sizes must be multiples of this (the largest down-sampling of any network)."""
        return max(getattr(net, "size_multiple", 1) for net in self.nets.values())

    def optimizers(self, config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per trainable network, from ``config.optimizers[name]``."""
        missing = sorted(set(self.nets) - set(config.optimizers) - set(config.frozen))
        if missing:
            raise ConfigError(f"model {self.name}: no optimizer configured for network(s) {', '.join(missing)}")
        return {name: build_optimizer(net.parameters(), config.optimizers[name])
                for name, net in self.nets.items() if name not in config.frozen}

    def wrap(self, wrapper: Callable[[str, nn.Module], nn.Module]) -> None:
        """Replace the trainable view of each network (the loop wraps them in DDP)."""
        self._wrapped = {name: wrapper(name, net) for name, net in self.nets.items()}

    def to(self, device: torch.device) -> "SegModel":
        for net in self.nets.values():
            net.to(device)
        return self

    def train(self, mode: bool = True) -> "SegModel":
        for net in self.nets.values():
            net.train(mode)
        return self

    def eval(self) -> "SegModel":
        return self.train(False)

    @property
    def device(self) -> torch.device:
        return next(p.device for net in self.nets.values() for p in net.parameters())

    # ---- used by train_step -------------------------------------------------------------------------
    def net(self, name: str) -> nn.Module:
        """Network ``name`` for a pass whose gradients train it (the DDP wrapper when distributed)."""
        return self._wrapped[name]

    @contextlib.contextmanager
    def frozen(self, name: str) -> Iterator[nn.Module]:
        """Network ``name`` with requires_grad off, for a pass that trains another network through it."""
        net = self.nets[name]
        flags = [p.requires_grad for p in net.parameters()]
        for p in net.parameters():
            p.requires_grad_(False)
        try:
            yield net
        finally:
            for p, flag in zip(net.parameters(), flags):
                p.requires_grad_(flag)


def scalar(value: torch.Tensor | float) -> torch.Tensor:
    """A loggable value: detached, float32, left on its device (the loop syncs only when it logs)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float()
    return torch.tensor(float(value))
