"""Statistics for comparing a tuned model with its base on per-image scores.

Scores come in pairs: image ``i`` of the tuned model and image ``i`` of the base model share the
prompt and the seed, so every comparison here is *paired*.

* ``beat_ratio``: the share of pairs the tuned model wins (ties count one half), with the binomial
  standard error ``sqrt(r(1-r)/n)`` — the paper's Fig. 5 measure.
* ``mean_std``: mean and sample standard deviation (``ddof=1``), the ``±`` of the paper's Table 2.
* ``paired_bootstrap_ci``: a percentile bootstrap confidence interval of the mean difference
  ``tuned - base``, resampling pairs (not images) so the pairing is kept.
* ``bootstrap_ci``: the same for the mean of a single sample (e.g. one figure over several seeds).

Everything is computed in float64 with numpy and returns plain Python floats, so results go straight
into JSON reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["BeatRatio", "MeanStd", "beat_ratio", "bootstrap_ci", "mean_std", "paired_bootstrap_ci"]


def _as_array(values, name: str) -> np.ndarray:
    """A 1-D float64 array of finite values; refuses empty or non-finite input with the reason."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to compute a statistic of.")
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{name} has a non-finite value at index {bad} ({array[bad]}); scores must be finite.")
    return array


def _paired(tuned, base) -> tuple[np.ndarray, np.ndarray]:
    tuned, base = _as_array(tuned, "tuned"), _as_array(base, "base")
    if tuned.shape != base.shape:
        raise ValueError(
            f"tuned has {tuned.size} scores and base has {base.size}; paired statistics need one tuned and one "
            "base score per (prompt, seed)."
        )
    return tuned, base


@dataclass(frozen=True)
class BeatRatio:
    """How often the tuned model's image scores higher than the base model's image of the same seed."""

    ratio: float  # (wins + ties / 2) / n
    stderr: float  # binomial standard error sqrt(ratio (1 - ratio) / n)
    wins: int
    ties: int
    losses: int
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def beat_ratio(tuned, base) -> BeatRatio:
    """Share of paired images where ``tuned > base``; an exact tie counts one half."""
    tuned, base = _paired(tuned, base)
    wins, ties = int(np.sum(tuned > base)), int(np.sum(tuned == base))
    n = tuned.size
    ratio = (wins + 0.5 * ties) / n
    return BeatRatio(ratio=ratio, stderr=float(np.sqrt(ratio * (1.0 - ratio) / n)), wins=wins, ties=ties,
                     losses=n - wins - ties, n=n)


@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float  # sample standard deviation (ddof = 1); 0 for a single value
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __format__(self, spec: str) -> str:
        spec = spec or ".4g"
        return f"{self.mean:{spec}} ± {self.std:{spec}}"


def mean_std(values) -> MeanStd:
    """Mean and sample standard deviation of ``values``."""
    array = _as_array(values, "values")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return MeanStd(mean=float(array.mean()), std=std, n=int(array.size))


def _percentile_interval(statistics: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(statistics, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(values, confidence: float = 0.95, num_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    array = _as_array(values, "values")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, array.size, size=(num_resamples, array.size))
    return _percentile_interval(array[indices].mean(axis=1), confidence)


def paired_bootstrap_ci(
    tuned, base, confidence: float = 0.95, num_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(tuned - base)``, resampling whole pairs."""
    tuned, base = _paired(tuned, base)
    return bootstrap_ci(tuned - base, confidence=confidence, num_resamples=num_resamples, seed=seed)
