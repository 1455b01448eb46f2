"""The model catalogue and registry: every model name with its one-line description, and ``@register``.

``CATALOGUE`` is the one place a model's name and description are written: ``ctseg
models`` lists it without importing torch, and ``@register("<name>")`` in the model's
file refuses names not in it and gives the class its ``name`` and ``description``.
This module imports no model (the model files import it); ``ctseg.build`` imports
every model file, so its ``MODELS`` is complete, and a test checks that the catalogue
and the registered classes name the same models. Nothing is looked up by reflection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from ctseg.errors import ConfigError
from lkbase.choices import unknown
from lkbase.errors import ParameterError

if TYPE_CHECKING:
    from ctseg.models.base import SegModel

CATALOGUE: dict[str, str] = {
    "unet": "U-Net baseline; loss mae | mse | weighted_ce | dice | mse_dice (CTumorGAN's loss study)",
    "ctumorgan": "CTumorGAN: strided U-Net generator with noise z, PatchGAN on (CT, mask) incl. wrong-mask pairs",
    "segan": "SegAN: strided encoder + resize decoder segmentor, critic with multi-scale L1 loss (S1-1C/S3-1C/S3-3C)",
    "crgan": ("Conditional generative refinement GAN: U-Net G, pixel/Patch D on (CT, mask), refinement R "
              "predicting FP/FN maps; patient-wise batch norm; optional bidirectional ConvLSTM"),
    "lgan-basic": "LGAN (WGAN lung segmentation), critic on the mask alone",
    "lgan-product": "LGAN, critic on mask * CT",
    "lgan-ef": "LGAN, early-fusion critic on (CT, mask) as channels",
    "lgan-lf": "LGAN, late-fusion critic: CT and mask branches concatenated before the common layers",
    "lgan-regression": "LGAN, two-branch regression critic on (prediction, truth) estimating the EM distance",
    "softgan": "SoftGAN: strided encoder-decoder (no pooling) for soft masks, pixel discriminator, MSE + 100 L1",
    "srgan": "SRGAN x4 super-resolution of crops (SRResNet + SRGAN discriminator), CasGAN's first stage",
    "casgan": "CasGAN: a trained srgan (x4, frozen by default) feeding SoftGAN; soft masks on the stored grid",
}

_REGISTERED: dict[str, type["SegModel"]] = {}
T = TypeVar("T")


def check_name(name: str) -> str:
    """``name`` when the catalogue has it; else ConfigError listing the known names."""
    if name not in CATALOGUE:
        raise ConfigError(unknown("model", name, sorted(CATALOGUE)))
    return name


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register a SegModel subclass under ``name`` (in the catalogue, unique)."""

    def decorate(cls):
        if name not in CATALOGUE:
            raise ParameterError(f"model name {name!r} ({cls.__module__}) is not in ctseg.models.registry.CATALOGUE")
        if name in _REGISTERED:
            raise ParameterError(f"model name {name!r} is registered twice ({_REGISTERED[name].__module__} and "
                                 f"{cls.__module__})")
        cls.name, cls.description = name, CATALOGUE[name]
        _REGISTERED[name] = cls
        return cls

    return decorate


def registered() -> dict[str, type["SegModel"]]:
    """The classes registered so far (complete once ctseg.build, which imports every model file, is imported)."""
    return dict(_REGISTERED)
