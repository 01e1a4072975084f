"""The benchmark's figures: reward along training, each method's credit profile, the stepwise correction
against τ, and the paper's Fig. 3 segment sweep. Each takes ``results.json``'s content and writes a PNG.

The credit profiles are the evaluation package's analytic weights (``analytic_credit_weights``) of the
strategies as the benchmark configured them; the corrections are the ``C(τ)`` each dde-family run held at
its last step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluation.diagnostics import LINE_STYLES, analytic_credit_weights

__all__ = ["plot_corrections", "plot_credit_profiles", "plot_reward_curves", "plot_segments", "write_plots"]


def _figure(title: str):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("The benchmark's plots need matplotlib: pip install 'trl-dde[eval]'") from error
    figure = Figure(figsize=(7.5, 4.6), layout="constrained")
    axis = figure.subplots()
    axis.set_title(title, fontsize=10)
    return figure, axis


def _style(index: int) -> dict:
    return {"linestyle": LINE_STYLES[index % len(LINE_STYLES)], "color": f"C{index % 10}"}


def plot_reward_curves(report: dict, path: Path) -> Path:
    """Mean held-out preference against training step, per method (mean over seeds, band = min..max over seeds)."""
    figure, axis = _figure("Held-out preference during training (mean over seeds; band: seed range)")
    base = report["base"]["preference"]["mean"]
    for index, (method, curves) in enumerate(report["reward_curves"].items()):
        steps = [0] + [step for step, _ in curves[0]]
        values = np.array([[base] + [value for _, value in curve] for curve in curves])
        axis.plot(steps, values.mean(axis=0), marker="o", markersize=3, label=method, **_style(index))
        if len(curves) > 1:
            axis.fill_between(steps, values.min(axis=0), values.max(axis=0), alpha=0.12, color=_style(index)["color"])
    axis.axhline(base, color="black", linewidth=0.8, linestyle=":", label="base")
    axis.set(xlabel="training step", ylabel="preference (fidelity + 0.15 x clean background)")
    axis.legend(fontsize=7, ncol=2)
    figure.savefig(path, dpi=110)
    return path


def plot_credit_profiles(methods: list[str], alphas_cumprod, path: Path) -> Path:
    """Expected weight per τ, ``T·p(τ)·s(τ)``, of each method's strategy as the benchmark configures it."""
    from ..credit import get_credit
    from .experiment import method_config

    figure, axis = _figure("Credit profile of each method: expected weight per timestep (uniform = 1)")
    tau = np.arange(len(alphas_cumprod))
    drawn = 0
    for method in methods:
        config = method_config(method)
        if config.get("loss_type") == "sft":
            continue
        credit = get_credit(config["credit"], alphas_cumprod=alphas_cumprod, timestep_range=config.get("timestep_range"),
                            **config.get("credit_kwargs", {}))
        weights = analytic_credit_weights(credit)
        if weights is None:  # a user strategy without a formula
            continue
        axis.semilogy(tau, weights.clamp_min(1e-6).numpy(), label=method, **_style(drawn))
        drawn += 1
    axis.set(xlabel="τ (999 = pure noise)", ylabel="weight (log)", ylim=(1e-4, None))
    axis.legend(fontsize=7, ncol=2)
    figure.savefig(path, dpi=110)
    return path


def plot_corrections(report: dict, path: Path) -> Path | None:
    """``C(τ)`` at the end of training for the methods that keep one (dde, dde-step), mean over seeds."""
    corrections = {method: values for method, values in report["corrections"].items() if values}
    if not corrections:
        return None
    figure, axis = _figure("Stepwise correction C(τ) = Σ_{k>τ} D[k] after training (mean over seeds)")
    for index, (method, per_seed) in enumerate(corrections.items()):
        values = np.mean(np.asarray(per_seed, dtype=float), axis=0)
        axis.plot(np.arange(values.size), values, label=method, **_style(index))
    axis.axhline(0.0, color="black", linewidth=0.6)
    axis.set(xlabel="τ (999 = pure noise)", ylabel="C(τ)")
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    return path


def plot_segments(report: dict, path: Path) -> Path | None:
    """The paper's Fig. 3: preference gain over the base when uniform credit covers only one τ segment."""
    segments = [(method, r) for method, r in report["results"].items() if method.startswith("uniform@")]
    if not segments:
        return None
    figure, axis = _figure("Preference gain over the base, uniform credit on one τ segment only (paper Fig. 3)")
    labels = [method.removeprefix("uniform@") for method, _ in segments]
    gains = [r["difference_vs_base"] for _, r in segments]
    lows = [gain - r["difference_ci95"][0] for gain, (_, r) in zip(gains, segments)]
    highs = [r["difference_ci95"][1] - gain for gain, (_, r) in zip(gains, segments)]
    axis.bar(labels, gains, yerr=[lows, highs], capsize=3, color="C0")
    if "uniform" in report["results"]:
        axis.axhline(report["results"]["uniform"]["difference_vs_base"], color="C3", linestyle="--",
                     label="uniform on every τ")
        axis.legend(fontsize=8)
    axis.axhline(0.0, color="black", linewidth=0.6)
    axis.set(xlabel="τ segment", ylabel="Δ preference vs base (95% CI)")
    axis.tick_params(axis="x", labelsize=7, rotation=30)
    figure.savefig(path, dpi=110)
    return path


def write_plots(report: dict, alphas_cumprod, output: Path) -> list[Path]:
    """Every figure that applies to ``report``; returns the files written."""
    written = [plot_reward_curves(report, output / "reward_curves.png"),
               plot_credit_profiles(report["methods"], alphas_cumprod, output / "credit_profiles.png"),
               plot_corrections(report, output / "corrections.png"),
               plot_segments(report, output / "segments.png")]
    return [path for path in written if path is not None]
