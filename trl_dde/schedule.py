"""Pure tensor math on a DDPM noise schedule, in diffusers indexing.

Every function takes ``alphas_cumprod`` (``ā``, length ``T``, as held by a diffusers scheduler) and
per-sample ``timesteps`` ``τ ∈ {0..T-1}``. Notation follows DESIGN §3 and the paper (Sec. 2):

* ``ā[-1] := 1``, ``b[τ] = 1 - ā[τ]/ā[τ-1]`` (the paper's ``β_t``), ``a[τ] = 1 - b[τ]`` (``α_t``);
* forward process (paper Eq. 2): ``x_τ = √ā[τ]·x0 + √(1-ā[τ])·ε``;
* true posterior mean of ``x_{τ-1}`` (Eq. 3):
  ``μ̃(x_τ, x0) = √ā[τ-1]·b[τ]/(1-ā[τ])·x0 + √a[τ]·(1-ā[τ-1])/(1-ā[τ])·x_τ``;
* the model's DDPM mean: ``μ(x_τ, τ) = (x_τ - b[τ]/√(1-ā[τ])·ε̂)/√a[τ]``;
* single-shot DDIM jump to ``t' = 0`` (Eq. 10).

No model, no state: the credit strategies (``trl_dde.credit``) are built on these functions.
"""

from __future__ import annotations

import torch

__all__ = [
    "add_noise",
    "epsilon_from_prediction",
    "model_posterior_mean",
    "posterior_mean",
    "posterior_mean_error_coefficient",
    "previous_alphas_cumprod",
    "single_shot_x0",
    "step_betas",
]


def _per_sample(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[timesteps]`` reshaped to broadcast over ``like`` (``[B, 1, 1, ...]``), in ``like``'s dtype."""
    picked = values.to(device=like.device)[timesteps.to(like.device)].to(like.dtype)
    return picked.reshape(-1, *([1] * (like.ndim - 1)))


def previous_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``ā[τ-1]`` for every ``τ``, with the convention ``ā[-1] = 1``."""
    return torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])


def step_betas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``b[τ] = 1 - ā[τ]/ā[τ-1]``: the per-step noise variance ``β_t`` of paper Eq. 1."""
    return 1.0 - alphas_cumprod / previous_alphas_cumprod(alphas_cumprod)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Sample ``x_τ ~ q(x_τ | x0)`` with the given noise (paper Eq. 2)."""
    abar = _per_sample(alphas_cumprod, timesteps, x0)
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise


def epsilon_from_prediction(
    prediction: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Convert a model output to an epsilon prediction ``ε̂``.

    ``epsilon``: unchanged; ``v_prediction``: ``ε̂ = √ā·v̂ + √(1-ā)·x_τ``;
    ``sample``: ``ε̂ = (x_τ - √ā·x̂0)/√(1-ā)``.
    """
    if prediction_type == "epsilon":
        return prediction
    abar = _per_sample(alphas_cumprod, timesteps, x_t)
    if prediction_type == "v_prediction":
        return abar.sqrt() * prediction + (1.0 - abar).sqrt() * x_t
    if prediction_type == "sample":
        return (x_t - abar.sqrt() * prediction) / (1.0 - abar).sqrt()
    raise ValueError(
        f"Unknown prediction_type {prediction_type!r}; expected 'epsilon', 'v_prediction' or 'sample'."
    )


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Mean ``μ̃(x_τ, x0)`` of the true posterior ``q(x_{τ-1} | x_τ, x0)`` (paper Eq. 3)."""
    abar = _per_sample(alphas_cumprod, timesteps, x0)
    abar_prev = _per_sample(previous_alphas_cumprod(alphas_cumprod), timesteps, x0)
    beta = _per_sample(step_betas(alphas_cumprod), timesteps, x0)
    coef_x0 = abar_prev.sqrt() * beta / (1.0 - abar)
    coef_xt = (1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar)
    return coef_x0 * x0 + coef_xt * x_t


def model_posterior_mean(
    epsilon: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Mean ``μ_θ(x_τ, τ)`` of the DDPM reverse step ``p_θ(x_{τ-1} | x_τ)`` from an epsilon prediction."""
    abar = _per_sample(alphas_cumprod, timesteps, x_t)
    beta = _per_sample(step_betas(alphas_cumprod), timesteps, x_t)
    return (x_t - beta / (1.0 - abar).sqrt() * epsilon) / (1.0 - beta).sqrt()


def posterior_mean_error_coefficient(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``b[τ]²/(a[τ]·(1-ā[τ]))`` for every ``τ``.

    ``‖μ_θ(x_τ, τ) - μ̃(x_τ, x0)‖² = b²/(a(1-ā)) · ‖ε̂ - ε‖²`` when ``x_τ`` was made from ``x0`` with
    noise ``ε``, so the stepwise importance ratio of Sec. 3.2 needs only the epsilon error.
    """
    beta = step_betas(alphas_cumprod)
    return beta**2 / ((1.0 - beta) * (1.0 - alphas_cumprod))


def _single_shot_terms(alphas_cumprod: torch.Tensor, alpha_bar_0: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-τ coefficients ``(c_x, c_ε)`` with ``x̂0 = c_x·x_τ + c_ε·ε̂`` (paper Eq. 10)."""
    if alpha_bar_0 == "one":
        abar0 = alphas_cumprod.new_ones(())
    elif alpha_bar_0 == "scheduler":
        abar0 = alphas_cumprod[0]
    else:
        raise ValueError(f"alpha_bar_0 must be 'one' or 'scheduler', got {alpha_bar_0!r}.")
    beta = step_betas(alphas_cumprod)
    sigma_sq = (1.0 - abar0) / (1.0 - alphas_cumprod) * beta**2
    coef_x = abar0.sqrt() / alphas_cumprod.sqrt()
    coef_eps = (1.0 - abar0 - sigma_sq).clamp_min(0.0).sqrt() - abar0.sqrt() * (1.0 - alphas_cumprod).sqrt() / alphas_cumprod.sqrt()
    return coef_x, coef_eps


def single_shot_x0(
    epsilon: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    alpha_bar_0: str = "one",
) -> torch.Tensor:
    """One-jump DDIM estimate ``μ̂_{θ,t'=0}(x_τ, τ)`` of the terminal sample (paper Eq. 10).

    ``x̂0 = √ā0/√ā[τ]·x_τ + (√(1-ā0-σ²) - √ā0·√(1-ā[τ])/√ā[τ])·ε̂``, ``σ² = (1-ā0)/(1-ā[τ])·b[τ]²``.
    ``alpha_bar_0="one"`` sets ``ā0 = 1`` (σ = 0, the clean-sample estimate);
    ``"scheduler"`` takes ``ā0 = ā[0]``, the paper's literal reading.
    """
    coef_x, coef_eps = _single_shot_terms(alphas_cumprod, alpha_bar_0)
    return _per_sample(coef_x, timesteps, x_t) * x_t + _per_sample(coef_eps, timesteps, x_t) * epsilon

