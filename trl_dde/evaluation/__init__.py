"""Evaluation of trained models: reward scorers, paired generation, statistics, reports, validation
images during training and credit diagnostics.

Names are imported on first use, so ``import trl_dde.evaluation`` (and the ``trl-dde`` command line)
stays light until something is actually evaluated.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BeatRatio": "statistics", "MeanStd": "statistics", "beat_ratio": "statistics", "bootstrap_ci": "statistics",
    "mean_std": "statistics", "paired_bootstrap_ci": "statistics",
    "image_grid": "reports", "markdown_table": "reports", "write_csv": "reports", "write_json": "reports",
    "Reward": "rewards", "available_rewards": "rewards", "combine_rewards": "rewards", "load_reward": "rewards",
    "register_reward": "rewards",
    "available_prompt_sets": "prompts", "load_prompts": "prompts",
    "GenerationSettings": "generation", "ModelSpec": "generation", "PairedImages": "generation",
    "generate_paired": "generation", "image_seed": "generation",
    "comparison_grid": "scoring", "results_table": "scoring", "score_images": "scoring", "summarize": "scoring",
    "write_report": "scoring",
    "ValidationCallback": "callback",
    "GradientProbe": "diagnostics", "MeasuredWeights": "diagnostics", "analytic_credit_weights": "diagnostics",
    "load_correction_history": "diagnostics", "plot_correction_terms": "diagnostics", "plot_credit_weights": "diagnostics",
    "plot_single_shot_coefficient": "diagnostics", "run_diagnostics": "diagnostics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
