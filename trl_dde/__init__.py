"""trl-dde: Direct Preference Optimization for text-to-image diffusion models with pluggable credit assignment."""

from .config import DDEConfig
from .credit import CreditAssigner, DenoisingOutputs, available_credits, get_credit, register_credit
from .trainer import DDEDiffusionTrainer

__version__ = "0.1.0"

__all__ = [
    "CreditAssigner",
    "DDEConfig",
    "DDEDiffusionTrainer",
    "DenoisingOutputs",
    "available_credits",
    "get_credit",
    "register_credit",
]
