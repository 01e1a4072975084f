"""Stable Diffusion XL: two CLIP text encoders, pooled text embeddings and per-image micro-conditioning."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLPipeline

from .base import Conditioning
from .registry import register_family
from .sd import UNetFamily

__all__ = ["StableDiffusionXLFamily"]


@register_family("sdxl")
class StableDiffusionXLFamily(UNetFamily):
    """SDXL: prompt embeddings are both encoders' penultimate hidden states concatenated (768 + 1280 channels
    for the real models), ``text_embeds`` is text encoder 2's projected pooled output, and ``time_ids`` are each
    image's ``[original h, original w, crop top, crop left, target h, target w]``, which follow the paired
    crop and flip, so winner and loser may differ."""

    pipeline_class = StableDiffusionXLPipeline
    card_tag = "sdxl"
    image_conditioning_keys = ("time_ids",)

    @classmethod
    def from_pretrained_kwargs(cls, model_index: dict) -> dict:
        return {"add_watermarker": False}

    @torch.no_grad()
    def encode_prompts(self, token_ids: dict[str, torch.Tensor]) -> Conditioning:
        hidden, pooled = [], None
        for index, encoder in enumerate(self.text_encoders):
            output = encoder(token_ids[self.input_ids_key(index)].to(encoder.device), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled = output[0]  # text_embeds of the last encoder (CLIPTextModelWithProjection)
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}

    def image_conditioning(self, crop_info: torch.Tensor) -> Conditioning:
        return {"time_ids": crop_info}

    def denoiser_kwargs(self, conditioning: Conditioning) -> dict:
        return {
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "added_cond_kwargs": {"text_embeds": conditioning["text_embeds"], "time_ids": conditioning["time_ids"]},
        }
