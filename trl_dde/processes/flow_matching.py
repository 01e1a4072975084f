"""Rectified-flow matching (Stable Diffusion 3/3.5, Flux.1): ``x_σ = (1-σ)·x0 + σ·ε``, the model predicts ``v = ε - x0``.

The training grid is ``FlowMatchEulerDiscreteScheduler``'s: ``T = num_train_timesteps`` sigmas, grid index
``τ = 0..T-1`` (``τ = T-1`` the noisiest, ``σ = 1``) at unshifted time ``s_τ = (τ+1)/T`` and
``σ_τ = shift·s/(1 + (shift-1)·s)`` (``σ_τ = s_τ`` for a scheduler that shifts by resolution at sampling time,
Flux's: its training sigmas are unshifted); the model time is ``σ·T``.

Training times are drawn as diffusers' SD3 training utilities draw them (``compute_density_for_timestep_sampling``
then ``indices = (u·T).long()`` into the scheduler's descending timesteps): ``u`` uniform (``weighting_scheme``
``"none"``, ``"uniform"``, ``"sigma_sqrt"``, ``"cosmap"``), logit-normal (``u = sigmoid(N(logit_mean, logit_std))``) or
``"mode"`` (``u = 1 - w - mode_scale·(cos²(πw/2) - 1 + w)``, ``w`` uniform). Here they are exact probability masses
over the ``T`` bins (``timestep_weights``), so ``timestep_range`` and per-τ credit stay defined. The loss weighting of
``compute_loss_weighting_for_sd3`` (``sigma_sqrt``: ``σ⁻²``; ``cosmap``: ``2/(π(1-2σ+2σ²))``; else 1) is
``loss_weights``.

The stepwise (DDE) transition is the SDE form of the Euler sampler Flow-GRPO uses: from ``σ`` to ``σ' < σ``,
``x' ~ N(x + (σ'-σ)·[v̂ + s²/(2σ)·(x + (1-σ)·v̂)], s²·(σ-σ'))`` with ``s = a·√(σ/(1-σ))``; its mean depends on
``v̂`` through ``(σ'-σ)(1 + a²/2)·v̂``, hence ``transition_x0_error_coefficient`` (docs/credit_strategies.md).
"""

from __future__ import annotations

import math

import torch

from .base import NoiseProcess, per_sample
from .registry import register_process

__all__ = ["FlowMatchingProcess", "WEIGHTING_SCHEMES", "check_time_sampling", "time_sampling_masses"]

WEIGHTING_SCHEMES = ("none", "uniform", "sigma_sqrt", "cosmap", "logit_normal", "mode")
MODE_SCALE_LIMIT = 1.0 / (math.pi / 2.0 - 1.0)  # the mode map is monotone (a distribution over u) below this


def check_time_sampling(weighting_scheme: str, logit_mean: float, logit_std: float, mode_scale: float) -> None:
    """Refuse time-sampling options diffusers' SD3 utilities do not define, naming the valid range."""
    if weighting_scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"weighting_scheme must be one of {list(WEIGHTING_SCHEMES)} (diffusers' SD3 training "
                         f"choices), got {weighting_scheme!r}.")
    if not logit_std > 0:
        raise ValueError(f"logit_std must be > 0 (the standard deviation of logit-normal time sampling), got {logit_std}.")
    if not math.isfinite(logit_mean):
        raise ValueError(f"logit_mean must be finite, got {logit_mean}.")
    if not 0 <= mode_scale < MODE_SCALE_LIMIT:
        raise ValueError(f"mode_scale must be in [0, {MODE_SCALE_LIMIT:.4f}) so the mode density is a distribution "
                         f"(its map u(w) stays monotone); SD3 uses 1.29. Got {mode_scale}.")


def _mode_map(w: torch.Tensor, scale: float) -> torch.Tensor:
    """SD3's mode sampling ``u(w) = 1 - w - scale·(cos²(πw/2) - 1 + w)``, decreasing from 1 to 0 on ``[0, 1]``."""
    return 1.0 - w - scale * (torch.cos(math.pi * w / 2.0) ** 2 - 1.0 + w)


def _mode_inverse(u: torch.Tensor, scale: float, iterations: int = 64) -> torch.Tensor:
    """``w`` with ``u(w) = u`` by bisection (``u(w)`` is decreasing), float64."""
    lo, hi = torch.zeros_like(u), torch.ones_like(u)
    for _ in range(iterations):
        middle = (lo + hi) / 2
        above = _mode_map(middle, scale) > u  # still left of the root
        lo, hi = torch.where(above, middle, lo), torch.where(above, hi, middle)
    return (lo + hi) / 2


def time_sampling_masses(num_timesteps: int, weighting_scheme: str = "none", logit_mean: float = 0.0,
                         logit_std: float = 1.0, mode_scale: float = 1.29) -> torch.Tensor:
    """Probability of each grid index ``τ`` under diffusers' SD3 time sampling (float64, sums to 1).

    Scheduler index ``i = floor(u·T)`` is grid index ``τ = T-1-i``, so ``P(τ) = P(u ∈ [i/T, (i+1)/T))``.
    """
    edges = torch.linspace(0.0, 1.0, num_timesteps + 1, dtype=torch.float64)
    if weighting_scheme == "logit_normal":
        inner = torch.special.ndtr((torch.logit(edges[1:-1]) - logit_mean) / logit_std)
        cdf = torch.cat([edges.new_zeros(1), inner, edges.new_ones(1)])
    elif weighting_scheme == "mode":
        cdf = 1.0 - _mode_inverse(edges, mode_scale)  # P(u < e) = P(w > w(e)) = 1 - w(e)
        cdf[0], cdf[-1] = 0.0, 1.0
    else:
        cdf = edges
    masses = (cdf[1:] - cdf[:-1]).clamp_min(0.0)
    return (masses / masses.sum()).flip(0)


@register_process("flow_matching")
class FlowMatchingProcess(NoiseProcess):
    """Rectified flow on a shifted discrete sigma grid, with SD3's time sampling and loss weighting.

    Args:
        sigmas: ``σ_τ`` ascending (``T`` values in ``(0, 1]``), e.g. ``from_scheduler_config``'s.
        num_train_timesteps: the model-time scale (the transformer is called with ``σ·num_train_timesteps``).
        weighting_scheme, logit_mean, logit_std, mode_scale: SD3's time sampling and loss weighting (module docstring).
        sde_noise_level: ``a`` of the SDE sampler whose Gaussian transitions the stepwise DDE correction measures
            (Flow-GRPO's default 0.7).
    """

    default_error_space = "prediction"  # the velocity error, what SD3 training and flow-DPO implementations use

    def __init__(self, sigmas: torch.Tensor, num_train_timesteps: int | None = None, weighting_scheme: str = "none",
                 logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29, sde_noise_level: float = 0.7):
        super().__init__("flow_prediction")
        sigmas = torch.as_tensor(sigmas).detach().double().cpu()
        if sigmas.ndim != 1 or sigmas.numel() < 2 or not (torch.all(sigmas[1:] > sigmas[:-1]) and sigmas[0] > 0 and sigmas[-1] <= 1):
            raise ValueError("sigmas must be a 1-D increasing tensor in (0, 1] with one entry per training timestep.")
        check_time_sampling(weighting_scheme, logit_mean, logit_std, mode_scale)
        if not sde_noise_level >= 0:
            raise ValueError(f"sde_noise_level must be >= 0, got {sde_noise_level}.")
        self.num_train_timesteps = int(num_train_timesteps or sigmas.numel())
        self.weighting_scheme, self.logit_mean, self.logit_std = weighting_scheme, float(logit_mean), float(logit_std)
        self.mode_scale, self.sde_noise_level = float(mode_scale), float(sde_noise_level)
        self.register_buffer("sigmas", sigmas.float(), persistent=False)
        self.register_buffer("_signal", (1.0 - sigmas).float(), persistent=False)
        self.register_buffer("_loss_weights", self._loss_weighting(sigmas).float(), persistent=False)

    @classmethod
    def from_scheduler_config(cls, config, **options) -> "FlowMatchingProcess":
        """The training process of a ``FlowMatchEulerDiscreteScheduler`` config, with time-sampling ``options``: the
        scheduler's training sigmas, as diffusers' SD3 and Flux training scripts read them — shifted by ``shift``
        (SD3), or unshifted where the scheduler shifts by resolution at sampling time (``use_dynamic_shifting``, Flux)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        return cls(scheduler.sigmas.flip(0), scheduler.config.num_train_timesteps, **options)

    def _loss_weighting(self, sigmas: torch.Tensor) -> torch.Tensor:
        if self.weighting_scheme == "sigma_sqrt":
            return sigmas**-2.0
        if self.weighting_scheme == "cosmap":
            return 2.0 / (math.pi * (1.0 - 2.0 * sigmas + 2.0 * sigmas**2))
        return torch.ones_like(sigmas)

    @property
    def signal(self) -> torch.Tensor:
        return self._signal

    @property
    def noise_scale(self) -> torch.Tensor:
        return self.sigmas

    @property
    def loss_weights(self) -> torch.Tensor:
        return self._loss_weights

    def timestep_weights(self) -> torch.Tensor:
        return time_sampling_masses(self.num_timesteps, self.weighting_scheme, self.logit_mean, self.logit_std, self.mode_scale)

    def model_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.sigmas[timesteps] * self.num_train_timesteps

    def epsilon(self, prediction, x_t, timesteps):
        """``ε̂ = x_σ + (1-σ)·v̂``."""
        return x_t + per_sample(self.signal, timesteps, x_t) * prediction

    def x0(self, prediction, x_t, timesteps):
        """``x̂0 = x_σ - σ·v̂``: one Euler jump to ``σ = 0``."""
        return x_t - per_sample(self.sigmas, timesteps, x_t) * prediction

    def target(self, x0, noise, timesteps):
        return noise - x0

    def transition_x0_error_coefficient(self) -> torch.Tensor:
        """``(σ_τ - σ_{τ-1})²·(1 + a²/2)²/σ_τ²`` (``σ_{-1} = 0``): ``‖μ_θ - μ*‖² = coef·‖x̂0 - x0‖²`` for the SDE
        sampler's step ``σ_τ → σ_{τ-1}``, ``μ*`` its mean with the true velocity ``(x_σ - x0)/σ``."""
        sigmas = self.sigmas.double().cpu()
        steps = sigmas - torch.cat([sigmas.new_zeros(1), sigmas[:-1]])
        return steps**2 * (1.0 + self.sde_noise_level**2 / 2.0) ** 2 / sigmas**2

    def same_as(self, other: NoiseProcess) -> bool:
        return super().same_as(other) and all(
            getattr(other, key) == getattr(self, key)
            for key in ("num_train_timesteps", "weighting_scheme", "logit_mean", "logit_std", "mode_scale", "sde_noise_level")
        )

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, shift σ grid [{self.sigmas[0].item():.4g}, {self.sigmas[-1].item():.4g}], "
                f"weighting_scheme={self.weighting_scheme!r}")
