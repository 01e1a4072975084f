"""The credit-assignment contract: ``DenoisingOutputs`` and the ``CreditAssigner`` base.

A strategy never sees a model. The trainer runs the policy and the reference once each on the
``[winners; losers]`` batch, converts their outputs to epsilon predictions and hands the strategy a
``DenoisingOutputs``. The strategy decides which timesteps are trained (``sample_timesteps``) and how
much each pair's implicit reward margin counts (``margin``); stateful strategies update themselves
after the loss (``update``). Strategies register themselves in ``registry.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

__all__ = [
    "CreditAssigner",
    "DenoisingOutputs",
    "squared_error",
]


def squared_error(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-sample squared error, reduced over every non-batch dimension (``"mean"`` or ``"sum"``)."""
    error = (prediction.float() - target.float()).pow(2).flatten(1)
    if reduction == "mean":
        return error.mean(dim=1)
    if reduction == "sum":
        return error.sum(dim=1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")


@dataclass
class DenoisingOutputs:
    """One denoising step of the policy and the reference on a batch of ``B`` preference pairs.

    All tensors have first dimension ``B`` (pairs); latents are already scaled by the VAE scaling
    factor. ``noise`` and ``timesteps`` are shared by the winner and the loser of a pair.
    """

    x0_w: torch.Tensor
    x0_l: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    xt_w: torch.Tensor
    xt_l: torch.Tensor
    eps_w: torch.Tensor
    eps_l: torch.Tensor
    eps_ref_w: torch.Tensor
    eps_ref_l: torch.Tensor

    def __post_init__(self) -> None:
        batch = self.timesteps.shape[0]
        for field in fields(self):
            value = getattr(self, field.name)
            if value.shape[0] != batch:
                raise ValueError(
                    f"DenoisingOutputs.{field.name} has {value.shape[0]} rows but timesteps has {batch}; "
                    "every field must have one row per preference pair."
                )

    @property
    def batch_size(self) -> int:
        return self.timesteps.shape[0]


class CreditAssigner(nn.Module):
    """Base class of every credit-assignment strategy.

    Subclasses implement ``margin``; they may override ``timestep_weights`` (the sampling
    distribution over ``τ``), ``update`` and ``metrics``. State that must survive a checkpoint lives in
    registered buffers, so ``state_dict()`` / ``load_state_dict()`` carry it and ``.to(device)`` moves it.

    Args:
        alphas_cumprod: the noise schedule ``ā`` (length ``T``), e.g. ``scheduler.alphas_cumprod``.
        timestep_range: optional ``[lo, hi)``; only timesteps in it are sampled (paper Fig. 3).
    """

    name: str = "base"

    def __init__(self, alphas_cumprod: torch.Tensor, timestep_range: tuple[int, int] | list[int] | None = None):
        super().__init__()
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32).detach().clone()
        if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor with one entry per timestep.")
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)
        num_timesteps = alphas_cumprod.numel()
        if timestep_range is None:
            timestep_range = (0, num_timesteps)
        lo, hi = (int(v) for v in timestep_range)
        if not 0 <= lo < hi <= num_timesteps:
            raise ValueError(
                f"timestep_range must satisfy 0 <= lo < hi <= {num_timesteps} (the schedule length), got {[lo, hi]}."
            )
        self.timestep_range = (lo, hi)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    def timestep_weights(self) -> torch.Tensor:
        """Unnormalised probability of sampling each ``τ`` before ``timestep_range`` is applied."""
        return torch.ones(self.num_timesteps)

    def sampling_probabilities(self) -> torch.Tensor:
        """The distribution ``sample_timesteps`` draws from: ``timestep_weights`` restricted to the range."""
        lo, hi = self.timestep_range
        weights = self.timestep_weights().double().cpu().clone()
        weights[:lo] = 0.0
        weights[hi:] = 0.0
        return weights / weights.sum()

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw one timestep per pair, ``LongTensor[batch_size]`` on ``device``."""
        source = generator.device if generator is not None else (device or "cpu")
        probabilities = self.sampling_probabilities()
        lo, hi = self.timestep_range
        if torch.all(probabilities[lo:hi] == probabilities[lo]):
            timesteps = torch.randint(lo, hi, (batch_size,), device=source, generator=generator)
        else:
            timesteps = torch.multinomial(probabilities.to(source), batch_size, replacement=True, generator=generator)
        return timesteps.to(device or source, dtype=torch.long)

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        """Implicit reward margin ``z`` of each pair (``Tensor[B]``), before ``beta``."""
        raise NotImplementedError

    def update(self, outputs: DenoisingOutputs) -> None:
        """Update internal state after the loss was computed. Stateless strategies do nothing."""

    def metrics(self) -> dict[str, float]:
        """Scalars worth logging about the strategy's state."""
        return {}

    def extra_repr(self) -> str:
        return f"T={self.num_timesteps}, timestep_range={list(self.timestep_range)}"
