"""Built-in scorers, registered as rewards by name: ``pickscore``, ``hpsv2``, ``clip``, ``aesthetic``,
``imagereward``. All but ImageReward run on one transformers CLIP stack (``clip_backbone``)."""

from .aesthetic import LaionAesthetic
from .clip_score import ClipScore
from .hpsv2 import HPSv2
from .imagereward import ImageRewardScorer
from .pickscore import PickScore

__all__ = ["ClipScore", "HPSv2", "ImageRewardScorer", "LaionAesthetic", "PickScore"]
