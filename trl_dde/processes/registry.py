"""Registry of noise processes (the PEFT-registry pattern the credit strategies use)."""

from __future__ import annotations

from typing import Callable, TypeVar

from ..registry import Registry
from .base import NoiseProcess

__all__ = ["available_processes", "get_process_class", "register_process"]

_ProcessType = TypeVar("_ProcessType", bound=type[NoiseProcess])
PROCESSES: Registry = Registry("noise process", NoiseProcess)


def register_process(name: str) -> Callable[[_ProcessType], _ProcessType]:
    """Class decorator that makes a ``NoiseProcess`` subclass available under ``name``."""
    return PROCESSES.register(name)


def available_processes() -> list[str]:
    return PROCESSES.names()


def get_process_class(name: str) -> type[NoiseProcess]:
    return PROCESSES.get(name)
