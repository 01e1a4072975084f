"""The noise-process seam: how clean latents become noisy ones and how a model's output is read.

A ``NoiseProcess`` owns everything that depends on the forward process and on what the denoiser
predicts, so the trainer and the credit strategies never see a schedule directly:

* a grid of ``T`` training times indexed ``τ = 0..T-1`` (``τ = T-1`` the noisiest), the index that
  strategies sample, restrict (``timestep_range``) and keep per-τ state on;
* noising ``x_τ = signal[τ]·x0 + noise_scale[τ]·ε`` (``add_noise``) and the time value the denoiser is
  called with (``model_timesteps``);
* conversions of the model's native output (``prediction_type``) to ``ε̂`` and ``x̂0`` and the target
  of its plain denoising loss (``target``);
* the default distribution of training times (``timestep_weights``) and the per-τ weight of the plain
  denoising loss (``loss_weights``);
* the coefficient that turns an ``x̂0`` error into the error of the sampler's stochastic transition mean
  (``transition_x0_error_coefficient``), which the stepwise DDE correction accumulates.

Processes are ``torch.nn.Module``s holding their tables as non-persistent buffers, so one ``.to(device)``
puts them next to the data: reading a coefficient never copies from the host during a step.
New processes register with ``register_process`` (one file each, like credit strategies).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NoiseProcess", "per_sample"]


def per_sample(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[timesteps]`` shaped ``[B, 1, 1, ...]`` to broadcast over ``like``, in ``like``'s dtype.

    ``values`` must already be on ``like``'s device (processes keep their tables as buffers).
    """
    return values[timesteps].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class NoiseProcess(nn.Module):
    """Base class of noise processes. Subclasses fill the tables and the conversions.

    Attributes:
        name: the registry name (``"ddpm"``, ...); strategies list the names they support.
        prediction_type: what the denoiser outputs, e.g. ``"epsilon"``, ``"v_prediction"``, ``"sample"``.
    """

    name: str = "base"
    default_error_space: str = "epsilon"  # where uniform-style margins measure the denoising error by default

    def __init__(self, prediction_type: str):
        super().__init__()
        self.prediction_type = prediction_type

    # ---- the time grid ------------------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        return self.signal.numel()

    @property
    def signal(self) -> torch.Tensor:
        """``signal[τ]``, the scale of ``x0`` in ``x_τ`` (``Tensor[T]``)."""
        raise NotImplementedError

    @property
    def noise_scale(self) -> torch.Tensor:
        """``noise_scale[τ]``, the scale of ``ε`` in ``x_τ`` (``Tensor[T]``)."""
        raise NotImplementedError

    def timestep_weights(self) -> torch.Tensor:
        """Unnormalised default probability of training on each ``τ`` (uniform)."""
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    @property
    def loss_weights(self) -> torch.Tensor:
        """Per-τ weight of the plain denoising loss (``Tensor[T]`` buffer; all ones unless the process's training
        recipe weights its loss, e.g. SD3's ``sigma_sqrt``)."""
        raise NotImplementedError

    def model_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The time value the denoiser is called with for grid indices ``timesteps``."""
        return timesteps

    def transition_x0_error_coefficient(self) -> torch.Tensor:
        """``c[τ]`` (float64, CPU) with ``‖μ_θ(x_τ) - μ*(x_τ, x0)‖² = c[τ]·‖x̂0 - x0‖²``, where ``μ`` is the mean of the
        stochastic sampler step leaving ``τ`` and ``μ*`` that mean with the true denoising target."""
        raise NotImplementedError

    # ---- noising and conversions ---------------------------------------------------------------------

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x_τ = signal[τ]·x0 + noise_scale[τ]·ε``."""
        return per_sample(self.signal, timesteps, x0) * x0 + per_sample(self.noise_scale, timesteps, x0) * noise

    def epsilon(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``ε̂`` from the model's output."""
        raise NotImplementedError

    def x0(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x̂0`` from the model's output."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What a perfect model outputs: the target of its plain denoising loss."""
        raise NotImplementedError

    def x0_undefined_timesteps(self) -> list[int]:
        """Grid indices where ``x̂0`` cannot be computed from this model's output (e.g. ``ε``-prediction at zero
        terminal SNR). Strategies that need ``x̂0`` refuse to train there."""
        return []

    def same_as(self, other: "NoiseProcess") -> bool:
        """Whether ``other`` is the same process (type, prediction type and tables)."""
        return (
            type(other) is type(self)
            and other.prediction_type == self.prediction_type
            and other.num_timesteps == self.num_timesteps
            and torch.equal(other.signal.cpu(), self.signal.cpu())
            and torch.equal(other.noise_scale.cpu(), self.noise_scale.cpu())
        )

    def extra_repr(self) -> str:
        return f"T={self.num_timesteps}, prediction_type={self.prediction_type!r}"
