"""Batch sources: from a collated batch to what a training step needs — clean latents and conditioning.

The step of Algorithm 1 does not care whether latents were encoded just now or read from a cache; a batch
source hides that. Both return a ``PairBatch``: the winners' and losers' scaled latents, one conditioning
dict for the stacked ``[winners; losers]`` (the prompt part repeated, the per-image part — SDXL's
``time_ids`` — per side) and the pairs' preference labels. A new source (e.g. pairs generated online) is
one more class with the same call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from ..families import ModelFamily

__all__ = ["CachedBatches", "OnTheFlyBatches", "PairBatch", "sample_latents"]


@dataclass
class PairBatch:
    """Latents and conditioning of ``B`` preference pairs."""

    x0_w: torch.Tensor
    x0_l: torch.Tensor
    conditioning: dict[str, torch.Tensor]  # 2B rows: winners then losers
    preference: torch.Tensor  # [B]: 1 for decided pairs, 0.5 for kept ties

    @property
    def size(self) -> int:
        return self.x0_w.shape[0]

    def winners_conditioning(self) -> dict[str, torch.Tensor]:
        """The conditioning of the winners alone (the first ``B`` rows)."""
        return {key: value[: self.size] for key, value in self.conditioning.items()}


def _pair_conditioning(family: ModelFamily, prompt: dict[str, torch.Tensor], crop_w, crop_l) -> dict[str, torch.Tensor]:
    conditioning = {key: torch.cat([value, value]) for key, value in prompt.items()}
    conditioning.update(family.image_conditioning(torch.cat([crop_w, crop_l])))
    return conditioning


class OnTheFlyBatches:
    """Encodes each batch with the family's frozen VAE (a posterior sample) and text encoders."""

    def __init__(self, family: ModelFamily):
        self.family = family
        self.input_ids_keys = [family.input_ids_key(i) for i in range(len(family.tokenizers))]

    def __call__(self, inputs: dict, generator: torch.Generator | None = None) -> PairBatch:
        latents = self.family.encode_images(torch.cat([inputs["pixel_values_w"], inputs["pixel_values_l"]]), generator)
        prompt = self.family.encode_prompts({key: inputs[key] for key in self.input_ids_keys})
        x0_w, x0_l = latents.chunk(2)
        conditioning = _pair_conditioning(self.family, prompt, inputs["crop_info_w"], inputs["crop_info_l"])
        return PairBatch(x0_w, x0_l, conditioning, inputs["preference"])


def sample_latents(cached: torch.Tensor, vae_mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """A latent from the cache: ``mean + std·ε`` from ``[mean; logvar]`` (``vae_mode="sample"``, the same
    draw as ``latent_dist.sample()`` on the fly) or the cached mean itself (``"mean"``)."""
    if vae_mode == "mean":
        return cached
    return DiagonalGaussianDistribution(cached).sample(generator=generator)


class CachedBatches:
    """Reads batches of the precomputed cache (``precompute.py``): samples latents from the cached VAE
    posteriors and takes prompt conditioning from the cached prompt table, in the training dtype."""

    def __init__(self, family: ModelFamily, vae_mode: str, dtype: torch.dtype):
        self.family, self.vae_mode, self.dtype = family, vae_mode, dtype

    def __call__(self, inputs: dict, generator: torch.Generator | None = None) -> PairBatch:
        posteriors = torch.cat([inputs["posterior_w"], inputs["posterior_l"]]).float()
        latents = self.family.scale_latents(sample_latents(posteriors, self.vae_mode, generator))
        prompt = {key.removeprefix("prompt_"): value.to(self.dtype) for key, value in inputs.items() if key.startswith("prompt_")}
        x0_w, x0_l = latents.chunk(2)
        conditioning = _pair_conditioning(self.family, prompt, inputs["crop_info_w"], inputs["crop_info_l"])
        return PairBatch(x0_w, x0_l, conditioning, inputs["preference"])
