"""Per-pair random draws: a pair's timestep, noise and VAE posterior sample as functions of (seed, epoch, pair).

By default a training step draws its timesteps and noise from the process's random stream, so what a pair
gets depends on the pairs drawn before it. With ``pair_seeded_draws=True`` (and always with
``precompute_ref=True``) each pair draws from generators seeded by a hash of ``(seed, epoch, pair index)``:
the same values whatever the batch composition, the shuffling, the number of processes or a resume. That is
what lets an inference-only pass compute the reference's terms ahead of time (``reference_cache.py``) for
exactly the noisy inputs the training step will see.

A pair's timestep comes first from its generator, then its noise (shared by winner and loser); the winner's
and the loser's posterior samples (when latents are sampled from the VAE posterior) come from two more
generators of their own, so they do not depend on the latent shape of the draw before.
"""

from __future__ import annotations

import numpy as np
import torch

from .credit import CreditAssigner

__all__ = ["PairDraws", "pair_seed"]

_STREAMS = {"step": 0, "latent_w": 1, "latent_l": 2}


def pair_seed(seed: int, epoch: int, index: int, stream: str) -> int:
    """The seed of one pair's ``stream`` (``"step"``, ``"latent_w"``, ``"latent_l"``) in ``epoch``: a hash."""
    return int(np.random.SeedSequence([seed, epoch, index, _STREAMS[stream]]).generate_state(1, np.uint64)[0] >> 1)


class PairDraws:
    """Draws of a batch of pairs named by their indices and epochs (host integers, as the collator gives them)."""

    def __init__(self, seed: int, credit: CreditAssigner, device: torch.device | str):
        self.seed, self.credit, self.device = seed, credit, torch.device(device)

    def _generators(self, indices: list[int], epochs: list[int], stream: str) -> list[torch.Generator]:
        return [torch.Generator(self.device).manual_seed(pair_seed(self.seed, epoch, index, stream))
                for index, epoch in zip(indices, epochs)]

    def latent_generators(self, indices: list[int], epochs: list[int]) -> list[torch.Generator]:
        """One generator per latent of the stacked ``[winners; losers]`` batch (``2B``)."""
        return self._generators(indices, epochs, "latent_w") + self._generators(indices, epochs, "latent_l")

    def timesteps_and_noise(self, indices: list[int], epochs: list[int], latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each pair's timestep ``LongTensor[B]`` and noise (``latents``' shape and dtype), on ``latents``' device."""
        timesteps, noise = [], []
        for generator in self._generators(indices, epochs, "step"):
            timesteps.append(self.credit.sample_timesteps(1, device=latents.device, generator=generator))
            noise.append(torch.randn(latents.shape[1:], generator=generator, device=self.device, dtype=latents.dtype))
        return torch.cat(timesteps), torch.stack(noise).to(latents.device)
