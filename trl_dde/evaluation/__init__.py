"""Evaluation of trained models: statistics for paired comparisons (more to come: scorers, generation, reports)."""

from .statistics import BeatRatio, MeanStd, beat_ratio, bootstrap_ci, mean_std, paired_bootstrap_ci

__all__ = ["BeatRatio", "MeanStd", "beat_ratio", "bootstrap_ci", "mean_std", "paired_bootstrap_ci"]
