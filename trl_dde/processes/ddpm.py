"""The discrete DDPM process of Stable Diffusion 1.5/2.x/XL, in diffusers indexing.

Notation (DESIGN §3, the paper's Sec. 2): ``ā[τ] = alphas_cumprod[τ]``, ``ā[-1] := 1``,
``b[τ] = 1 - ā[τ]/ā[τ-1]`` (the paper's ``β_t``), ``a[τ] = 1 - b[τ]`` (``α_t``);
``x_τ = √ā[τ]·x0 + √(1-ā[τ])·ε`` (Eq. 2).

The module-level functions are the schedule math the credit strategies use (pure functions of
``alphas_cumprod``, argument order ``(values..., timesteps, alphas_cumprod)``); ``DDPMProcess`` is the
``NoiseProcess`` the trainer uses. It reads the model's native output, so a v-prediction model keeps a
finite ``x̂0`` even where ``ā = 0`` (zero terminal SNR), while an ε-prediction model has none there.
"""

from __future__ import annotations

import torch

from .base import NoiseProcess, per_sample
from .registry import register_process

__all__ = [
    "DDPMProcess",
    "ddim_jump_coefficients",
    "model_posterior_mean",
    "posterior_mean",
    "posterior_mean_error_coefficient",
    "posterior_mean_x0_error_coefficient",
    "previous_alphas_cumprod",
    "step_betas",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def previous_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``ā[τ-1]`` for every ``τ``, with the convention ``ā[-1] = 1``."""
    return torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])


def step_betas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``b[τ] = 1 - ā[τ]/ā[τ-1]``: the per-step noise variance ``β_t`` of paper Eq. 1."""
    return 1.0 - alphas_cumprod / previous_alphas_cumprod(alphas_cumprod)


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Mean ``μ̃(x_τ, x0)`` of the true posterior ``q(x_{τ-1} | x_τ, x0)`` (paper Eq. 3)."""
    abar = per_sample(alphas_cumprod, timesteps, x0)
    abar_prev = per_sample(previous_alphas_cumprod(alphas_cumprod), timesteps, x0)
    beta = per_sample(step_betas(alphas_cumprod), timesteps, x0)
    return abar_prev.sqrt() * beta / (1.0 - abar) * x0 + (1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar) * x_t


def model_posterior_mean(epsilon: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Mean ``μ_θ(x_τ, τ) = (x_τ - b/√(1-ā)·ε̂)/√a`` of the DDPM reverse step from an ``ε̂``."""
    abar = per_sample(alphas_cumprod, timesteps, x_t)
    beta = per_sample(step_betas(alphas_cumprod), timesteps, x_t)
    return (x_t - beta / (1.0 - abar).sqrt() * epsilon) / (1.0 - beta).sqrt()


def posterior_mean_error_coefficient(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``b²/(a·(1-ā))`` per ``τ``: ``‖μ_θ - μ̃‖² = b²/(a(1-ā))·‖ε̂ - ε‖²`` when ``x_τ`` was made from ``x0`` and ``ε``."""
    beta = step_betas(alphas_cumprod)
    return beta**2 / ((1.0 - beta) * (1.0 - alphas_cumprod))


def posterior_mean_x0_error_coefficient(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``ā[τ-1]·b²/(1-ā)²`` per ``τ``: ``‖μ_θ - μ̃‖² = ā[τ-1]·b²/(1-ā)²·‖x̂0 - x0‖²``.

    The same quantity as ``posterior_mean_error_coefficient`` in ``x0`` units (``x̂0 - x0 = -√(1-ā)/√ā·(ε̂ - ε)``),
    finite at every ``τ`` including a zero-SNR ``ā[T-1] = 0``.
    """
    beta = step_betas(alphas_cumprod)
    return previous_alphas_cumprod(alphas_cumprod) * beta**2 / (1.0 - alphas_cumprod) ** 2


def ddim_jump_coefficients(alphas_cumprod: torch.Tensor, alpha_bar_0: str = "one") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-τ ``(c_x0, c_ε)`` of the one-jump DDIM estimate of the terminal sample (paper Eqs. 4 and 10):
    ``μ̂ = c_x0·x̂0 + c_ε·ε̂`` with ``c_x0 = √ā0``, ``c_ε = √(1 - ā0 - σ²)``, ``σ² = (1-ā0)/(1-ā[τ])·b[τ]²``.

    ``alpha_bar_0="one"`` sets ``ā0 = 1`` (σ = 0: ``μ̂ = x̂0``); ``"scheduler"`` takes ``ā0 = ā[0]``, the
    paper's literal reading. Written in ``x̂0`` and ``ε̂`` (not Eq. 10's ``x_τ`` and ``ε̂``), it stays finite
    wherever the model's ``x̂0`` does.
    """
    if alpha_bar_0 == "one":
        abar0 = alphas_cumprod.new_ones(())
    elif alpha_bar_0 == "scheduler":
        abar0 = alphas_cumprod[0]
    else:
        raise ValueError(f"alpha_bar_0 must be 'one' or 'scheduler', got {alpha_bar_0!r}.")
    sigma_sq = (1.0 - abar0) / (1.0 - alphas_cumprod) * step_betas(alphas_cumprod) ** 2
    coef_x0 = abar0.sqrt().expand_as(alphas_cumprod)
    coef_eps = (1.0 - abar0 - sigma_sq).clamp_min(0.0).sqrt()
    return coef_x0, coef_eps


@register_process("ddpm")
class DDPMProcess(NoiseProcess):
    """Discrete DDPM with ``T = len(alphas_cumprod)`` steps; the denoiser is called with ``τ`` itself.

    Args:
        alphas_cumprod: ``ā`` (length ``T``), e.g. ``DDPMScheduler.from_config(cfg).alphas_cumprod``.
        prediction_type: the model's output: ``"epsilon"`` (``ε̂``), ``"v_prediction"``
            (``v̂ = √ā·ε - √(1-ā)·x0``) or ``"sample"`` (``x̂0``).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"Unknown prediction_type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}.")
        super().__init__(prediction_type)
        alphas_cumprod = torch.as_tensor(alphas_cumprod).detach().double().cpu()
        if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor with one entry per timestep.")
        if not (torch.all(alphas_cumprod[1:] <= alphas_cumprod[:-1]) and alphas_cumprod[0] < 1 and alphas_cumprod[-1] >= 0):
            raise ValueError("alphas_cumprod must decrease from below 1 towards 0 (a DDPM noise schedule).")
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("_signal", alphas_cumprod.sqrt().float(), persistent=False)
        self.register_buffer("_noise_scale", (1.0 - alphas_cumprod).sqrt().float(), persistent=False)
        self.register_buffer("_loss_weights", torch.ones_like(alphas_cumprod).float(), persistent=False)

    @classmethod
    def from_scheduler_config(cls, config, **options) -> "DDPMProcess":
        """The training process of any DDPM-family diffusers scheduler config (DDPM, DDIM, PNDM, Euler, ...).

        DDPM training takes no time-sampling ``options``; any given (e.g. a ``weighting_scheme``) is refused."""
        from diffusers import DDPMScheduler

        if options:
            raise ValueError(f"The DDPM process takes no time-sampling options, got {sorted(options)}: they configure "
                             "flow-matching models (SD3). Leave them unset for this model.")

        scheduler = DDPMScheduler.from_config(config)
        return cls(scheduler.alphas_cumprod, scheduler.config.prediction_type)

    @property
    def signal(self) -> torch.Tensor:
        return self._signal

    @property
    def noise_scale(self) -> torch.Tensor:
        return self._noise_scale

    @property
    def loss_weights(self) -> torch.Tensor:
        return self._loss_weights

    def transition_x0_error_coefficient(self) -> torch.Tensor:
        """The ancestral DDPM step's ``ā[τ-1]·b²/(1-ā)²`` (``posterior_mean_x0_error_coefficient``)."""
        return posterior_mean_x0_error_coefficient(self.alphas_cumprod.double().cpu())

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0)

    def epsilon(self, prediction, x_t, timesteps):
        if self.prediction_type == "epsilon":
            return prediction
        signal, noise_scale = per_sample(self.signal, timesteps, x_t), per_sample(self.noise_scale, timesteps, x_t)
        if self.prediction_type == "v_prediction":
            return signal * prediction + noise_scale * x_t
        return (x_t - signal * prediction) / noise_scale

    def x0(self, prediction, x_t, timesteps):
        if self.prediction_type == "sample":
            return prediction
        signal, noise_scale = per_sample(self.signal, timesteps, x_t), per_sample(self.noise_scale, timesteps, x_t)
        if self.prediction_type == "v_prediction":
            return signal * x_t - noise_scale * prediction
        return (x_t - noise_scale * prediction) / signal

    def target(self, x0, noise, timesteps):
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        return per_sample(self.signal, timesteps, x0) * noise - per_sample(self.noise_scale, timesteps, x0) * x0

    def x0_undefined_timesteps(self) -> list[int]:
        if self.prediction_type != "epsilon":
            return []
        return torch.nonzero(self.alphas_cumprod.cpu() == 0).flatten().tolist()
