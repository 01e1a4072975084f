"""The benchmark's programmatic preference: prompt fidelity first, then a clean background.

``score = fidelity + 0.15 * cleanliness``, where fidelity is the share of caption attributes the
world's checker reads back (0-1) and cleanliness is ``1 - min(1, background std / 40)`` (a robust std of the border pixels) (1 for a flat
background, 0 for heavy speckle). A reader can predict every label: an on-prompt image wins; between
equally faithful images, the one with the calmer background wins; equal scores (to 0.03) are ties.
It is registered as the reward ``"benchmark-preference"`` (and ``"benchmark-fidelity"``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..evaluation.rewards import register_reward
from .world import fidelity

__all__ = ["TIE_MARGIN", "cleanliness", "preference_label", "preference_score"]

TIE_MARGIN = 0.03
STYLE_WEIGHT = 0.15  # below one attribute (0.2): fidelity always outranks style

def cleanliness(image: Image.Image) -> float:
    """1 for a flat background, falling to 0 as the background's pixel std reaches 40 (0-255 scale)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    # a robust std (1.4826 x median absolute deviation): a large shape may touch the border
    spread = 1.4826 * np.median(np.abs(border - np.median(border, axis=0)), axis=0).mean()
    return float(1.0 - min(1.0, spread / 40.0))

def preference_score(image: Image.Image, caption: str) -> float:
    return fidelity(image, caption) + STYLE_WEIGHT * cleanliness(image)

def preference_label(image_0: Image.Image, image_1: Image.Image, caption: str) -> float:
    """Pick-a-Pic's ``label_0``: 1 if image 0 is preferred, 0 if image 1 is, 0.5 for a tie."""
    difference = preference_score(image_0, caption) - preference_score(image_1, caption)
    return 0.5 if abs(difference) < TIE_MARGIN else float(difference > 0)

def _per_image(score, name: str, description: str):
    """A reward (``f(images, prompts) -> scores``) scoring each image with ``score(image, caption)``."""
    def reward(images, prompts):
        return [score(image, prompt) for image, prompt in zip(images, prompts)]
    reward.name, reward.description = name, description
    return reward

@register_reward("benchmark-preference")
def _preference_reward():
    return _per_image(preference_score, "preference", "world fidelity + 0.15 x clean background (0-1.15)")

@register_reward("benchmark-fidelity")
def _fidelity_reward():
    return _per_image(fidelity, "fidelity", "share of caption attributes the world's checker reads back (0-1)")
