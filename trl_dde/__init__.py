"""trl-dde: Direct Preference Optimization for text-to-image diffusion models with pluggable credit assignment.

The public names load lazily (as in transformers and diffusers): ``import trl_dde`` and ``trl-dde --help``
stay fast, and torch, transformers and diffusers are imported by the first name that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import _quiet  # noqa: F401  first: filters third-party log noise before those libraries are imported

__version__ = "0.1.0"

_PUBLIC = {
    "CreditAssigner": ".credit",
    "DDEConfig": ".config",
    "DDEDiffusionTrainer": ".trainer",
    "DenoisingOutputs": ".credit",
    "available_credits": ".credit",
    "credit_options": ".credit",
    "get_credit": ".credit",
    "register_credit": ".credit",
    "resolve_credit_class": ".credit",
}

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from .config import DDEConfig
    from .credit import (
        CreditAssigner,
        DenoisingOutputs,
        available_credits,
        credit_options,
        get_credit,
        register_credit,
        resolve_credit_class,
    )
    from .trainer import DDEDiffusionTrainer


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'trl_dde' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
