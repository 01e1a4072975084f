"""Loading diffusion pipelines, encoding prompts, attaching LoRA and running the reference model."""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Iterator

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params

__all__ = [
    "SUPPORTED_PIPELINES",
    "adapters_disabled",
    "cast_module",
    "encode_prompts",
    "load_pipeline",
    "load_reference_unet",
    "prepare_unet",
]

SUPPORTED_PIPELINES = (StableDiffusionPipeline,)


def load_pipeline(
    model: str | os.PathLike | DiffusionPipeline,
    torch_dtype: torch.dtype | None = None,
    variant: str | None = None,
    revision: str | None = None,
) -> DiffusionPipeline:
    """A Stable Diffusion pipeline from a hub id, a local folder saved with ``save_pretrained``, or an instance.

    The safety checker is never loaded: training does not use it.
    """
    if isinstance(model, DiffusionPipeline):
        pipeline = model
    else:
        kwargs = {"torch_dtype": torch_dtype, "variant": variant, "revision": revision}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        class_name = DiffusionPipeline.load_config(model, revision=revision).get("_class_name")
        if class_name == StableDiffusionPipeline.__name__:
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipeline = DiffusionPipeline.from_pretrained(model, **kwargs)
    if not isinstance(pipeline, SUPPORTED_PIPELINES):
        supported = ", ".join(cls.__name__ for cls in SUPPORTED_PIPELINES)
        raise ValueError(f"{type(pipeline).__name__} is not supported; trl-dde trains {supported}.")
    return pipeline


def cast_module(module: torch.nn.Module, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.nn.Module:
    """``module.to(device, dtype)``, skipping the cast (and diffusers' warning about it) when nothing changes."""
    if device is not None:
        module.to(device=device)
    if module.dtype != dtype:
        module.to(dtype=dtype)
    return module


@torch.no_grad()
def encode_prompts(pipeline: DiffusionPipeline, input_ids: torch.Tensor) -> torch.Tensor:
    """Text-encoder hidden states that condition the UNet (SD1.5: the last hidden state)."""
    text_encoder = pipeline.text_encoder
    return text_encoder(input_ids.to(text_encoder.device))[0]


def prepare_unet(unet: UNet2DConditionModel, peft_config=None, weight_dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """Make the UNet trainable: LoRA adapters (fp32) on frozen ``weight_dtype`` weights, or every weight in fp32."""
    if peft_config is None:
        cast_module(unet, torch.float32)
        unet.requires_grad_(True)
    else:
        unet.requires_grad_(False)
        cast_module(unet, weight_dtype)
        unet.add_adapter(peft_config)
        cast_training_params(unet, dtype=torch.float32)  # LoRA weights stay fp32 under mixed precision
    unet.train()
    return unet


def load_reference_unet(
    unet: UNet2DConditionModel, ref_model: UNet2DConditionModel | str | os.PathLike | None, weight_dtype: torch.dtype
) -> UNet2DConditionModel:
    """The frozen reference for full fine-tuning: the user's ``ref_model`` (instance, UNet folder or pipeline
    folder) or a copy of ``unet`` taken before training, in ``weight_dtype``."""
    if ref_model is None:
        reference = copy.deepcopy(unet)
    elif isinstance(ref_model, UNet2DConditionModel):
        reference = ref_model
    else:
        subfolder = "unet" if os.path.isdir(os.path.join(ref_model, "unet")) else None
        reference = UNet2DConditionModel.from_pretrained(ref_model, subfolder=subfolder)
    reference.requires_grad_(False)
    return cast_module(reference, weight_dtype).eval()


@contextlib.contextmanager
def adapters_disabled(unet: UNet2DConditionModel) -> Iterator[UNet2DConditionModel]:
    """Run the base model (the LoRA reference) by disabling the adapters, re-enabling them on exit."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()
