"""Training metrics kept on the device and read on the host only at logging time.

The step adds per-pair values (``record``) and counters (``count``) to device tensors; nothing is
synchronised with the host inside a step. When transformers logs, ``drain`` all-reduces one fixed-size
tensor per metric group across processes (every rank takes part whatever its batch held, so ranks never
wait on mismatched collectives) and returns averages over every pair seen by every process since the
last log.

The same object watches for non-finite values: ``watch`` records, on the device, the first step at
which the policy's or the reference's prediction, the margin or the loss stopped being finite, with a
few magnitudes of that moment. ``check_finite`` (called when logging and before every checkpoint) turns
that record into a ``FloatingPointError`` that names the step, the values and the fix that matches the cause.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist

__all__ = ["StepMetrics"]

# what became non-finite first, in the order the step computes it, and what to do about it
CAUSES = {
    "reference": "the frozen reference produced non-finite predictions, so the inputs or the precision are at fault, "
                 "not the update: under fp16 the denoiser overflows (use bf16 or fp32), or the data holds non-finite "
                 "pixels/latents (check the dataset and a precomputed cache)",
    "policy": "the policy diverged: lower learning_rate, set max_grad_norm=1.0, use bf16 instead of fp16, or lower beta; "
              "then resume from the last checkpoint",
    "margin": "the credit strategy {credit!r} returned a non-finite margin from finite predictions: check its "
              "credit_kwargs and the schedule (a zero-terminal-SNR schedule needs a v-prediction model for strategies "
              "that read x̂0)",
    "loss": "the loss overflowed from a finite margin: lower beta (loss_type='ipo' squares beta·z)",
}


class StepMetrics:
    """Device-side accumulators for the ``train`` and ``eval`` modes, and the non-finite watch."""

    def __init__(self, device: torch.device):
        self.device = device
        self._sums: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        self._counts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        self._totals: dict[str, torch.Tensor] = {}  # running counters (never reset), e.g. rows skipped
        self._first_bad = torch.full((len(CAUSES),), -1, dtype=torch.long, device=device)
        self._bad_values = torch.zeros(len(CAUSES), dtype=torch.float32, device=device)

    # ---- adding, no host synchronisation ------------------------------------------------------------------

    def record(self, mode: str, values: dict[str, torch.Tensor]) -> None:
        """Add per-pair values (``Tensor[B]`` each): logged as their average over pairs and processes."""
        for key, value in values.items():
            value = value.detach().float().reshape(-1)
            if key in self._sums[mode]:
                self._sums[mode][key] += value.sum()
                self._counts[mode][key] += value.numel()
            else:
                self._sums[mode][key] = value.sum()
                self._counts[mode][key] = torch.full((), value.numel(), dtype=torch.float32, device=value.device)

    def count(self, key: str, amount: torch.Tensor | int) -> None:
        """Add to a running total (summed over processes when read), e.g. rows a stream skipped."""
        amount = torch.as_tensor(amount, device=self.device).float()
        self._totals[key] = self._totals[key] + amount if key in self._totals else amount.clone()

    def watch(self, step: int, **tensors: torch.Tensor) -> None:
        """Note the first step where each of ``reference``, ``policy``, ``margin``, ``loss`` was non-finite."""
        for index, cause in enumerate(CAUSES):
            tensor = tensors.get(cause)
            if tensor is None:
                continue
            tensor = tensor.detach()
            bad = ~torch.isfinite(tensor).all()
            first = bad & (self._first_bad[index] < 0)
            self._first_bad[index] = torch.where(first, step, self._first_bad[index])
            self._bad_values[index] = torch.where(first, tensor.float().abs().amax(), self._bad_values[index])

    # ---- reading, at logging time ---------------------------------------------------------------------------

    @staticmethod
    def _all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum (or min) ``tensor`` over processes in place; a no-op in a single process."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
        return tensor

    def drain(self, mode: str) -> dict[str, float]:
        """Averages since the last drain over every process's pairs; empties the buffers of ``mode``.

        Every process must call this at the same point (transformers logs on every rank), with the same keys
        (every rank runs the same step code)."""
        keys = sorted(self._sums[mode])
        if not keys:
            return {}
        stacked = torch.stack([torch.stack([self._sums[mode][k], self._counts[mode][k]]) for k in keys])  # [K, 2]
        totals = self._all_reduce(stacked).tolist()
        self._sums[mode].clear()
        self._counts[mode].clear()
        return {key: total / count for key, (total, count) in zip(keys, totals) if count > 0}

    def totals(self) -> dict[str, float]:
        """The running counters summed over processes."""
        keys = sorted(self._totals)
        if not keys:
            return {}
        values = self._all_reduce(torch.stack([self._totals[k] for k in keys])).tolist()
        return dict(zip(keys, values))

    def check_finite(self, credit_name: str) -> None:
        """Raise ``FloatingPointError`` if any process saw a non-finite value (one small all-reduce)."""
        first_bad = self._first_bad.clone()
        first_bad[first_bad < 0] = torch.iinfo(torch.long).max  # the earliest step over processes wins
        first_bad = self._all_reduce(first_bad, "min")
        seen = [(int(step), index, cause) for index, (cause, step) in enumerate(zip(CAUSES, first_bad.tolist()))
                if step != torch.iinfo(torch.long).max]
        if not seen:
            return
        step, index, cause = min(seen)  # the earliest, and at equal steps the first in the order of the step
        values = ", ".join(f"{name}: first non-finite at step {s}" for s, _, name in sorted(seen))
        largest = float(self._bad_values[index])
        raise FloatingPointError(
            f"Training stopped: the {cause} became non-finite at step {step} (max |value| then: {largest:.3g}; {values}). "
            f"Cause and fix: {CAUSES[cause].format(credit=credit_name)}. Checkpoints written before step {step} are intact."
        )
