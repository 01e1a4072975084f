"""Credit diagnostics: how much each timestep counts under a strategy, in formulas and in measurements.

* ``analytic_credit_weights(credit)``: the expected weight each ``τ`` receives, ``T·p(τ)·s(τ)``, where
  ``p`` is the strategy's sampling distribution and ``s(τ)`` how much its margin scales uniform's
  ε-space squared error at ``τ``: uniform and dde-step 1; discounted ``γ^k / mean(γ^k)`` (sampled or
  weighted, the same in expectation); dde-single and dde ``c_ε(τ)²``, the squared ε̂ coefficient of the
  single-shot jump (Eq. 10), ``(1-ā)/ā`` with ``ā0 = 1``. The stepwise correction ``C(τ)`` adds no
  gradient of its own (it is computed without one); it acts through the sigmoid (Fig. 7).
* ``GradientProbe``: wraps any registered strategy, unchanged, and records the mean ``|∂loss/∂ε̂_θ|`` of
  every training pair; ``probe.measured_weights()`` bins it over ``τ``. This includes everything the
  formulas leave out: the sigmoid's saturation, the correction terms, the network's own error.
* the paper's Fig. 2(a) (single-shot coefficient vs ``τ``) and Fig. 7 (stepwise correction terms vs ``τ``
  and their convergence over training) from a run folder's ``checkpoint-*/credit_state.safetensors``
  and ``trainer_state.json``; ``run_diagnostics(run_dir)`` (``trl-dde eval --diagnostics RUN_DIR``) draws all.

Plots are matplotlib PNGs drawn on standalone figures (no pyplot state, no backend switch).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

from ..credit import (
    CreditAssigner,
    DDECredit,
    DDESingleCredit,
    DDEStepCredit,
    DenoisingOutputs,
    DiscountedCredit,
    UniformCredit,
    get_credit,
)
from ..processes.ddpm import ddim_jump_coefficients

__all__ = [
    "BUILTIN_STRATEGIES",
    "CorrectionHistory",
    "GradientProbe",
    "MeasuredWeights",
    "analytic_credit_weights",
    "load_alphas_cumprod",
    "load_correction_history",
    "plot_correction_terms",
    "plot_credit_weights",
    "plot_single_shot_coefficient",
    "run_diagnostics",
    "single_shot_coefficient",
]

BUILTIN_STRATEGIES = ("uniform", "discounted", "dde-single", "dde-step", "dde")
CREDIT_STATE_NAME = "credit_state.safetensors"
SD_SCHEDULE = "the Stable Diffusion 1.5/XL training schedule (scaled-linear β 0.00085 → 0.012, T = 1000)"
INSTALL = "pip install 'trl-dde[eval]'"


LINE_STYLES = ("-", "--", "-.", ":")  # strategies with equal curves (uniform/dde-step, dde-single/dde) stay visible


def _figure(title: str, columns: int = 1):
    """A standalone matplotlib figure with ``columns`` axes side by side and a (wrapped) title."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"Diagnostics plots need matplotlib: {INSTALL}") from error
    figure = Figure(figsize=(6.2 * columns, 4.6), layout="constrained")
    figure.suptitle(textwrap.fill(title, 80 * columns), fontsize=9)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def load_alphas_cumprod(model: str | None = None) -> tuple[torch.Tensor, str]:
    """``ā`` of ``model``'s scheduler (hub id or pipeline folder), or of SD1.5/SDXL's training schedule; with a label."""
    from diffusers import DDPMScheduler

    from .loading import quiet_libraries

    if model is None:
        scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        return scheduler.alphas_cumprod.double(), SD_SCHEDULE
    with quiet_libraries():
        scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    return scheduler.alphas_cumprod.double(), f"the schedule of {model}"


def single_shot_coefficient(alphas_cumprod: torch.Tensor, alpha_bar_0: str = "one") -> torch.Tensor:
    """``c_ε(τ)`` for every ``τ``: the factor of ``ε̂`` in the single-shot estimate of the terminal sample (paper
    Eq. 10, written with ``x_τ`` and ``ε̂``): ``√(1-ā0-σ²) - √ā0·√(1-ā[τ])/√ā[τ]``."""
    coef_x0, coef_eps = ddim_jump_coefficients(alphas_cumprod, alpha_bar_0)
    return coef_eps - coef_x0 * ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()


def analytic_credit_weights(credit: CreditAssigner) -> torch.Tensor | None:
    """Expected weight of every ``τ``, ``T·p(τ)·s(τ)`` (1 everywhere for uniform); ``None`` for a strategy
    without a formula here (a user-registered one: measure it with ``GradientProbe``)."""
    if isinstance(credit, GradientProbe):
        credit = credit.credit
    kind = type(credit)
    if kind in (UniformCredit, DDEStepCredit):
        scale = torch.ones(credit.num_timesteps, dtype=torch.float64)
    elif kind is DiscountedCredit:
        scale = credit.margin_weights.double().cpu() if credit.mode == "weight" else torch.ones(credit.num_timesteps, dtype=torch.float64)
    elif kind in (DDESingleCredit, DDECredit):
        scale = single_shot_coefficient(credit.alphas_cumprod.double().cpu(), credit.alpha_bar_0) ** 2
    else:
        return None
    return (credit.num_timesteps * credit.sampling_probabilities() * scale).float()


@dataclass
class MeasuredWeights:
    """Mean ``|∂loss/∂ε̂_θ|`` per pair, binned over ``τ`` (``nan`` where no pair fell)."""

    name: str
    bin_edges: list[float]
    mean_gradient: list[float]
    counts: list[int]

    def normalized(self) -> torch.Tensor:
        """``mean_gradient`` divided by its mean over the bins that saw pairs (shape comparisons)."""
        values = torch.tensor(self.mean_gradient, dtype=torch.float64)
        return values / values[~values.isnan()].mean()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class GradientProbe(CreditAssigner):
    """A strategy, unchanged, that also records how strongly each training pair pulls on the policy's prediction
    (``ε̂`` for an ε-prediction model; the model's own output otherwise).

    Use it as the trainer's credit: ``probe = GradientProbe(get_credit("dde", alphas_cumprod=...))``,
    ``DDEDiffusionTrainer(..., credit=probe).train()``, then ``probe.measured_weights()``. It records
    ``|∂loss/∂ε̂_θ|``, averaged over the prediction's elements, for winner and loser of every pair in
    training steps (through tensor hooks on the predictions the strategy's ``margin`` reads), times the
    batch size, i.e. the gradient of each pair's own loss. Gradient accumulation and loss scaling
    multiply it by a constant; each process records its own pairs. Sampling, margin, updates,
    ``name`` and the checkpointed state are the wrapped strategy's, so checkpoints load without the probe.
    """

    supported_processes = None  # whatever the wrapped strategy supports

    def __init__(self, credit: CreditAssigner):
        super().__init__(credit.process, credit.timestep_range)
        self.credit = credit
        self.name = credit.name
        self.reference_inputs = credit.reference_inputs
        self._records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def timestep_weights(self) -> torch.Tensor:
        return self.credit.timestep_weights()

    def prepare_sampling(self, device) -> None:
        self.credit.prepare_sampling(device)

    def sample_timesteps(self, batch_size, device=None, generator=None) -> torch.Tensor:
        return self.credit.sample_timesteps(batch_size, device=device, generator=generator)

    def margin(self, outputs: DenoisingOutputs) -> torch.Tensor:
        if not (torch.is_grad_enabled() and outputs.pred_w.requires_grad):
            return self.credit.margin(outputs)  # evaluation or a frozen policy: nothing to record
        timesteps, batch = outputs.timesteps.detach().cpu(), outputs.batch_size
        watched = {"pred_w": outputs.pred_w.view_as(outputs.pred_w), "pred_l": outputs.pred_l.view_as(outputs.pred_l)}
        for tensor in watched.values():
            tensor.register_hook(lambda grad: self._records.append(
                (timesteps, grad.detach().float().abs().flatten(1).mean(1).cpu() * batch)))
        return self.credit.margin(dataclasses.replace(outputs, **watched))

    def reference_terms(self, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
        return self.credit.reference_terms(outputs)

    def update(self, outputs: DenoisingOutputs) -> None:
        self.credit.update(outputs)

    def on_optimizer_step(self) -> None:
        self.credit.on_optimizer_step()

    def metrics(self) -> dict[str, float]:
        return self.credit.metrics()

    def pair_metrics(self) -> dict[str, torch.Tensor]:
        return self.credit.pair_metrics()

    def state_dict(self, *args, **kwargs):
        return self.credit.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.credit.load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return self.credit.extra_repr()

    def measured_weights(self, num_bins: int = 20) -> MeasuredWeights:
        """The recorded gradients averaged in ``num_bins`` equal ``τ`` bins."""
        if not self._records:
            raise RuntimeError("GradientProbe recorded no gradient: train with it as the credit "
                               "(DDEDiffusionTrainer(..., credit=probe).train()); evaluation steps record nothing.")
        timesteps = torch.cat([t for t, _ in self._records])
        values = torch.cat([v for _, v in self._records]).double()
        bins = (timesteps * num_bins) // self.num_timesteps
        counts = torch.bincount(bins, minlength=num_bins)
        sums = torch.bincount(bins, weights=values, minlength=num_bins)
        means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.tensor(float("nan"), dtype=torch.float64))
        edges = torch.linspace(0, self.num_timesteps, num_bins + 1)
        return MeasuredWeights(self.name, edges.tolist(), means.tolist(), counts.tolist())


def plot_credit_weights(alphas_cumprod: torch.Tensor, path: str | os.PathLike, strategies=BUILTIN_STRATEGIES,
                        measured: dict[str, MeasuredWeights] | None = None, schedule_label: str = SD_SCHEDULE) -> Path:
    """Analytic weights of ``strategies`` (default options) and, if given, measured ones, as a PNG."""
    figure, axes = _figure(f"Credit per timestep on {schedule_label}", 2 if measured else 1)
    tau = torch.arange(alphas_cumprod.numel())
    for index, name in enumerate(strategies):
        weights = analytic_credit_weights(get_credit(name, alphas_cumprod=alphas_cumprod))
        if weights is not None:
            axes[0].semilogy(tau, weights, LINE_STYLES[index % len(LINE_STYLES)], label=name)
    axes[0].set(title="Analytic weight per timestep, T·p(τ)·s(τ)", xlabel="τ (999 = pure noise)", ylabel="weight (uniform = 1)")
    axes[0].legend(fontsize=8)
    if measured:
        for index, (name, weights) in enumerate(measured.items()):
            centres = [(low + high) / 2 for low, high in zip(weights.bin_edges[:-1], weights.bin_edges[1:])]
            axes[1].semilogy(centres, weights.normalized(), LINE_STYLES[index % len(LINE_STYLES)], marker="o",
                             markersize=3, label=f"{name} ({sum(weights.counts)} records)")
        axes[1].set(title="Measured mean |∂loss/∂ε̂_θ| per τ bin", xlabel="τ", ylabel="relative to its mean over bins")
        axes[1].legend(fontsize=8)
    figure.savefig(path, dpi=110)
    return Path(path)


def plot_single_shot_coefficient(alphas_cumprod: torch.Tensor, path: str | os.PathLike, schedule_label: str = SD_SCHEDULE) -> Path:
    """The paper's Fig. 2(a): the single-shot estimation coefficient against ``τ``."""
    figure, (axis,) = _figure(f"x̂0 = c_x·x_τ + c_ε·ε̂ (Eq. 10) on {schedule_label}")
    tau = torch.arange(alphas_cumprod.numel())
    for alpha_bar_0, style in (("one", "-"), ("scheduler", "--")):
        coefficient = single_shot_coefficient(alphas_cumprod, alpha_bar_0)
        axis.semilogy(tau, coefficient.abs(), style, label=f"|c_ε(τ)|, ā0 = {alpha_bar_0}")
        axis.semilogy(tau, coefficient**2, style, label=f"c_ε(τ)² (dde-single's weight), ā0 = {alpha_bar_0}")
    axis.set(title="Single-shot estimation coefficient (paper Fig. 2a)", xlabel="τ (999 = pure noise)", ylabel="value (log)",
             ylim=(1e-4, None))
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    return Path(path)


@dataclass
class CorrectionHistory:
    """The stepwise correction ``C(τ)`` at each saved checkpoint, plus the logged per-batch mean."""

    credit: str | None
    steps: list[int]
    corrections: torch.Tensor  # [checkpoints, T]
    logged_steps: list[int]
    logged_corrections: list[float]


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for folder in glob.glob(str(run_dir / "checkpoint-*")):
        match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(folder))
        if match and os.path.isfile(os.path.join(folder, CREDIT_STATE_NAME)):
            found.append((int(match.group(1)), Path(folder)))
    return sorted(found)


def load_correction_history(run_dir: str | os.PathLike, alphas_cumprod: torch.Tensor) -> CorrectionHistory:
    """Read a run folder's checkpoints (``credit_state.safetensors``) and ``trainer_state.json``.

    ``C(τ)`` is recomputed from each checkpoint's ``ratios`` by ``StepwiseCorrectedCredit.corrections()``.
    Strategies without correction terms give an empty history (``credit`` still says which one ran).
    """
    import safetensors
    import safetensors.torch

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Run folder {run_dir} does not exist.")
    checkpoints = _checkpoints(run_dir)
    credit_name, steps, corrections = None, [], []
    for step, folder in checkpoints:
        with safetensors.safe_open(str(folder / CREDIT_STATE_NAME), framework="pt") as handle:
            credit_name = (handle.metadata() or {}).get("credit", credit_name)
        state = safetensors.torch.load_file(str(folder / CREDIT_STATE_NAME))
        if "ratios" not in state:
            continue
        if state["ratios"].shape[-1] != alphas_cumprod.numel():
            raise ValueError(f"{folder} holds ratios for T = {state['ratios'].shape[-1]} timesteps but the schedule has "
                             f"{alphas_cumprod.numel()}; pass the run's base model (--model) for its schedule.")
        credit = get_credit("dde-step", alphas_cumprod=alphas_cumprod)  # corrections() is shared by dde and dde-step
        credit.load_state_dict(state)
        steps.append(step)
        corrections.append(credit.corrections())
    states = [run_dir / "trainer_state.json"] + [folder / "trainer_state.json" for _, folder in reversed(checkpoints)]
    logged = []
    for path in states:
        if path.is_file():
            history = json.loads(path.read_text(encoding="utf-8")).get("log_history", [])
            logged = [(entry["step"], entry["credit/correction"]) for entry in history if "credit/correction" in entry]
            break
    if not checkpoints and not any(path.is_file() for path in states):
        raise FileNotFoundError(f"{run_dir} has no checkpoint-*/{CREDIT_STATE_NAME} and no trainer_state.json: is it "
                                "the output_dir of a trl-dde run (save_strategy='steps' writes checkpoints)?")
    return CorrectionHistory(
        credit=credit_name,
        steps=steps,
        corrections=torch.stack(corrections) if corrections else torch.empty(0, alphas_cumprod.numel()),
        logged_steps=[step for step, _ in logged],
        logged_corrections=[value for _, value in logged],
    )


def plot_correction_terms(history: CorrectionHistory, path: str | os.PathLike) -> Path:
    """The paper's Fig. 7: (a) ``C(τ)`` at a few ``τ`` and the logged batch mean over training steps,
    (b) ``C(τ)`` against ``τ`` at every checkpoint."""
    if not history.steps and not history.logged_steps:
        raise ValueError(f"No correction terms to plot: the run used credit={history.credit!r}; only dde and dde-step "
                         "have them.")
    figure, (convergence, profile) = _figure(f"Stepwise correction terms (paper Fig. 7), credit={history.credit}", 2)
    steps_total = history.corrections.shape[1]
    if history.steps:
        for tau in [int(steps_total * fraction) for fraction in (0.1, 0.3, 0.5, 0.7, 0.9)]:
            convergence.plot(history.steps, history.corrections[:, tau], marker="o", markersize=3, label=f"C({tau})")
        from matplotlib import colormaps

        colours = colormaps["viridis"]
        for index, (step, correction) in enumerate(zip(history.steps, history.corrections)):
            last = index == len(history.steps) - 1
            profile.plot(torch.arange(steps_total), correction, color=colours(index / max(1, len(history.steps) - 1)),
                         linewidth=2.0 if last else 0.8, label=f"step {step}" if last or index == 0 else None)
        profile.legend(fontsize=8)
    else:
        profile.text(0.5, 0.5, "no checkpoint with credit state", ha="center", va="center", transform=profile.transAxes)
    if history.logged_steps:
        convergence.plot(history.logged_steps, history.logged_corrections, "--", color="grey", label="logged batch mean")
    convergence.set(title="(a) correction terms over training", xlabel="training step", ylabel="C(τ)")
    convergence.legend(fontsize=8)
    profile.set(title="(b) correction terms against τ", xlabel="τ (999 = pure noise)", ylabel="C(τ) = Σ_{k>τ} D[k]")
    figure.savefig(path, dpi=110)
    return Path(path)


def run_diagnostics(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                    model: str | None = None) -> dict[str, Path]:
    """Draw every diagnostic of a run folder into ``output_dir`` (default ``run_dir/diagnostics``).

    Returns the written PNGs by name: ``single_shot_coefficient``, ``credit_weights`` and, when the run
    used dde or dde-step, ``correction_terms``. ``model`` (hub id or pipeline folder) supplies the noise
    schedule; by default the SD1.5/SDXL one.
    """
    alphas_cumprod, label = load_alphas_cumprod(model)
    history = load_correction_history(run_dir, alphas_cumprod)  # validates run_dir before drawing anything
    output_dir = Path(output_dir or Path(run_dir) / "diagnostics")
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "single_shot_coefficient": plot_single_shot_coefficient(alphas_cumprod, output_dir / "single_shot_coefficient.png", label),
        "credit_weights": plot_credit_weights(alphas_cumprod, output_dir / "credit_weights.png", schedule_label=label),
    }
    if history.steps or history.logged_steps:
        written["correction_terms"] = plot_correction_terms(history, output_dir / "correction_terms.png")
    return written
