"""Checks of the optimizer configuration that must fail before any weight is loaded."""

from __future__ import annotations

import torch

__all__ = ["check_8bit_optimizer"]


def check_8bit_optimizer(args) -> None:
    """Fail with a fix when an 8-bit bitsandbytes optimizer cannot run on the training device: one real 8-bit
    AdamW step on a 4096-element tensor (the smallest size bitsandbytes quantizes) on ``args.device``."""
    if "8bit" not in args.optim:
        return
    try:
        import bitsandbytes as bnb  # lazily: only 8-bit optimizers need it
    except ImportError as error:
        raise ImportError(f"optim={args.optim!r} needs bitsandbytes: pip install 'trl-dde[bnb]'.") from error
    try:
        probe = torch.zeros(4096, device=args.device, requires_grad=True)
        probe.grad = torch.ones_like(probe)
        bnb.optim.AdamW8bit([probe]).step()
    except Exception as error:  # bitsandbytes raises many types for unsupported devices
        raise RuntimeError(
            f"optim={args.optim!r}: bitsandbytes {bnb.__version__} cannot run an 8-bit optimizer on "
            f"device {args.device} ({type(error).__name__}: {error}). Use optim='adamw_torch' (or 'adamw_torch_fused')."
        ) from error
