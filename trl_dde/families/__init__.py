"""Model families (one module each, registered by pipeline class). Importing this package registers the built-in ones."""

from .base import KOHYA_WEIGHTS_NAME, LORA_WEIGHTS_NAME, ModelFamily, cast_module, unwrap_model
from .flux import FluxFamily
from .registry import available_families, family_class_for, load_pipeline, register_family, scheduler_config_of
from .sd import StableDiffusionFamily
from .sd3 import StableDiffusion3Family
from .sdxl import StableDiffusionXLFamily

__all__ = [
    "FluxFamily",
    "KOHYA_WEIGHTS_NAME",
    "LORA_WEIGHTS_NAME",
    "ModelFamily",
    "StableDiffusion3Family",
    "StableDiffusionFamily",
    "StableDiffusionXLFamily",
    "available_families",
    "cast_module",
    "family_class_for",
    "load_pipeline",
    "register_family",
    "scheduler_config_of",
    "unwrap_model",
]
