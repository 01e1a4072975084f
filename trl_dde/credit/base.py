"""The credit-assignment contract: ``DenoisingOutputs`` and the ``CreditAssigner`` base.

A strategy never sees a model. The trainer runs the policy and the reference once each on the
``[winners; losers]`` batch and hands the strategy a ``DenoisingOutputs``: the models' native outputs
and the ``NoiseProcess`` that reads them (``ε̂``, ``x̂0``, the denoising target). The strategy decides
which timesteps are trained (``sample_timesteps``) and how much each pair's implicit reward margin
counts (``margin``); stateful strategies update themselves after the loss (``update``). Strategies
register themselves in ``registry.py``.

A strategy that reads the reference only through a few numbers per pair (its squared errors, say) declares
``reference_inputs = "scalars"`` and returns them from ``reference_terms``; its ``margin`` and ``update`` then
read them with ``reference(outputs)``. Those numbers can be computed before training in an inference-only
pass (``precompute_ref=True``, ``reference_cache.py``), so that the training step runs no reference at all.
Every built-in strategy does this; a strategy that reads the reference predictions themselves keeps the
default ``reference_inputs = "tensors"`` and trains with the live reference only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from ..processes import DDPMProcess, NoiseProcess

__all__ = [
    "CreditAssigner",
    "DenoisingOutputs",
    "as_process",
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


def as_process(process: NoiseProcess | torch.Tensor) -> NoiseProcess:
    """A ``NoiseProcess``; a bare ``alphas_cumprod`` tensor means ε-predicting DDPM (the DESIGN contract)."""
    if isinstance(process, NoiseProcess):
        return process
    if torch.is_tensor(process) or isinstance(process, (list, tuple)):
        return DDPMProcess(torch.as_tensor(process))
    raise TypeError(f"Expected a NoiseProcess or an alphas_cumprod tensor, got {type(process).__name__}.")


@dataclass
class DenoisingOutputs:
    """One denoising step of the policy and the reference on a batch of ``B`` preference pairs.

    All tensors have first dimension ``B`` (pairs) and are fp32; latents are already scaled by the VAE
    scaling factor. ``noise`` and ``timesteps`` are shared by the winner and the loser of a pair.
    ``pred_*`` hold the models' native outputs (``process.prediction_type``: ``ε̂``, ``v̂``, ``x̂0``, ...);
    ``eps_*`` and ``x0_hat(...)`` read them through ``process``. Without a process the predictions are
    taken to be ``ε̂``.

    ``reference`` holds the reference's per-pair terms (``CreditAssigner.reference_terms``, ``Tensor[B]``
    each) when they were computed already: from the live reference by the trainer, or read from the
    reference cache, in which case ``pred_ref_*`` are ``None`` (no reference ran). The pre-computation pass
    has no policy: its ``pred_w``/``pred_l`` are ``None``.
    """

    x0_w: torch.Tensor
    x0_l: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    xt_w: torch.Tensor
    xt_l: torch.Tensor
    pred_w: torch.Tensor | None
    pred_l: torch.Tensor | None
    pred_ref_w: torch.Tensor | None
    pred_ref_l: torch.Tensor | None
    process: NoiseProcess | None = None
    reference: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        batch = self.timesteps.shape[0]
        values = [(field.name, getattr(self, field.name)) for field in fields(self)]
        values += [(f"reference[{key!r}]", value) for key, value in (self.reference or {}).items()]
        for name, value in values:
            if torch.is_tensor(value) and value.shape[0] != batch:
                raise ValueError(
                    f"DenoisingOutputs.{name} has {value.shape[0]} rows but timesteps has {batch}; "
                    "every field must have one row per preference pair."
                )

    @property
    def batch_size(self) -> int:
        return self.timesteps.shape[0]

    def epsilon_of(self, prediction: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """``ε̂`` of a native ``prediction`` at ``x_t`` and these timesteps (the prediction itself without a process)."""
        return prediction if self.process is None else self.process.epsilon(prediction, x_t, self.timesteps)

    @property
    def eps_w(self) -> torch.Tensor:
        """Policy ``ε̂`` on the winners."""
        return self.epsilon_of(self.pred_w, self.xt_w)

    @property
    def eps_l(self) -> torch.Tensor:
        return self.epsilon_of(self.pred_l, self.xt_l)

    @property
    def eps_ref_w(self) -> torch.Tensor:
        return self.epsilon_of(self.reference_prediction("w"), self.xt_w)

    @property
    def eps_ref_l(self) -> torch.Tensor:
        return self.epsilon_of(self.reference_prediction("l"), self.xt_l)

    def reference_prediction(self, side: str) -> torch.Tensor:
        """``pred_ref_w`` (``side="w"``) or ``pred_ref_l``; an error naming the cause where no reference ran."""
        prediction = self.pred_ref_w if side == "w" else self.pred_ref_l
        if prediction is None:
            raise ValueError(
                "These DenoisingOutputs carry no reference predictions: the reference's per-pair terms were "
                "precomputed (precompute_ref=True). A strategy reads them with reference(outputs); one that needs "
                "the predictions themselves declares reference_inputs = 'tensors' and trains with the live reference."
            )
        return prediction


class CreditAssigner(nn.Module):
    """Base class of every credit-assignment strategy.

    Subclasses implement ``margin``; they may override ``timestep_weights`` (the sampling
    distribution over ``τ``), ``update``, ``on_optimizer_step`` and ``metrics``. State that must survive
    a checkpoint lives in registered buffers, so ``state_dict()`` / ``load_state_dict()`` carry it and
    ``.to(device)`` moves it.

    Class attributes a strategy sets to be refused clearly where it does not apply:
    ``supported_processes`` (names of the noise processes it is derived for; ``None``: any),
    ``needs_x0`` (it reads ``x̂0``, which some processes cannot give at some ``τ``) and
    ``reference_inputs``: ``"scalars"`` if the strategy reads the reference only through the per-pair
    terms of ``reference_terms`` (then ``precompute_ref=True`` can train it without a reference in memory),
    ``"tensors"`` (the default) if it reads ``pred_ref_*``/``eps_ref_*`` itself.

    Args:
        process: the ``NoiseProcess`` the model was trained with, or its ``alphas_cumprod`` (ε-predicting
            DDPM, e.g. ``scheduler.alphas_cumprod``).
        timestep_range: optional ``[lo, hi)``; only timesteps in it are sampled (paper Fig. 3).
    """

    name: str = "base"
    supported_processes: tuple[str, ...] | None = ("ddpm",)
    needs_x0: bool = False
    reference_inputs: str = "tensors"

    def __init__(self, process: NoiseProcess | torch.Tensor, timestep_range: tuple[int, int] | list[int] | None = None):
        super().__init__()
        self.process = as_process(process)
        if self.supported_processes is not None and self.process.name not in self.supported_processes:
            raise ValueError(
                f"Credit strategy {type(self).__name__} is derived for the noise process(es) "
                f"{list(self.supported_processes)}, not {self.process.name!r}. Choose a strategy that supports "
                f"{self.process.name!r} (docs/credit_strategies.md lists them)."
            )
        num_timesteps = self.process.num_timesteps
        if timestep_range is None:
            timestep_range = (0, num_timesteps)
        lo, hi = (int(v) for v in timestep_range)
        if not 0 <= lo < hi <= num_timesteps:
            raise ValueError(
                f"timestep_range must satisfy 0 <= lo < hi <= {num_timesteps} (the schedule length), got {[lo, hi]}."
            )
        self.timestep_range = (lo, hi)
        if self.needs_x0:
            undefined = [t for t in self.process.x0_undefined_timesteps() if lo <= t < hi]
            if undefined:
                raise ValueError(
                    f"Credit strategy {type(self).__name__} needs x̂0 at every sampled timestep, but this "
                    f"{self.process.prediction_type}-predicting model has none at τ = {undefined} (zero terminal SNR: "
                    f"alphas_cumprod is 0 there, e.g. rescale_betas_zero_snr=True). Use a v-prediction model, or "
                    f"timestep_range=[{lo}, {min(undefined)}], or a strategy that needs no x̂0 (uniform, discounted)."
                )
        self._tables: dict[torch.device, torch.Tensor] = {}
        self._uniform_sampling: bool | None = None

    @property
    def num_timesteps(self) -> int:
        return self.process.num_timesteps

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``ā`` of a DDPM process (on the strategy's device)."""
        return self.process.alphas_cumprod

    def timestep_weights(self) -> torch.Tensor:
        """Unnormalised probability of sampling each ``τ`` before ``timestep_range`` is applied
        (default: the process's own training distribution, uniform for DDPM)."""
        return self.process.timestep_weights()

    def sampling_probabilities(self) -> torch.Tensor:
        """The distribution ``sample_timesteps`` draws from: ``timestep_weights`` restricted to the range (float64, CPU)."""
        lo, hi = self.timestep_range
        weights = self.timestep_weights().double().cpu().clone()
        weights[:lo] = 0.0
        weights[hi:] = 0.0
        return weights / weights.sum()

    def prepare_sampling(self, device: torch.device | str) -> None:
        """Build the sampling distribution on ``device`` once (the trainer does this at set-up; otherwise the first
        draw does it), so that drawing timesteps never computes on or copies from the host."""
        device = torch.device(device)
        if self._uniform_sampling is None:
            probabilities = self.sampling_probabilities()
            lo, hi = self.timestep_range
            self._uniform_sampling = bool(torch.all(probabilities[lo:hi] == probabilities[lo]))
        if not self._uniform_sampling and device not in self._tables:
            self._tables[device] = self.sampling_probabilities().float().to(device)

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw one timestep per pair, ``LongTensor[batch_size]`` on ``device`` (from ``generator``'s device)."""
        source = generator.device if generator is not None else torch.device(device or "cpu")
        self.prepare_sampling(source)
        lo, hi = self.timestep_range
        if self._uniform_sampling:
            timesteps = torch.randint(lo, hi, (batch_size,), device=source, generator=generator)
        else:
            timesteps = torch.multinomial(self._tables[source], batch_size, replacement=True, generator=generator)
        return timesteps.to(device or source)

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        """Implicit reward margin ``z`` of each pair (``Tensor[B]``), before ``beta``."""
        raise NotImplementedError

    def reference_terms(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        """What the strategy needs from the reference, per pair (``Tensor[B]`` each, fp32), computed from
        ``pred_ref_*`` and the noised inputs only (never from the policy's predictions). Required where
        ``reference_inputs = "scalars"``; the keys must not start with ``"mse/"`` (the trainer's own)."""
        raise NotImplementedError(
            f"{type(self).__name__} declares reference_inputs={self.reference_inputs!r} but does not implement "
            "reference_terms(outputs)."
        )

    def reference(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        """The reference terms of ``outputs``: those it carries (computed by the trainer or read from the reference
        cache), else computed now from its reference predictions."""
        return outputs.reference if outputs.reference is not None else self.reference_terms(outputs)

    def update(self, outputs: DenoisingOutputs) -> None:
        """Update internal state after the loss was computed (every micro-batch). Stateless strategies do nothing."""

    def on_optimizer_step(self) -> None:
        """Called after every optimizer step (for state updated per optimizer step rather than per micro-batch)."""

    def metrics(self) -> dict[str, float]:
        """Scalars worth logging about the strategy's state (read on the host at logging time only; the state must
        be identical on every process)."""
        return {}

    def pair_metrics(self) -> dict[str, torch.Tensor]:
        """Per-pair values of the latest ``margin`` call (``Tensor[B]`` each), logged as ``credit/<key>`` averaged
        over the logging window and every process."""
        return {}

    def extra_repr(self) -> str:
        return f"process={self.process.name}, T={self.num_timesteps}, timestep_range={list(self.timestep_range)}"
