"""The model registry: name -> SegModel class, filled by ``@register`` in each model file.

``ctseg/models/__init__.py`` imports every model module explicitly, so the registry
is complete as soon as ``ctseg.models`` is imported; nothing is looked up by reflection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:
    from ctseg.models.base import SegModel

MODELS: dict[str, type["SegModel"]] = {}
T = TypeVar("T")


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register a SegModel subclass under ``name`` (unique)."""

    def decorate(cls):
        if name in MODELS:
            raise ValueError(f"model name {name!r} is registered twice ({MODELS[name].__module__} and {cls.__module__})")
        cls.name = name
        MODELS[name] = cls
        return cls

    return decorate


def get_model(name: str) -> type["SegModel"]:
    """The registered class for ``name``; unknown names list the known ones."""
    from ctseg.config import ConfigError

    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}") from None
