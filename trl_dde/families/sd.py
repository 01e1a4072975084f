"""Stable Diffusion 1.x/2.x: ``StableDiffusionPipeline``, one CLIP text encoder, a UNet, DDPM."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from ..processes import DDPMProcess
from .base import Conditioning, ModelFamily
from .registry import register_family

__all__ = ["StableDiffusionFamily"]


class UNetFamily(ModelFamily):
    """What SD and SDXL share: a ``UNet2DConditionModel`` on a DDPM-family scheduler."""

    denoiser_name = "unet"
    process_name = "ddpm"

    @classmethod
    def process_from_scheduler_config(cls, config, **options) -> DDPMProcess:
        return DDPMProcess.from_scheduler_config(config, **options)


@register_family("sd")
class StableDiffusionFamily(UNetFamily):
    """SD1.5-style pipelines: the text encoder's last hidden state conditions the UNet's cross-attention."""

    pipeline_class = StableDiffusionPipeline
    card_tag = "sd-1.5"

    @classmethod
    def from_pretrained_kwargs(cls, model_index: dict) -> dict:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def vae_dtype(self, weight_dtype: torch.dtype, replaced_vae: bool) -> torch.dtype:
        """SD1.x/2.x VAEs run in the mixed-precision dtype: their configs carry ``force_upcast`` only as
        ``AutoencoderKL``'s default, and the pipeline itself never upcasts them."""
        return weight_dtype

    @torch.no_grad()
    def encode_prompts(self, token_ids: dict[str, torch.Tensor]) -> Conditioning:
        encoder = self.pipeline.text_encoder
        return {"encoder_hidden_states": encoder(token_ids["input_ids"].to(encoder.device))[0]}

    def denoiser_kwargs(self, conditioning: Conditioning) -> dict:
        return {"encoder_hidden_states": conditioning["encoder_hidden_states"]}
