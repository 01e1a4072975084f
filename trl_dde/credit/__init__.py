"""Per-timestep credit assignment strategies. Importing this package registers the built-in ones."""

from .base import CreditAssigner, DenoisingOutputs
from .dde import DDECredit, DDESingleCredit, DDEStepCredit, StepwiseCorrectedCredit
from .discounted import DiscountedCredit
from .registry import (
    available_credits,
    check_credit_options,
    credit_options,
    get_credit,
    register_credit,
    resolve_credit_class,
)
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
    "check_credit_options",
    "credit_options",
    "get_credit",
    "register_credit",
    "resolve_credit_class",
]
