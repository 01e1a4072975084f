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

__all__ = ["ERROR_SPACES", "UniformCredit", "denoising_margin", "denoising_reference_terms", "epsilon_margin"]

ERROR_SPACES = ("epsilon", "prediction")


def _targets(outputs: DenoisingOutputs, error_space: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What winner and loser predictions are compared with in ``error_space``."""
    if error_space == "epsilon":
        return outputs.noise, outputs.noise
    if error_space == "prediction":
        process, t = outputs.process, outputs.timesteps
        if process is None:
            return outputs.noise, outputs.noise
        return process.target(outputs.x0_w, outputs.noise, t), process.target(outputs.x0_l, outputs.noise, t)
    raise ValueError(f"error_space must be one of {list(ERROR_SPACES)}, got {error_space!r}.")


def _errors(outputs: DenoisingOutputs, error_space: str, predictions: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Winner's and loser's squared errors of ``predictions`` (native outputs) in ``error_space``."""
    target_w, target_l = _targets(outputs, error_space)
    pred_w, pred_l = predictions
    if error_space == "epsilon":
        pred_w, pred_l = outputs.epsilon_of(pred_w, outputs.xt_w), outputs.epsilon_of(pred_l, outputs.xt_l)
    return squared_error(pred_w, target_w), squared_error(pred_l, target_l)


def denoising_reference_terms(outputs: DenoisingOutputs, error_space: str = "epsilon") -> dict[str, torch.Tensor]:
    """The reference's part of uniform's margin: its squared errors on winner and loser in ``error_space``."""
    ref_w, ref_l = _errors(outputs, error_space, (outputs.reference_prediction("w"), outputs.reference_prediction("l")))
    return {f"error_ref_w/{error_space}": ref_w, f"error_ref_l/{error_space}": ref_l}


def denoising_margin(outputs: DenoisingOutputs, error_space: str = "epsilon",
                     reference: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Uniform's ``z``: winner's minus loser's denoising log-likelihood ratio (½ convention) in ``error_space``.

    ``reference``: the reference's terms (``denoising_reference_terms``, e.g. ``CreditAssigner.reference(outputs)``);
    default: computed from the reference predictions."""
    if reference is None:
        reference = denoising_reference_terms(outputs, error_space)
    theta_w, theta_l = _errors(outputs, error_space, (outputs.pred_w, outputs.pred_l))
    ref_w, ref_l = reference[f"error_ref_w/{error_space}"], reference[f"error_ref_l/{error_space}"]
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
    reference_inputs = "scalars"

    def __init__(self, process, timestep_range=None, error_space: str | None = None):
        super().__init__(process, timestep_range)
        self.error_space = check_error_space(error_space, self.process)

    def reference_terms(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        return denoising_reference_terms(outputs, self.error_space)

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        return denoising_margin(outputs, self.error_space, self.reference(outputs))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, error_space={self.error_space!r}"
