"""LAION aesthetic score: the improved-aesthetic-predictor MLP on CLIP ViT-L/14 image embeddings.

The predictor (Schuhmann, ``improved-aesthetic-predictor``, weights ``sac+logos+ava1-l14-linearMSE.pth``)
is a 5-layer MLP trained to regress mean human ratings on a 1–10 scale from the L2-normalised image
embedding of OpenAI's CLIP ViT-L/14; Stable Diffusion images usually score 5–7. The prompt is ignored.
Default weights: the copy TRL's DDPO example loads, ``trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth``;
any local ``.pth`` with the same layout works. Not to be confused with ``aesthetic-predictor-v2-5``
(a SigLIP-based successor on another scale).
"""

from __future__ import annotations

import torch
from torch import nn

from ..loading import resolve_file
from ..rewards import register_reward
from .clip_backbone import ClipEmbedder, clip_preprocess, load_clip_model, load_clip_tokenizer, resolve_dtype

__all__ = ["AestheticMLP", "LaionAesthetic"]

PREDICTOR_FILE = "aesthetic-model.pth"


class AestheticMLP(nn.Module):
    """The predictor's layers (no activations between them, as trained); dropout is inactive in eval mode."""

    def __init__(self, embedding_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embedding_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


@register_reward("aesthetic")
class LaionAesthetic:
    """LAION aesthetic predictor as a reward ``f(images, prompts) -> Tensor[N]`` (prompts unused).

    Args:
        predictor: Hub repository holding ``aesthetic-model.pth`` (default ``trl-lib/ddpo-aesthetic-predictor``),
            a folder holding it, or a ``.pth`` file (e.g. ``sac+logos+ava1-l14-linearMSE.pth``).
        clip_model: hub id or folder of the CLIP ViT-L/14 whose embeddings the MLP reads
            (default ``openai/clip-vit-large-patch14``).
        device / batch_size / dtype: where and how the models run.
    """

    name = "aesthetic"

    def __init__(self, predictor: str = "trl-lib/ddpo-aesthetic-predictor", clip_model: str = "openai/clip-vit-large-patch14",
                 device: str | None = None, batch_size: int = 16, dtype: str | torch.dtype = torch.float32):
        path = resolve_file(predictor, PREDICTOR_FILE, what="the LAION aesthetic predictor")
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if "layers.0.weight" not in state_dict:
            raise ValueError(f"{path} is not an improved-aesthetic-predictor state dict (no 'layers.0.weight'; keys: "
                             f"{list(state_dict)[:5]}).")
        clip = load_clip_model(clip_model, resolve_dtype(dtype), what="the aesthetic predictor's CLIP model")
        size = state_dict["layers.0.weight"].shape[1]
        if size != clip.config.projection_dim:
            raise ValueError(f"The aesthetic predictor {path} reads {size}-dimensional embeddings but {clip_model} makes "
                             f"{clip.config.projection_dim}-dimensional ones; it needs CLIP ViT-L/14 (768).")
        self.clip = ClipEmbedder(clip, load_clip_tokenizer(clip_model), clip_preprocess(clip_model), device, batch_size)
        self.mlp = AestheticMLP(size)
        self.mlp.load_state_dict(state_dict)
        self.mlp.eval().requires_grad_(False)
        self.description = f"LAION aesthetic predictor ({path}) on L2-normalised {clip_model} image embeddings, 1-10 scale"

    @torch.no_grad()
    def __call__(self, images, prompts) -> torch.Tensor:
        return self.mlp(self.clip.image_embeddings(images)).squeeze(-1)
