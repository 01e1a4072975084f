"""Stable Diffusion 3 / 3.5: two CLIP encoders and T5, pooled projections, an ``SD3Transformer2DModel`` on rectified
flow matching (``FlowMatchingProcess``)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusion3Pipeline

from ..processes import FlowMatchingProcess
from .base import Conditioning, ModelFamily
from .registry import register_family

__all__ = ["StableDiffusion3Family"]


@register_family("sd3")
class StableDiffusion3Family(ModelFamily):
    """SD3's prompt encoding, as ``StableDiffusion3Pipeline.encode_prompt`` does it: both CLIP encoders' penultimate
    hidden states concatenated and zero-padded to T5's width, followed along the sequence by T5's last hidden state
    (zeros of ``max_sequence_length`` tokens in the no-T5 mode, ``text_encoder_3=None``); ``pooled_projections`` is
    both CLIP encoders' projected pooled outputs concatenated."""

    pipeline_class = StableDiffusion3Pipeline
    denoiser_name = "transformer"
    process_name = "flow_matching"
    card_tag = "sd3"
    max_sequence_length = 256  # the pipeline's default T5 length

    @classmethod
    def from_pretrained_kwargs(cls, model_index: dict) -> dict:
        """No image encoder (IP-Adapter); T5 as ``None`` where the folder was saved without it (the no-T5 mode)."""
        kwargs = {"image_encoder": None, "feature_extractor": None}
        for name in ("text_encoder_3", "tokenizer_3"):
            if model_index.get(name, [None, None])[0] is None:
                kwargs[name] = None
        return kwargs

    @classmethod
    def process_from_scheduler_config(cls, config, **options) -> FlowMatchingProcess:
        return FlowMatchingProcess.from_scheduler_config(config, **options)

    def token_length(self, index: int, tokenizer) -> int:
        return min(tokenizer.model_max_length, self.max_sequence_length) if index == 2 else tokenizer.model_max_length

    @torch.no_grad()
    def encode_prompts(self, token_ids: dict[str, torch.Tensor]) -> Conditioning:
        hidden, pooled = [], []
        for index, encoder in enumerate((self.pipeline.text_encoder, self.pipeline.text_encoder_2)):
            output = encoder(token_ids[self.input_ids_key(index)].to(encoder.device), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled.append(output[0])  # text_embeds (CLIPTextModelWithProjection)
        clip = torch.cat(hidden, dim=-1)
        width = self.denoiser.config.joint_attention_dim
        t5 = self.pipeline.text_encoder_3
        if t5 is None:
            t5_states = clip.new_zeros(clip.shape[0], self.max_sequence_length, width)
        else:
            t5_states = t5(token_ids[self.input_ids_key(2)].to(t5.device))[0].to(clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
        return {"encoder_hidden_states": torch.cat([clip, t5_states], dim=-2), "pooled_projections": torch.cat(pooled, dim=-1)}

    def denoiser_kwargs(self, conditioning: Conditioning) -> dict:
        return {"encoder_hidden_states": conditioning["encoder_hidden_states"],
                "pooled_projections": conditioning["pooled_projections"]}
