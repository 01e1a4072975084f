"""Discounted credit: the dense-reward view of Yang, Chen & Zhou (ICML 2024).

The denoising step index counted from pure noise in a ``K``-step sampler is
``k(τ) = (T-1-τ) // (T // K)``; early steps (large ``τ``) get more credit, ``∝ γ^k``.
``mode="sample"`` (default, as in the official code) draws ``τ`` with probability ``∝ γ^k`` and keeps
uniform's margin; ``mode="weight"`` samples uniformly and multiplies the margin by
``γ^k · Z_norm``, with ``Z_norm`` making the weights average 1 over the sampled range. The margin is
uniform's, in the same ``error_space``.
"""

from __future__ import annotations

import torch

from .base import CreditAssigner, DenoisingOutputs
from .registry import register_credit
from .uniform import check_error_space, denoising_margin, denoising_reference_terms

__all__ = ["DiscountedCredit"]


@register_credit("discounted")
class DiscountedCredit(CreditAssigner):
    """Dense-reward discounting ``γ^k`` as a sampling distribution (``mode="sample"``) or a margin weight."""

    supported_processes = None
    reference_inputs = "scalars"

    def __init__(
        self,
        process,
        timestep_range=None,
        gamma: float = 0.9,
        num_steps: int = 50,
        mode: str = "sample",
        error_space: str | None = None,
    ):
        super().__init__(process, timestep_range)
        self.error_space = check_error_space(error_space, self.process)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}.")
        if not 1 <= num_steps <= self.num_timesteps:
            raise ValueError(f"num_steps must be in [1, {self.num_timesteps}], got {num_steps}.")
        if mode not in ("sample", "weight"):
            raise ValueError(f"mode must be 'sample' or 'weight', got {mode!r}.")
        self.gamma, self.num_steps, self.mode = float(gamma), int(num_steps), mode
        tau = torch.arange(self.num_timesteps)
        step_index = (self.num_timesteps - 1 - tau) // (self.num_timesteps // self.num_steps)
        discounts = torch.tensor(self.gamma, dtype=torch.float64) ** step_index
        self.register_buffer("discounts", discounts.float(), persistent=False)
        lo, hi = self.timestep_range
        self.register_buffer("margin_weights", (discounts / discounts[lo:hi].mean()).float(), persistent=False)

    def timestep_weights(self) -> torch.Tensor:
        if self.mode == "sample":
            return self.discounts.double().cpu() * self.process.timestep_weights()
        return self.process.timestep_weights()

    def reference_terms(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        return denoising_reference_terms(outputs, self.error_space)

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        z = denoising_margin(outputs, self.error_space, self.reference(outputs))
        if self.mode == "weight":
            z = z * self.margin_weights[outputs.timesteps]
        return z

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, gamma={self.gamma}, num_steps={self.num_steps}, mode={self.mode!r}, "
                f"error_space={self.error_space!r}")
