"""Per-timestep credit assignment strategies. Importing this package registers the built-in ones."""

from .base import CreditAssigner, DenoisingOutputs, available_credits, get_credit, register_credit
from .dde import DDECredit, DDESingleCredit, DDEStepCredit, StepwiseCorrectedCredit
from .discounted import DiscountedCredit
from .uniform import UniformCredit

__all__ = [
    "CreditAssigner",
    "DDECredit",
    "DDESingleCredit",
    "DDEStepCredit",
    "DenoisingOutputs",
    "DiscountedCredit",
    "StepwiseCorrectedCredit",
    "UniformCredit",
    "available_credits",
    "get_credit",
    "register_credit",
]
