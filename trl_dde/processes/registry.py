"""Registry of noise processes (the PEFT-registry pattern the credit strategies use)."""

from __future__ import annotations

from typing import Callable, TypeVar

from .base import NoiseProcess

__all__ = ["available_processes", "get_process_class", "register_process"]

_ProcessType = TypeVar("_ProcessType", bound=type[NoiseProcess])
_REGISTRY: dict[str, type[NoiseProcess]] = {}


def register_process(name: str) -> Callable[[_ProcessType], _ProcessType]:
    """Class decorator that makes a ``NoiseProcess`` subclass available under ``name``."""

    def decorator(cls: _ProcessType) -> _ProcessType:
        if not (isinstance(cls, type) and issubclass(cls, NoiseProcess)):
            raise TypeError(f"register_process({name!r}) must decorate a NoiseProcess subclass, got {cls!r}.")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"A noise process named {name!r} is already registered ({_REGISTRY[name].__name__}).")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_processes() -> list[str]:
    return sorted(_REGISTRY)


def get_process_class(name: str) -> type[NoiseProcess]:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown noise process {name!r}. Available: {', '.join(available_processes())}.")
    return _REGISTRY[name]
