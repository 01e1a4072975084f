"""Uniform credit: Diffusion-DPO (Wallace et al., CVPR 2024) and D3PO's uniform assignment.

Every timestep is sampled with the process's own training distribution (uniform for DDPM) and the
margin is the difference of the winner's and the loser's denoising log-likelihood ratios (the paper's
Eq. 12): ``ℓ = -½[mean((p̂_θ-p)²) - mean((p̂_ref-p)²)]`` per side, ``z = ℓ_w - ℓ_l``, where ``p`` is the
quantity the error is measured on (``error_space``):

* ``"epsilon"`` (the DDPM default, DESIGN §3): ``p = ε``, ``p̂ = ε̂``; equals the official Diffusion-DPO
  ``inside_term / beta`` for ε-prediction models.
* ``"prediction"``: ``p`` is the model's own training target (``ε``, ``v`` or ``x0``; velocity for flow
  matching), what the official code does for every model. For a v-prediction DDPM model
  ``ε̂ - ε = √ā·(v̂ - v)``, so the ε-space margin is the v-space one times ``ā[τ]``: ``"epsilon"`` weighs
  noisy timesteps less than the official v-space loss does.

The margin is multiplied by the process's per-τ ``loss_weights`` (ones for DDPM; SD3's ``sigma_sqrt`` or
``cosmap`` weighting for flow matching), as the plain denoising loss is.
"""

from __future__ import annotations

import torch

from .base import CreditAssigner, DenoisingOutputs, squared_error
from .registry import register_credit

__all__ = ["ERROR_SPACES", "UniformCredit", "denoising_margin", "epsilon_margin"]

ERROR_SPACES = ("epsilon", "prediction")


def denoising_margin(outputs: DenoisingOutputs, error_space: str = "epsilon") -> torch.Tensor:
    """Uniform's ``z``: winner's minus loser's denoising log-likelihood ratio (½ convention) in ``error_space``."""
    if error_space == "epsilon":
        target = outputs.noise
        errors = [squared_error(p, target) for p in (outputs.eps_w, outputs.eps_ref_w, outputs.eps_l, outputs.eps_ref_l)]
    elif error_space == "prediction":
        process, t = outputs.process, outputs.timesteps
        target_w = outputs.noise if process is None else process.target(outputs.x0_w, outputs.noise, t)
        target_l = outputs.noise if process is None else process.target(outputs.x0_l, outputs.noise, t)
        errors = [squared_error(outputs.pred_w, target_w), squared_error(outputs.pred_ref_w, target_w),
                  squared_error(outputs.pred_l, target_l), squared_error(outputs.pred_ref_l, target_l)]
    else:
        raise ValueError(f"error_space must be one of {list(ERROR_SPACES)}, got {error_space!r}.")
    theta_w, ref_w, theta_l, ref_l = errors
    z = -0.5 * ((theta_w - ref_w) - (theta_l - ref_l))
    return z if outputs.process is None else z * outputs.process.loss_weights[outputs.timesteps]


def epsilon_margin(outputs: DenoisingOutputs) -> torch.Tensor:
    """Uniform's ``z`` in ε space (the DESIGN contract)."""
    return denoising_margin(outputs, "epsilon")


def check_error_space(error_space: str | None, process) -> str:
    """The error space to use: ``error_space`` or the process's default, validated."""
    error_space = error_space or process.default_error_space
    if error_space not in ERROR_SPACES:
        raise ValueError(f"error_space must be one of {list(ERROR_SPACES)}, got {error_space!r}.")
    return error_space


@register_credit("uniform")
class UniformCredit(CreditAssigner):
    """Diffusion-DPO: ``τ`` from the process's training distribution, ``z = ℓ_w - ℓ_l``.

    Args:
        error_space: ``"epsilon"`` or ``"prediction"`` (see the module docstring); default: the process's
            (``"epsilon"`` for DDPM).
    """

    supported_processes = None

    def __init__(self, process, timestep_range=None, error_space: str | None = None):
        super().__init__(process, timestep_range)
        self.error_space = check_error_space(error_space, self.process)

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        return denoising_margin(outputs, self.error_space)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, error_space={self.error_space!r}"
