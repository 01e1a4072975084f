"""Registry of model families, and loading a pipeline together with its family."""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch
from diffusers import DiffusionPipeline

from ..registry import Registry
from .base import ModelFamily

__all__ = ["available_families", "family_class_for", "load_pipeline", "register_family", "scheduler_config_of"]

_FamilyType = TypeVar("_FamilyType", bound=type[ModelFamily])
FAMILIES: Registry = Registry("model family", ModelFamily)


def register_family(name: str) -> Callable[[_FamilyType], _FamilyType]:
    """Class decorator that makes a ``ModelFamily`` subclass available for its ``pipeline_class``."""
    return FAMILIES.register(name)


def available_families() -> list[str]:
    return FAMILIES.names()


def _supported() -> str:
    return ", ".join(f"{FAMILIES.get(name).pipeline_class.__name__} ({name})" for name in FAMILIES.names())


def family_class_for(pipeline: DiffusionPipeline | str | os.PathLike, revision: str | None = None) -> type[ModelFamily]:
    """The family of a pipeline instance, or of a hub id / folder (read from its ``model_index.json`` only)."""
    if isinstance(pipeline, DiffusionPipeline):
        class_name = type(pipeline).__name__
        matches = [cls for cls in FAMILIES.classes() if isinstance(pipeline, cls.pipeline_class)]
    else:
        location = str(pipeline)
        if location.startswith((".", "/", "~")) and not os.path.isfile(os.path.join(os.path.expanduser(location),
                                                                                    "model_index.json")):
            raise FileNotFoundError(f"{location} is not a pipeline folder: it has no model_index.json (a folder written "
                                    "by pipeline.save_pretrained(), or a Hub id such as "
                                    "'stable-diffusion-v1-5/stable-diffusion-v1-5').")
        class_name = DiffusionPipeline.load_config(pipeline, revision=revision).get("_class_name")
        matches = [cls for cls in FAMILIES.classes() if cls.pipeline_class.__name__ == class_name]
    if not matches:
        raise ValueError(f"{class_name} is not supported; trl-dde trains {_supported()}.")
    return matches[0]


def load_pipeline(
    model: str | os.PathLike | DiffusionPipeline,
    torch_dtype: torch.dtype | None = None,
    variant: str | None = None,
    revision: str | None = None,
) -> ModelFamily:
    """The family of ``model`` wrapping its pipeline: an instance is used as is; a hub id or a folder saved with
    ``save_pretrained`` is loaded with the family's ``from_pretrained`` arguments (no safety checker, ...)."""
    family = family_class_for(model, revision=revision)
    if not isinstance(model, DiffusionPipeline):
        kwargs = {"torch_dtype": torch_dtype, "variant": variant, "revision": revision}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        model_index = DiffusionPipeline.load_config(model, revision=revision)
        model = family.pipeline_class.from_pretrained(model, **kwargs, **family.from_pretrained_kwargs(model_index))
    return family(model)


def scheduler_config_of(model: str | os.PathLike | DiffusionPipeline, revision: str | None = None) -> dict:
    """The scheduler config of a pipeline instance, or of a hub id / folder (its ``scheduler/`` json only)."""
    if isinstance(model, DiffusionPipeline):
        return dict(model.scheduler.config)
    from diffusers import DDPMScheduler  # any scheduler class reads the raw scheduler_config.json

    return DDPMScheduler.load_config(model, subfolder="scheduler", revision=revision)
