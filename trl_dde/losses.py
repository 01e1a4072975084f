"""The preference losses on the implicit reward margin ``z`` (DESIGN §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["preference_loss"]


def preference_loss(z: torch.Tensor, preference: torch.Tensor, beta: float, loss_type: str) -> torch.Tensor:
    """Per-pair loss. ``preference`` is 1 for decided pairs and 0.5 for kept ties (a tie is the average of
    both orderings for ``sigmoid`` and has no margin target for ``hinge``/``ipo``).

    ``sigmoid``: ``-log σ(βz)``; ``hinge``: ``relu(1 - βz)``; ``ipo``: ``(z - 1/(2β))²``.
    """
    preference = preference.to(z.dtype)
    if loss_type == "sigmoid":
        return -(preference * F.logsigmoid(beta * z) + (1 - preference) * F.logsigmoid(-beta * z))
    sign = 2 * preference - 1  # 1 for decided pairs, 0 for ties
    if loss_type == "hinge":
        return torch.relu(1 - sign * beta * z)
    if loss_type == "ipo":
        return (z - sign / (2 * beta)) ** 2
    raise ValueError(f"No preference loss for loss_type={loss_type!r}.")
