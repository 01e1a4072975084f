"""PickScore (Kirstain et al., NeurIPS 2023): a CLIP-H fine-tuned on Pick-a-Pic preferences.

Score = ``logit_scale.exp() · cos(image embedding, prompt embedding)``, the model's own temperature
(≈ 100) times the cosine: about 20–22 for Stable Diffusion images (the DDE paper's Table 2 reports
20.49 for SD1.5, printed as 2.049 in units of 10). Weights: ``yuvalkirstain/PickScore_v1``; image
preprocessing and tokenizer: those of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, as the authors use.
"""

from __future__ import annotations

import torch

from ..rewards import register_reward
from .clip_backbone import ClipEmbedder, clip_preprocess, load_clip_model, load_clip_tokenizer, resolve_dtype

__all__ = ["PickScore"]


@register_reward("pickscore")
class PickScore:
    """PickScore v1 as a reward ``f(images, prompts) -> Tensor[N]``.

    Args:
        model: hub id or folder of the PickScore ``CLIPModel`` (default ``yuvalkirstain/PickScore_v1``).
        processor: hub id or folder with the preprocessing and tokenizer files
            (default ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``).
        device / batch_size / dtype: where and how the model runs.
    """

    name = "pickscore"

    def __init__(self, model: str = "yuvalkirstain/PickScore_v1", processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                 device: str | None = None, batch_size: int = 16, dtype: str | torch.dtype = torch.float32):
        clip = load_clip_model(model, resolve_dtype(dtype), what="the PickScore model")
        self.clip = ClipEmbedder(clip, load_clip_tokenizer(processor), clip_preprocess(processor), device, batch_size)
        self.description = (f"PickScore v1 ({model}, processor {processor}): logit_scale.exp() · cosine "
                            f"(logit_scale.exp() = {self.clip.logit_scale:.2f})")

    def __call__(self, images, prompts) -> torch.Tensor:
        return self.clip.logit_scale * self.clip.cosine(images, prompts)
