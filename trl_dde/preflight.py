"""Checks that fail in seconds, before any weight is loaded, for configurations that would fail later.

They read only configuration files (``model_index.json``, the denoiser's and the VAE's ``config.json``) or,
for a pipeline instance, the live modules: a LoRA target that matches no module of the denoiser, a
resolution the VAE cannot encode to whole latents, and an 8-bit optimizer the device cannot run.
"""

from __future__ import annotations

import difflib
import os

import torch

__all__ = ["check_8bit_optimizer", "check_lora_targets", "check_resolution"]


def _module_names(family_class, model, revision: str | None) -> list[str]:
    """The module names of the denoiser of ``model`` (a pipeline instance, or its config built on the meta device)."""
    from diffusers import DiffusionPipeline

    if isinstance(model, DiffusionPipeline):
        return [name for name, _ in getattr(model, family_class.denoiser_name).named_modules()]
    import importlib

    library, class_name = DiffusionPipeline.load_config(model, revision=revision)[family_class.denoiser_name]
    model_class = getattr(importlib.import_module(library), class_name)
    config = model_class.load_config(model, subfolder=family_class.denoiser_name, revision=revision)
    with torch.device("meta"):
        return [name for name, _ in model_class.from_config(config).named_modules()]


def check_lora_targets(peft_config, family_class, model, revision: str | None = None) -> None:
    """Every entry of a list of ``target_modules`` names a module of the denoiser (PEFT would fail, or silently
    adapt fewer layers than asked, only after the weights load); a regex must match at least one module."""
    if peft_config is None or getattr(peft_config, "target_modules", None) is None:
        return
    from peft.tuners.tuners_utils import check_target_module_exists

    names = _module_names(family_class, model, revision)
    targets = peft_config.target_modules
    leaf_names = sorted({name.split(".")[-1] for name in names if name} | {".".join(name.split(".")[-2:]) for name in names if "." in name})
    if isinstance(targets, str):
        if not any(check_target_module_exists(peft_config, name) for name in names if name):
            raise ValueError(f"LoRA target_modules={targets!r} matches no module of the {family_class.denoiser_name}. "
                             f"Its attention projections are named e.g. {', '.join(n for n in leaf_names if 'to_' in n)[:200]}.")
        return
    unmatched = sorted(target for target in targets if not any(name == target or name.endswith("." + target) for name in names))
    if unmatched:
        hints = {target: difflib.get_close_matches(target, leaf_names, n=3) for target in unmatched}
        described = "; ".join(f"{target!r} (close: {', '.join(close) or 'none'})" for target, close in hints.items())
        raise ValueError(
            f"LoRA target_modules {unmatched} name no module of the {family_class.denoiser_name} ({described}). "
            "Use module names of the denoiser, e.g. ['to_k', 'to_q', 'to_v', 'to_out.0'] for attention layers."
        )


def check_resolution(resolution: int | None, family_class, model, revision: str | None = None) -> None:
    """``resolution`` is a positive multiple of the family's ``resolution_multiple`` (the images must encode to whole
    latents, and those cut into whole patches where the denoiser patches them)."""
    if resolution is None:
        return
    from diffusers import AutoencoderKL, DiffusionPipeline

    if isinstance(model, DiffusionPipeline):
        config, denoiser_config = model.vae.config, getattr(model, family_class.denoiser_name).config
    else:
        config = AutoencoderKL.load_config(model, subfolder="vae", revision=revision)
        denoiser_config = AutoencoderKL.load_config(model, subfolder=family_class.denoiser_name, revision=revision)
    factor = family_class.resolution_multiple(config, denoiser_config)
    if resolution <= 0 or resolution % factor:
        lower, upper = max(factor, resolution // factor * factor), (resolution // factor + 1) * factor
        raise ValueError(f"resolution={resolution} is not a multiple of {factor} (the {family_class.__name__}'s VAE "
                         f"downsampling times its denoiser's patch size). Use {lower} or {upper}.")


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
