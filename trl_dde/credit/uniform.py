"""Uniform credit: Diffusion-DPO (Wallace et al., CVPR 2024) and D3PO's uniform assignment.

Every timestep is sampled with equal probability and the margin is the difference of the
epsilon-space log-likelihood ratios of winner and loser (the paper's Eq. 12):
``ℓ = -½[mean((ε̂_θ-ε)²) - mean((ε̂_ref-ε)²)]`` per side, ``z = ℓ_w - ℓ_l``.
This equals the official Diffusion-DPO ``inside_term / beta``.
"""

from __future__ import annotations

import torch

from .base import CreditAssigner, DenoisingOutputs, squared_error
from .registry import register_credit

__all__ = ["UniformCredit", "epsilon_margin"]


def epsilon_margin(outputs: DenoisingOutputs) -> torch.Tensor:
    """Uniform's ``z``: winner's minus loser's epsilon-space log-likelihood ratio, ½ convention."""
    ratio_w = squared_error(outputs.eps_w, outputs.noise) - squared_error(outputs.eps_ref_w, outputs.noise)
    ratio_l = squared_error(outputs.eps_l, outputs.noise) - squared_error(outputs.eps_ref_l, outputs.noise)
    return -0.5 * (ratio_w - ratio_l)


@register_credit("uniform")
class UniformCredit(CreditAssigner):
    """Diffusion-DPO: ``τ ~ U{0..T-1}``, ``z = ℓ_w - ℓ_l`` in epsilon space."""

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        return epsilon_margin(outputs)
