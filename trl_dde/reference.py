"""The reference model the implicit reward margin is measured against.

* LoRA: the policy itself with its adapters disabled (no second copy in memory). The adapter layers are
  found once at set-up (``AdapterSwitch``) and switched off around each reference forward: walking the
  whole denoiser's modules each step, as ``model.disable_adapters()`` does, cost 3–14× more per switch
  (docs/benchmarks.md).
* Full fine-tuning: a frozen copy of the denoiser taken before training, or the user's ``ref_model``,
  kept in the policy's parameter dtype, called under the same autocast and switched to the policy's
  train/eval mode before each call, so that with an unchanged policy every margin is exactly 0 (the mode
  changes no value in a denoiser without active dropout, but it changes kernel paths and so the rounding). Under several processes it is prepared by accelerate the way TRL
  prepares its reference models: a DeepSpeed inference engine (sharded with ZeRO-3), an FSDP-wrapped
  module, or, otherwise, ``accelerator.prepare_model(..., evaluation_mode=True)`` (placed on the device,
  not wrapped in DDP).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from .families import ModelFamily, cast_module, unwrap_model

__all__ = ["AdapterSwitch", "build_reference", "prepare_reference"]


class AdapterSwitch:
    """The LoRA reference: the policy's adapter layers, found once, switched off for the reference forward."""

    def __init__(self, model: torch.nn.Module):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.layers = [module for module in unwrap_model(model).modules() if isinstance(module, BaseTunerLayer)]
        if not self.layers:
            raise ValueError("AdapterSwitch needs a denoiser with LoRA adapters; this one has none.")

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model (the LoRA reference) inside: adapters off, back on at exit (also on errors)."""
        for layer in self.layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in self.layers:
                layer.enable_adapters(True)


def build_reference(family: ModelFamily, ref_model: torch.nn.Module | str | os.PathLike | None,
                    peft_config) -> torch.nn.Module | None:
    """``None`` for LoRA; otherwise the frozen reference denoiser in the trained denoiser's dtype."""
    if peft_config is not None:
        return None
    policy = family.denoiser
    if ref_model is None:
        reference = family.frozen_copy(policy)
    else:
        reference = ref_model if isinstance(ref_model, torch.nn.Module) else family.load_denoiser(ref_model)
    dtype = next(policy.parameters()).dtype
    return cast_module(reference, dtype).requires_grad_(False).eval()


def prepare_reference(reference: torch.nn.Module, accelerator) -> torch.nn.Module:
    """Place (and shard, under DeepSpeed ZeRO-3 or FSDP) the frozen reference like TRL's trainers do."""
    if accelerator.state.deepspeed_plugin is not None:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(reference, accelerator)
    if getattr(accelerator.state, "fsdp_plugin", None) is not None:
        from trl.models.utils import prepare_fsdp

        return prepare_fsdp(reference, accelerator)
    return accelerator.prepare_model(reference, evaluation_mode=True)
