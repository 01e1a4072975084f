"""Denoised Distribution Estimation (Shi et al., "Prioritize Denoising Steps on Diffusion Model
Preference Alignment via Explicit Denoised Distribution Estimation"): ``dde-single``, ``dde-step``, ``dde``.

* **Single-shot estimation** (Sec. 3.3, Eq. 10): the terminal sample is estimated from ``x_τ`` with one
  DDIM jump ``x̂0``, and each side's log-likelihood ratio is measured in ``x0`` space:
  ``ℓ = -½[mean((x0-x̂0_θ)²) - mean((x0-x̂0_ref)²)]``, ``z_single = ℓ_w - ℓ_l``.
* **Stepwise estimation** (Sec. 3.2, Algorithm 1): the segment from pure noise down to ``x_τ`` is
  corrected by importance ratios. For each of policy/reference and winner/loser an EMA array
  ``R[τ]`` tracks ``½·red((μ_m(x_τ,τ) - μ̃(x_τ,x0))²) = ½·b²/(a(1-ā))·red((ε̂_m-ε)²)``; the correction of
  a pair at ``τ`` is ``C(τ) = Σ_{k=τ+1}^{T-1} D[k]`` with ``D = R_θw - R_refw - R_θl + R_refl``, read
  before the current step's update (the paper's delayed update).
* ``dde-step`` = uniform's margin + ``C(τ)``; ``dde`` (Eq. 11) = ``z_single`` + ``C(τ)``.

See ``docs/credit_strategies.md`` for the choices made where the paper is ambiguous.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..schedule import posterior_mean_error_coefficient, single_shot_x0
from .base import CreditAssigner, DenoisingOutputs, squared_error
from .registry import register_credit
from .uniform import epsilon_margin

__all__ = ["DDECredit", "DDESingleCredit", "DDEStepCredit", "StepwiseCorrectedCredit", "single_shot_margin"]

ALPHA_BAR_0_CHOICES = ("one", "scheduler")
REDUCTION_CHOICES = ("sum", "mean")


def single_shot_margin(outputs: DenoisingOutputs, alphas_cumprod: torch.Tensor, alpha_bar_0: str = "one") -> torch.Tensor:
    """``z_single``: the winner's minus the loser's ``x0``-space log-likelihood ratio (Eq. 11's MSE terms, ½ kept)."""

    def log_ratio(x0, x_t, eps, eps_ref):
        x0_hat = single_shot_x0(eps, x_t, outputs.timesteps, alphas_cumprod, alpha_bar_0)
        x0_hat_ref = single_shot_x0(eps_ref, x_t, outputs.timesteps, alphas_cumprod, alpha_bar_0)
        return -0.5 * (squared_error(x0, x0_hat) - squared_error(x0, x0_hat_ref))

    return log_ratio(outputs.x0_w, outputs.xt_w, outputs.eps_w, outputs.eps_ref_w) - log_ratio(
        outputs.x0_l, outputs.xt_l, outputs.eps_l, outputs.eps_ref_l
    )


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{option} must be one of {list(choices)}, got {value!r}.")
    return value


@register_credit("dde-single")
class DDESingleCredit(CreditAssigner):
    """Single-shot estimation only (the paper's DDE-Single ablation)."""

    def __init__(self, alphas_cumprod: torch.Tensor, timestep_range=None, alpha_bar_0: str = "one"):
        super().__init__(alphas_cumprod, timestep_range)
        self.alpha_bar_0 = _check_choice("alpha_bar_0", alpha_bar_0, ALPHA_BAR_0_CHOICES)

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        return single_shot_margin(outputs, self.alphas_cumprod, self.alpha_bar_0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha_bar_0={self.alpha_bar_0!r}"


class StepwiseCorrectedCredit(CreditAssigner):
    """Base of strategies whose margin is a per-pair term plus the stepwise correction ``C(τ)``.

    Holds the four EMA arrays as one persistent buffer ``ratios`` of shape ``[4, T]``, rows in the order
    ``(θ, w), (ref, w), (θ, l), (ref, l)``. ``update`` all-reduces per-τ sums and counts across processes,
    so every rank holds identical arrays. Both the correction and the update cost ``O(T + B)``.
    """

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        timestep_range=None,
        momentum: float = 0.1,
        correction_reduction: str = "sum",
    ):
        super().__init__(alphas_cumprod, timestep_range)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.momentum = float(momentum)
        self.correction_reduction = _check_choice("correction_reduction", correction_reduction, REDUCTION_CHOICES)
        self.register_buffer("ratios", torch.zeros(4, self.num_timesteps))
        self.register_buffer(
            "error_coefficient", posterior_mean_error_coefficient(self.alphas_cumprod.double()).float(), persistent=False
        )
        self._last_correction: torch.Tensor | None = None

    def base_margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        raise NotImplementedError

    def corrections(self) -> torch.Tensor:
        """``C(τ) = Σ_{k=τ+1}^{T-1} D[k]`` for every ``τ`` (a suffix sum of the current arrays)."""
        theta_w, ref_w, theta_l, ref_l = self.ratios
        difference = theta_w - ref_w - theta_l + ref_l
        suffix = difference.flip(0).cumsum(0).flip(0)  # suffix[j] = Σ_{k>=j} D[k]
        return torch.cat([suffix[1:], suffix.new_zeros(1)])

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        z = self.base_margin(outputs)
        correction = self.corrections().to(z.device)[outputs.timesteps.to(z.device)]
        self._last_correction = correction.detach()
        return z + correction

    def step_values(self, outputs: DenoisingOutputs) -> torch.Tensor:
        """``½·b²/(a(1-ā))·red((ε̂_m-ε)²)`` per pair for the four arrays, ``[4, B]``."""
        reduction = self.correction_reduction
        errors = torch.stack(
            [
                squared_error(outputs.eps_w, outputs.noise, reduction),
                squared_error(outputs.eps_ref_w, outputs.noise, reduction),
                squared_error(outputs.eps_l, outputs.noise, reduction),
                squared_error(outputs.eps_ref_l, outputs.noise, reduction),
            ]
        ).detach()
        coefficient = self.error_coefficient.to(errors.device)[outputs.timesteps.to(errors.device)]
        return 0.5 * coefficient * errors

    @torch.no_grad()
    def update(self, outputs: DenoisingOutputs) -> None:
        """EMA update ``R[τ] ← μ·R[τ] + (1-μ)·v̄[τ]`` at the visited ``τ`` (Algorithm 1, line 5)."""
        values = self.step_values(outputs).to(self.ratios.device)
        timesteps = outputs.timesteps.to(self.ratios.device)
        totals = torch.zeros(5, self.num_timesteps, device=self.ratios.device)  # 4 sums + 1 count
        totals[:4].index_add_(1, timesteps, values)
        totals[4].index_add_(0, timesteps, torch.ones_like(values[0]))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        visited = totals[4] > 0
        means = totals[:4, visited] / totals[4, visited]
        self.ratios[:, visited] = self.momentum * self.ratios[:, visited] + (1.0 - self.momentum) * means

    def metrics(self) -> dict[str, float]:
        metrics = {"visited_fraction": (self.ratios != 0).any(dim=0).float().mean().item()}
        if self._last_correction is not None:
            metrics["correction"] = self._last_correction.mean().item()
        return metrics

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={self.momentum}, correction_reduction={self.correction_reduction!r}"


@register_credit("dde-step")
class DDEStepCredit(StepwiseCorrectedCredit):
    """Stepwise estimation only (the paper's DDE-Step ablation): uniform's margin + ``C(τ)``."""

    def base_margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        return epsilon_margin(outputs)


@register_credit("dde")
class DDECredit(StepwiseCorrectedCredit):
    """The paper's full method (Eq. 11): single-shot margin + stepwise correction ``C(τ)``."""

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        timestep_range=None,
        alpha_bar_0: str = "one",
        momentum: float = 0.1,
        correction_reduction: str = "sum",
    ):
        super().__init__(alphas_cumprod, timestep_range, momentum, correction_reduction)
        self.alpha_bar_0 = _check_choice("alpha_bar_0", alpha_bar_0, ALPHA_BAR_0_CHOICES)

    def base_margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        return single_shot_margin(outputs, self.alphas_cumprod, self.alpha_bar_0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha_bar_0={self.alpha_bar_0!r}"
