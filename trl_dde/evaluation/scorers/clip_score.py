"""CLIP score: how well an image matches its prompt, by the cosine of their CLIP embeddings.

Papers use different backbones and scales, so every report names both:

* ``scale="cosine"`` (default): the raw cosine in [-1, 1]. The DDE paper reports this (0.320 for SD1.5
  in its Fig. 3; Table 2 prints it in units of 0.1, e.g. 3.200); its backbone is not stated.
* ``scale="x100"``: ``100 · max(cosine, 0)``, the convention of torchmetrics' ``CLIPScore`` (whose default
  backbone is ``openai/clip-vit-large-patch14``, also ours). Hessel et al.'s original CLIPScore uses
  ``2.5 · max(cosine, 0)`` with ViT-B/32; convert with ``x100 / 40``.
"""

from __future__ import annotations

import torch

from ..rewards import register_reward
from .clip_backbone import ClipEmbedder, clip_preprocess, load_clip_model, load_clip_tokenizer, resolve_dtype

__all__ = ["ClipScore"]

SCALES = ("cosine", "x100")


@register_reward("clip")
class ClipScore:
    """Image–prompt CLIP similarity as a reward ``f(images, prompts) -> Tensor[N]``.

    Args:
        model: hub id or folder of a transformers ``CLIPModel`` with its preprocessing and tokenizer files
            (default ``openai/clip-vit-large-patch14``).
        scale: ``"cosine"`` (raw) or ``"x100"`` (``100 · max(cosine, 0)``).
        device / batch_size / dtype: where and how the model runs.
    """

    name = "clip"

    def __init__(self, model: str = "openai/clip-vit-large-patch14", scale: str = "cosine", device: str | None = None,
                 batch_size: int = 16, dtype: str | torch.dtype = torch.float32):
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}.")
        self.scale = scale
        clip = load_clip_model(model, resolve_dtype(dtype), what="the CLIP score backbone")
        self.clip = ClipEmbedder(clip, load_clip_tokenizer(model), clip_preprocess(model), device, batch_size)
        convention = "raw cosine" if scale == "cosine" else "100 · max(cosine, 0)"
        self.description = f"CLIP score, backbone {model}, {convention}"

    def __call__(self, images, prompts) -> torch.Tensor:
        cosine = self.clip.cosine(images, prompts)
        return cosine if self.scale == "cosine" else 100.0 * cosine.clamp_min(0.0)
