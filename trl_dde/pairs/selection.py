"""Which of a prompt's K scored images form preference pairs.

* ``best_worst``: the highest- against the lowest-scoring image, one pair per prompt, kept when their
  difference reaches ``margin``;
* ``margin``: every ordered pair ``(i, j)`` with ``score_i - score_j >= margin`` (and ``> 0``);
* ``random``: the images shuffled (a seeded permutation) and paired two by two, each pair ordered by score;
  a pair closer than ``margin`` (or exactly equal with ``margin=0``) is kept and marked ``tie``.

Every returned pair is ``(chosen, rejected, tie)`` with ``score[chosen] >= score[rejected]``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["SELECTIONS", "check_selection", "select_pairs"]

SELECTIONS = ("best_worst", "margin", "random")


def check_selection(selection: str, margin: float) -> None:
    """Refuse an unknown ``selection`` or a negative ``margin`` (checked before any image is generated)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}.")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (a score difference), got {margin}.")


def select_pairs(scores, selection: str = "best_worst", margin: float = 0.0,
                 seed: int | Sequence[int] = 0) -> list[tuple[int, int, bool]]:
    """Pairs of image indices ``(chosen, rejected, tie)`` from one prompt's ``scores`` (a sequence of K floats);
    ``seed`` (an int or a sequence of ints, e.g. ``[seed, prompt_index]``) drives the ``random`` shuffle."""
    check_selection(selection, margin)
    scores = [float(s) for s in scores]
    if len(scores) < 2:
        raise ValueError(f"A pair needs at least 2 images per prompt, got {len(scores)}; raise images_per_prompt.")
    if selection == "best_worst":
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        difference = scores[best] - scores[worst]
        return [(best, worst, False)] if difference > 0 and difference >= margin else []
    if selection == "margin":
        return [(i, j, False) for i in range(len(scores)) for j in range(len(scores))
                if scores[i] - scores[j] > 0 and scores[i] - scores[j] >= margin]
    order = np.random.default_rng(seed).permutation(len(scores)).tolist()
    pairs = []
    for a, b in zip(order[0::2], order[1::2]):
        chosen, rejected = (a, b) if scores[a] >= scores[b] else (b, a)
        difference = scores[chosen] - scores[rejected]
        pairs.append((chosen, rejected, difference == 0 or difference < margin))
    return pairs
