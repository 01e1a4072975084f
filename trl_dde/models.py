"""Loading diffusion pipelines, encoding prompts, attaching LoRA and running the reference model."""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Iterator

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params

__all__ = [
    "SUPPORTED_PIPELINES",
    "PromptEmbeddings",
    "is_sdxl",
    "load_vae",
    "text_encoders_of",
    "tokenizers_of",
    "adapters_disabled",
    "cast_module",
    "encode_prompts",
    "load_pipeline",
    "load_reference_unet",
    "prepare_unet",
]

SUPPORTED_PIPELINES = (StableDiffusionPipeline, StableDiffusionXLPipeline)


def is_sdxl(pipeline: DiffusionPipeline) -> bool:
    return isinstance(pipeline, StableDiffusionXLPipeline)


def tokenizers_of(pipeline: DiffusionPipeline) -> tuple:
    """SD1.5: ``(tokenizer,)``; SDXL: ``(tokenizer, tokenizer_2)``."""
    return (pipeline.tokenizer, pipeline.tokenizer_2) if is_sdxl(pipeline) else (pipeline.tokenizer,)


def text_encoders_of(pipeline: DiffusionPipeline) -> tuple:
    return (pipeline.text_encoder, pipeline.text_encoder_2) if is_sdxl(pipeline) else (pipeline.text_encoder,)


@dataclass
class PromptEmbeddings:
    """What conditions the UNet on a prompt: ``hidden_states`` ``[B, 77, D]``, and for SDXL the pooled
    embedding of text encoder 2 (``[B, P]``)."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None

    def unet_kwargs(self, repeats: int = 1, time_ids: torch.Tensor | None = None) -> dict:
        """Keyword arguments of ``UNet2DConditionModel.forward`` for ``repeats`` stacked copies of the batch.

        SDXL's ``added_cond_kwargs`` need ``time_ids`` (``[repeats·B, 6]``: original size, crop top-left,
        target size of each image).
        """
        kwargs = {"encoder_hidden_states": self.hidden_states.repeat(repeats, 1, 1)}
        if self.pooled is not None:
            if time_ids is None:
                raise ValueError("SDXL conditioning needs time_ids (original size, crop top-left, target size).")
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled.repeat(repeats, 1), "time_ids": time_ids}
        return kwargs


def load_pipeline(
    model: str | os.PathLike | DiffusionPipeline,
    torch_dtype: torch.dtype | None = None,
    variant: str | None = None,
    revision: str | None = None,
) -> DiffusionPipeline:
    """A Stable Diffusion (1.5 or XL) pipeline from a hub id, a local folder saved with ``save_pretrained``,
    or an instance. The class is read from the folder's ``model_index.json``. The safety checker and the
    watermarker are never loaded: training uses neither.
    """
    if isinstance(model, DiffusionPipeline):
        pipeline = model
    else:
        kwargs = {"torch_dtype": torch_dtype, "variant": variant, "revision": revision}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        class_name = DiffusionPipeline.load_config(model, revision=revision).get("_class_name")
        if class_name == StableDiffusionPipeline.__name__:
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        elif class_name == StableDiffusionXLPipeline.__name__:
            kwargs.update(add_watermarker=False)
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
def encode_prompts(pipeline: DiffusionPipeline, input_ids: tuple[torch.Tensor, ...]) -> PromptEmbeddings:
    """Text conditioning from token ids (one tensor per tokenizer of the pipeline).

    SD1.5: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden states
    concatenated (768 + 1280 channels for the real models) and text encoder 2's projected pooled output.
    """
    encoders = text_encoders_of(pipeline)
    if not is_sdxl(pipeline):
        return PromptEmbeddings(encoders[0](input_ids[0].to(encoders[0].device))[0])
    hidden, pooled = [], None
    for encoder, ids in zip(encoders, input_ids):
        output = encoder(ids.to(encoder.device), output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
        pooled = output[0]  # text_embeds of the last encoder (CLIPTextModelWithProjection)
    return PromptEmbeddings(torch.cat(hidden, dim=-1), pooled)


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
    elif os.path.isdir(ref_model):
        subfolder = "unet" if os.path.isdir(os.path.join(ref_model, "unet")) else None
        reference = UNet2DConditionModel.from_pretrained(ref_model, subfolder=subfolder)
    else:  # a hub id: a pipeline repository (unet/ subfolder) or a bare UNet repository
        try:
            reference = UNet2DConditionModel.from_pretrained(ref_model, subfolder="unet")
        except OSError:
            reference = UNet2DConditionModel.from_pretrained(ref_model)
    reference.requires_grad_(False)
    return cast_module(reference, weight_dtype).eval()


def load_vae(name_or_path: str | os.PathLike, revision: str | None = None) -> AutoencoderKL:
    """A replacement VAE (e.g. an fp16-safe SDXL VAE) from a VAE folder/id or a pipeline folder with ``vae/``."""
    subfolder = "vae" if os.path.isdir(os.path.join(name_or_path, "vae")) else None
    return AutoencoderKL.from_pretrained(name_or_path, subfolder=subfolder, revision=revision)


@contextlib.contextmanager
def adapters_disabled(unet: UNet2DConditionModel) -> Iterator[UNet2DConditionModel]:
    """Run the base model (the LoRA reference) by disabling the adapters, re-enabling them on exit."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()
