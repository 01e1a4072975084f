"""Denoised Distribution Estimation (Shi et al., "Prioritize Denoising Steps on Diffusion Model
Preference Alignment via Explicit Denoised Distribution Estimation"): ``dde-single``, ``dde-step``, ``dde``.

* **Single-shot estimation** (Sec. 3.3, Eq. 10): the terminal sample is estimated from ``x_τ`` with one
  DDIM jump ``μ̂ = √ā0·x̂0 + √(1-ā0-σ²)·ε̂``, and each side's log-likelihood ratio is measured in ``x0``
  space: ``ℓ = -½[mean((x0-μ̂_θ)²) - mean((x0-μ̂_ref)²)]``, ``z_single = ℓ_w - ℓ_l``.
* **Stepwise estimation** (Sec. 3.2, Algorithm 1): the segment from pure noise down to ``x_τ`` is
  corrected by importance ratios. For each of policy/reference and winner/loser an EMA array
  ``R[τ]`` tracks ``½·red((μ_m(x_τ,τ) - μ̃(x_τ,x0))²) = ½·ā[τ-1]b²/(1-ā)²·red((x̂0_m-x0)²)``
  (``= ½·b²/(a(1-ā))·red((ε̂_m-ε)²)`` wherever ``ā > 0``)
  (the coefficient is the process's ``transition_x0_error_coefficient``: this is DDPM's; flow matching's is
  that of its SDE sampler, docs/credit_strategies.md); the correction of a pair at ``τ`` is
  ``C(τ) = Σ_{k=τ+1}^{T-1} D[k]`` with ``D = R_θw - R_refw - R_θl + R_refl``, read before the current
  step's update (the paper's delayed update).
* ``dde-step`` = uniform's margin + ``C(τ)``; ``dde`` (Eq. 11) = ``z_single`` + ``C(τ)``.

The predictions are read through the noise process (``x̂0``, ``ε̂`` from the model's native output), so a
v-prediction model with a zero-terminal-SNR schedule stays finite at every ``τ``; an ε-prediction model
has no ``x̂0`` where ``ā = 0`` and these strategies refuse to sample there.
See ``docs/credit_strategies.md`` for the choices made where the paper is ambiguous.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..processes.ddpm import ddim_jump_coefficients
from .base import CreditAssigner, DenoisingOutputs, squared_error
from .registry import register_credit
from .uniform import check_error_space, denoising_margin, denoising_reference_terms

__all__ = ["DDECredit", "DDESingleCredit", "DDEStepCredit", "SingleShot", "StepwiseCorrectedCredit"]

ALPHA_BAR_0_CHOICES = ("one", "scheduler")
REDUCTION_CHOICES = ("sum", "mean")
CADENCE_CHOICES = ("micro_batch", "optimizer_step")


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{option} must be one of {list(choices)}, got {value!r}.")
    return value


class SingleShot:
    """Mixin giving a strategy the single-shot margin ``z_single`` (shared by ``dde-single`` and ``dde``).

    ``alpha_bar_0="one"`` gives ``μ̂ = x̂0`` for any process; ``"scheduler"`` (``ā0 = ā[0]``) is defined for DDPM.
    """

    def _init_single_shot(self, alpha_bar_0: str) -> None:
        self.alpha_bar_0 = _check_choice("alpha_bar_0", alpha_bar_0, ALPHA_BAR_0_CHOICES)
        if alpha_bar_0 == "scheduler":
            if self.process.name != "ddpm":
                raise ValueError(f"alpha_bar_0='scheduler' is defined for DDPM schedules, not {self.process.name!r}; "
                                 "use alpha_bar_0='one'.")
            coef_x0, coef_eps = ddim_jump_coefficients(self.process.alphas_cumprod.double().cpu(), alpha_bar_0)
            self.register_buffer("jump_x0", coef_x0.float(), persistent=False)
            self.register_buffer("jump_eps", coef_eps.float(), persistent=False)

    def single_shot_estimate(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``μ̂ = √ā0·x̂0 + √(1-ā0-σ²)·ε̂`` (``x̂0`` itself when ``ā0 = 1``)."""
        x0_hat = self.process.x0(prediction, x_t, timesteps)
        if self.alpha_bar_0 == "one":
            return x0_hat
        shape = (-1, *([1] * (x_t.ndim - 1)))
        epsilon = self.process.epsilon(prediction, x_t, timesteps)
        return self.jump_x0[timesteps].reshape(shape) * x0_hat + self.jump_eps[timesteps].reshape(shape) * epsilon

    def _single_shot_errors(self, outputs: DenoisingOutputs, pred_w, pred_l) -> tuple[torch.Tensor, torch.Tensor]:
        """Winner's and loser's ``mean((x0 - μ̂)²)`` for predictions ``pred_w``/``pred_l``."""
        t = outputs.timesteps
        return (squared_error(outputs.x0_w, self.single_shot_estimate(pred_w, outputs.xt_w, t)),
                squared_error(outputs.x0_l, self.single_shot_estimate(pred_l, outputs.xt_l, t)))

    def single_shot_reference_terms(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        """The reference's part of ``z_single``: its single-shot errors on winner and loser."""
        ref_w, ref_l = self._single_shot_errors(outputs, outputs.reference_prediction("w"), outputs.reference_prediction("l"))
        return {"single_shot_ref_w": ref_w, "single_shot_ref_l": ref_l}

    def single_shot_margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        """``z_single``: the winner's minus the loser's ``x0``-space log-likelihood ratio (Eq. 11's MSE terms, ½ kept)."""
        reference = self.reference(outputs)
        theta_w, theta_l = self._single_shot_errors(outputs, outputs.pred_w, outputs.pred_l)
        return -0.5 * (theta_w - reference["single_shot_ref_w"]) + 0.5 * (theta_l - reference["single_shot_ref_l"])


@register_credit("dde-single")
class DDESingleCredit(SingleShot, CreditAssigner):
    """Single-shot estimation only (the paper's DDE-Single ablation)."""

    supported_processes = None
    needs_x0 = True
    reference_inputs = "scalars"

    def __init__(self, process, timestep_range=None, alpha_bar_0: str = "one"):
        super().__init__(process, timestep_range)
        self._init_single_shot(alpha_bar_0)

    def reference_terms(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        return self.single_shot_reference_terms(outputs)

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        return self.single_shot_margin(outputs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha_bar_0={self.alpha_bar_0!r}"


class StepwiseCorrectedCredit(CreditAssigner):
    """Base of strategies whose margin is a per-pair term plus the stepwise correction ``C(τ)``.

    Holds the four EMA arrays as one persistent buffer ``ratios`` of shape ``[4, T]``, rows in the order
    ``(θ, w), (ref, w), (θ, l), (ref, l)``. ``update`` adds per-τ sums and counts to a pending buffer;
    they are all-reduced across processes (every rank then holds identical arrays) and applied by the
    EMA every micro-batch (``update_cadence="micro_batch"``, default) or once per optimizer step
    (``"optimizer_step"``: all micro-batches of a step enter one EMA update). Both the correction and the
    update cost ``O(T + B)`` and never read a value on the host.
    """

    supported_processes = None  # any process that defines transition_x0_error_coefficient
    needs_x0 = True
    reference_inputs = "scalars"

    def __init__(
        self,
        process,
        timestep_range=None,
        momentum: float = 0.1,
        correction_reduction: str = "sum",
        update_cadence: str = "micro_batch",
    ):
        super().__init__(process, timestep_range)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.momentum = float(momentum)
        self.correction_reduction = _check_choice("correction_reduction", correction_reduction, REDUCTION_CHOICES)
        self.update_cadence = _check_choice("update_cadence", update_cadence, CADENCE_CHOICES)
        self.register_buffer("ratios", torch.zeros(4, self.num_timesteps))
        self.register_buffer("pending", torch.zeros(5, self.num_timesteps), persistent=False)  # 4 sums + 1 count
        coefficient = self.process.transition_x0_error_coefficient()
        self.register_buffer("error_coefficient", coefficient.float(), persistent=False)
        self._last_correction: torch.Tensor | None = None

    def base_margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        raise NotImplementedError

    def base_reference_terms(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        """The reference terms ``base_margin`` reads."""
        raise NotImplementedError

    def reference_terms(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        """``base_reference_terms`` plus the reference rows of ``step_values`` (``red((x̂0_ref - x0)²)``, winner
        and loser, before the coefficient)."""
        t, reduction = outputs.timesteps, self.correction_reduction
        step_w = squared_error(self.process.x0(outputs.reference_prediction("w"), outputs.xt_w, t), outputs.x0_w, reduction)
        step_l = squared_error(self.process.x0(outputs.reference_prediction("l"), outputs.xt_l, t), outputs.x0_l, reduction)
        return {**self.base_reference_terms(outputs), "step_ref_w": step_w, "step_ref_l": step_l}

    def corrections(self) -> torch.Tensor:
        """``C(τ) = Σ_{k=τ+1}^{T-1} D[k]`` for every ``τ`` (a suffix sum of the current arrays)."""
        theta_w, ref_w, theta_l, ref_l = self.ratios
        difference = theta_w - ref_w - theta_l + ref_l
        suffix = difference.flip(0).cumsum(0).flip(0)  # suffix[j] = Σ_{k>=j} D[k]
        return torch.cat([suffix[1:], suffix.new_zeros(1)])

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        z = self.base_margin(outputs)
        correction = self.corrections()[outputs.timesteps]
        self._last_correction = correction.detach()
        return z + correction

    def step_values(self, outputs: DenoisingOutputs) -> torch.Tensor:
        """``½·c[τ]·red((x̂0_m - x0)²)`` per pair for the four arrays, ``[4, B]`` (``c`` the process's
        ``transition_x0_error_coefficient``, ``ā[τ-1]b²/(1-ā)²`` for DDPM); the reference rows come from
        ``reference(outputs)``."""
        process, t, reduction = self.process, outputs.timesteps, self.correction_reduction
        reference = self.reference(outputs)
        errors = torch.stack([
            squared_error(process.x0(outputs.pred_w, outputs.xt_w, t), outputs.x0_w, reduction),
            reference["step_ref_w"],
            squared_error(process.x0(outputs.pred_l, outputs.xt_l, t), outputs.x0_l, reduction),
            reference["step_ref_l"],
        ]).detach()
        return 0.5 * self.error_coefficient[t] * errors

    @torch.no_grad()
    def update(self, outputs: DenoisingOutputs) -> None:
        """Add this batch's per-τ sums and counts; apply them now (micro-batch cadence) or at the optimizer step."""
        values = self.step_values(outputs)
        timesteps = outputs.timesteps
        self.pending[:4].index_add_(1, timesteps, values)
        self.pending[4].index_add_(0, timesteps, torch.ones_like(values[0]))
        if self.update_cadence == "micro_batch":
            self._apply_pending()

    def on_optimizer_step(self) -> None:
        if self.update_cadence == "optimizer_step":
            self._apply_pending()

    @torch.no_grad()
    def _apply_pending(self) -> None:
        """EMA update ``R[τ] ← μ·R[τ] + (1-μ)·v̄[τ]`` at the visited ``τ`` (Algorithm 1, line 5), from every process."""
        totals = self.pending
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        counts = totals[4]
        means = totals[:4] / counts.clamp_min(1.0)
        updated = self.momentum * self.ratios + (1.0 - self.momentum) * means
        self.ratios.copy_(torch.where(counts > 0, updated, self.ratios))  # unvisited τ keep their value
        totals.zero_()

    def metrics(self) -> dict[str, float]:
        return {"visited_fraction": (self.ratios != 0).any(dim=0).float().mean().item()}

    def pair_metrics(self) -> dict[str, torch.Tensor]:
        return {} if self._last_correction is None else {"correction": self._last_correction}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, momentum={self.momentum}, correction_reduction={self.correction_reduction!r}, "
                f"update_cadence={self.update_cadence!r}")


@register_credit("dde-step")
class DDEStepCredit(StepwiseCorrectedCredit):
    """Stepwise estimation only (the paper's DDE-Step ablation): uniform's margin + ``C(τ)``."""

    def __init__(self, process, timestep_range=None, momentum: float = 0.1, correction_reduction: str = "sum",
                 update_cadence: str = "micro_batch", error_space: str | None = None):
        super().__init__(process, timestep_range, momentum, correction_reduction, update_cadence)
        self.error_space = check_error_space(error_space, self.process)

    def base_reference_terms(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        return denoising_reference_terms(outputs, self.error_space)

    def base_margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        return denoising_margin(outputs, self.error_space, self.reference(outputs))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, error_space={self.error_space!r}"


@register_credit("dde")
class DDECredit(SingleShot, StepwiseCorrectedCredit):
    """The paper's full method (Eq. 11): single-shot margin + stepwise correction ``C(τ)``."""

    def __init__(self, process, timestep_range=None, alpha_bar_0: str = "one", momentum: float = 0.1,
                 correction_reduction: str = "sum", update_cadence: str = "micro_batch"):
        super().__init__(process, timestep_range, momentum, correction_reduction, update_cadence)
        self._init_single_shot(alpha_bar_0)

    def base_reference_terms(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        return self.single_shot_reference_terms(outputs)

    def base_margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        return self.single_shot_margin(outputs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha_bar_0={self.alpha_bar_0!r}"
