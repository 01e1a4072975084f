"""Tiny random scorer weights in the real models' folder layouts, for offline runs and tests.

``save_tiny_scorers(folder)`` writes, with random weights and a byte-level tokenizer:

* ``clip-vit-h/``: a CLIP-H-shaped stand-in for ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (``config.json``,
  ``model.safetensors``, ``preprocessor_config.json``, tokenizer files);
* ``pickscore/``: a ``CLIPModel`` of the same architecture, like ``yuvalkirstain/PickScore_v1``;
* ``hpsv2/``: ``HPS_v2_compressed.pt`` and ``HPS_v2.1_compressed.pt``, open_clip-layout state dicts
  (``{"state_dict": ...}``) of that architecture, like the files in ``xswu/HPSv2``;
* ``clip-vit-l/``: a stand-in for ``openai/clip-vit-large-patch14``;
* ``aesthetic/aesthetic-model.pth``: the LAION predictor's MLP for ``clip-vit-l``'s embeddings.

and returns the keyword arguments that point each registered scorer at them (also written to
``scorer_kwargs.json``, which ``trl-dde eval --scorer_kwargs`` reads). The scores mean nothing;
every loading and scoring path they exercise is the real one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .loading import quiet_libraries
from .scorers.aesthetic import PREDICTOR_FILE, AestheticMLP
from .scorers.hpsv2 import HPS_CHECKPOINTS

__all__ = ["save_tiny_clip", "save_tiny_scorers", "tiny_clip_config"]


def tiny_clip_config(tokenizer, projection_dim: int = 16, image_size: int = 32):
    """A 2-layer, 32-wide CLIP configuration (exact GELU, like the LAION/OpenAI ViT-H and ViT-L)."""
    from transformers import CLIPConfig

    text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, hidden_act="gelu",
                vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, hidden_act="gelu",
                  image_size=image_size, patch_size=8)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def save_tiny_clip(folder: str | os.PathLike, seed: int = 0, projection_dim: int = 16):
    """A random tiny ``CLIPModel`` with its tokenizer and image processor saved in ``folder``; returns the model."""
    from transformers import CLIPImageProcessorPil, CLIPModel

    from ..tiny import tiny_tokenizer

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder)
    config = tiny_clip_config(tokenizer, projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with quiet_libraries():
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = config.vision_config.image_size
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return model


def _random_open_clip_state_dict(config, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights named and shaped as open_clip's ViT CLIP (packed attention, ``x @ proj`` projections)."""

    def normal(*shape):
        return torch.randn(*shape, generator=generator) * 0.05

    def blocks(prefix: str, width: int, hidden: int, layers: int) -> dict[str, torch.Tensor]:
        weights = {}
        for i in range(layers):
            block = f"{prefix}transformer.resblocks.{i}."
            weights.update({
                block + "ln_1.weight": 1 + normal(width), block + "ln_1.bias": normal(width),
                block + "attn.in_proj_weight": normal(3 * width, width), block + "attn.in_proj_bias": normal(3 * width),
                block + "attn.out_proj.weight": normal(width, width), block + "attn.out_proj.bias": normal(width),
                block + "ln_2.weight": 1 + normal(width), block + "ln_2.bias": normal(width),
                block + "mlp.c_fc.weight": normal(hidden, width), block + "mlp.c_fc.bias": normal(hidden),
                block + "mlp.c_proj.weight": normal(width, hidden), block + "mlp.c_proj.bias": normal(width),
            })
        return weights

    text, vision, embed = config.text_config, config.vision_config, config.projection_dim
    patches = (vision.image_size // vision.patch_size) ** 2
    state = {
        "logit_scale": torch.tensor(4.6052),
        "token_embedding.weight": normal(text.vocab_size, text.hidden_size),
        "positional_embedding": normal(text.max_position_embeddings, text.hidden_size),
        "ln_final.weight": 1 + normal(text.hidden_size), "ln_final.bias": normal(text.hidden_size),
        "text_projection": normal(text.hidden_size, embed),
        "visual.class_embedding": normal(vision.hidden_size),
        "visual.positional_embedding": normal(patches + 1, vision.hidden_size),
        "visual.conv1.weight": normal(vision.hidden_size, 3, vision.patch_size, vision.patch_size),
        "visual.ln_pre.weight": 1 + normal(vision.hidden_size), "visual.ln_pre.bias": normal(vision.hidden_size),
        "visual.ln_post.weight": 1 + normal(vision.hidden_size), "visual.ln_post.bias": normal(vision.hidden_size),
        "visual.proj": normal(vision.hidden_size, embed),
    }
    state.update(blocks("", text.hidden_size, text.intermediate_size, text.num_hidden_layers))
    state.update(blocks("visual.", vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers))
    return state


def save_tiny_scorers(folder: str | os.PathLike, seed: int = 0) -> dict[str, dict[str, str]]:
    """Write every tiny scorer's files under ``folder``; return ``{scorer name: load_reward keyword arguments}``."""
    folder = Path(folder)
    clip_h = save_tiny_clip(folder / "clip-vit-h", seed=seed)
    save_tiny_clip(folder / "pickscore", seed=seed + 1)
    save_tiny_clip(folder / "clip-vit-l", seed=seed + 2)
    generator = torch.Generator().manual_seed(seed)
    (folder / "hpsv2").mkdir(parents=True, exist_ok=True)
    for file in HPS_CHECKPOINTS.values():
        torch.save({"state_dict": _random_open_clip_state_dict(clip_h.config, generator)}, folder / "hpsv2" / file)
    (folder / "aesthetic").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed + 3)
    torch.save(AestheticMLP(clip_h.config.projection_dim).state_dict(), folder / "aesthetic" / PREDICTOR_FILE)
    kwargs = {
        "pickscore": {"model": str(folder / "pickscore"), "processor": str(folder / "clip-vit-h")},
        "hpsv2": {"checkpoint": str(folder / "hpsv2"), "architecture": str(folder / "clip-vit-h")},
        "clip": {"model": str(folder / "clip-vit-l")},
        "aesthetic": {"predictor": str(folder / "aesthetic"), "clip_model": str(folder / "clip-vit-l")},
    }
    (folder / "scorer_kwargs.json").write_text(json.dumps(kwargs, indent=2) + "\n")
    return kwargs
