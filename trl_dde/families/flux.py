"""Flux.1: a CLIP pooled embedding and T5, packed 2×2 latents with position ids, a guidance embedding, rectified
flow matching (``FlowMatchingProcess`` on the unshifted training sigmas, as diffusers' Flux training uses)."""

from __future__ import annotations

import torch
from diffusers import FluxPipeline

from ..processes import FlowMatchingProcess
from .base import Conditioning, ModelFamily
from .registry import register_family

__all__ = ["FluxFamily"]


@register_family("flux")
class FluxFamily(ModelFamily):
    """``FluxPipeline.encode_prompt``'s conditioning: T5's last hidden state (``encoder_hidden_states``) and CLIP's
    pooled output (``pooled_projections``). The transformer sees the latents packed into ``2×2`` patches with their
    position ids, the text position ids (zeros), ``σ`` as its time and, for guidance-distilled models (Flux.1-dev),
    ``guidance_scale`` — 3.5, the default of diffusers' Flux training scripts."""

    pipeline_class = FluxPipeline
    denoiser_name = "transformer"
    process_name = "flow_matching"
    card_tag = "flux"
    max_sequence_length = 512  # the pipeline's default T5 length
    guidance_scale = 3.5

    @classmethod
    def from_pretrained_kwargs(cls, model_index: dict) -> dict:
        return {"image_encoder": None, "feature_extractor": None}

    @classmethod
    def process_from_scheduler_config(cls, config, **options) -> FlowMatchingProcess:
        return FlowMatchingProcess.from_scheduler_config(config, **options)

    @classmethod
    def resolution_multiple(cls, vae_config, denoiser_config) -> int:
        """The VAE factor times 2: latents are packed into ``2×2`` patches."""
        return super().resolution_multiple(vae_config, denoiser_config) * 2

    @property
    def default_resolution(self) -> int:
        return self.pipeline.default_sample_size * self.pipeline.vae_scale_factor

    def token_length(self, index: int, tokenizer) -> int:
        return min(tokenizer.model_max_length, self.max_sequence_length) if index == 1 else tokenizer.model_max_length

    @torch.no_grad()
    def encode_prompts(self, token_ids: dict[str, torch.Tensor]) -> Conditioning:
        clip, t5 = self.text_encoders
        pooled = clip(token_ids["input_ids"].to(clip.device), output_hidden_states=False).pooler_output
        hidden = t5(token_ids["input_ids_2"].to(t5.device))[0]
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled.to(hidden.dtype)}

    def denoiser_kwargs(self, conditioning: Conditioning) -> dict:
        kwargs = {key: conditioning[key] for key in ("encoder_hidden_states", "pooled_projections", "txt_ids", "img_ids")}
        return {**kwargs, "guidance": conditioning.get("guidance")}  # None for models without guidance embedding

    def predict(self, denoiser, x_t, timesteps, conditioning):
        """Pack ``x_t`` ``[B, C, H, W]`` into ``[B, HW/4, 4C]``, call the transformer with ``σ`` (the model time
        ``timesteps`` over the scheduler's ``num_train_timesteps``), the position ids and the guidance, and unpack its
        velocity back to ``[B, C, H, W]``."""
        batch, channels, height, width = x_t.shape
        scale = self.pipeline.vae_scale_factor
        extra = {
            "txt_ids": x_t.new_zeros(conditioning["encoder_hidden_states"].shape[1], 3),
            "img_ids": FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, x_t.device, x_t.dtype),
        }
        if self.denoiser.config.guidance_embeds:
            extra["guidance"] = x_t.new_full((batch,), self.guidance_scale)
        packed = FluxPipeline._pack_latents(x_t, batch, channels, height, width)
        velocity = super().predict(denoiser, packed, timesteps / self.pipeline.scheduler.config.num_train_timesteps, {**conditioning, **extra})
        return FluxPipeline._unpack_latents(velocity, height * scale, width * scale, scale)
