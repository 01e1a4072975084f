"""open_clip ViT state dicts (HPSv2's checkpoints) as transformers ``CLIPModel`` state dicts.

HPSv2 is an open_clip ViT-H-14 fine-tune, but ``open_clip`` needs torchvision, which has no build for
our CPU torch. The architectures are the same (pre-norm transformer blocks, class-token pooling in the
image tower, end-of-text pooling and a causal mask in the text tower, exact GELU), so the weights only
change names and layout:

* attention: open_clip packs query, key and value in ``attn.in_proj_weight``/``in_proj_bias``
  (``torch.nn.MultiheadAttention``'s layout, rows in q, k, v order); transformers has ``q_proj``,
  ``k_proj``, ``v_proj``;
* projections: open_clip multiplies ``x @ proj`` (``[width, embed]``); transformers' ``Linear`` stores the
  transpose;
* the rest is renaming (``ln_1`` → ``layer_norm1``, ``mlp.c_fc`` → ``mlp.fc1``, ``visual.conv1`` →
  ``patch_embedding``, ...).
"""

from __future__ import annotations

import re

import torch

__all__ = ["open_clip_to_transformers"]

_TOP_LEVEL = {
    "logit_scale": "logit_scale",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_PACKED_ATTENTION = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}
# open_clip versions before 2.0 saved the text tower's causal mask as a buffer; transformers builds its own
_DERIVED = {"attn_mask"}


def open_clip_to_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and re-layout an open_clip ViT CLIP state dict for ``transformers.CLIPModel``.

    A ``module.`` prefix (a checkpoint saved from DDP) is removed. Keys that are not part of an open_clip
    ViT CLIP model are refused with their names, so a wrong file fails here rather than scoring garbage.
    """
    converted, unknown = {}, []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key in _DERIVED:
            continue
        if key in _TOP_LEVEL:
            converted[_TOP_LEVEL[key]] = value
        elif key in _TRANSPOSED:
            converted[_TRANSPOSED[key]] = value.t().contiguous()
        elif match := _BLOCK_KEY.match(key):
            visual, layer, rest = match.groups()
            prefix = f"{'vision_model' if visual else 'text_model'}.encoder.layers.{layer}"
            name, _, kind = rest.rpartition(".")
            if rest in _PACKED_ATTENTION:
                for projection, part in zip("qkv", value.chunk(3, dim=0)):
                    converted[f"{prefix}.self_attn.{projection}_proj.{_PACKED_ATTENTION[rest]}"] = part.contiguous()
            elif name in _BLOCK and kind in ("weight", "bias"):
                converted[f"{prefix}.{_BLOCK[name]}.{kind}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"Not an open_clip ViT CLIP state dict: {len(unknown)} keys have no transformers counterpart, e.g. "
            f"{unknown[:5]}. HPSv2 checkpoints hold a 'state_dict' with keys such as 'visual.conv1.weight' and "
            "'transformer.resblocks.0.attn.in_proj_weight'."
        )
    return converted
