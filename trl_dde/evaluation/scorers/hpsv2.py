"""Human Preference Score v2 (Wu et al., 2023): an open_clip ViT-H-14 fine-tuned on HPD v2 preferences.

Score = ``cos(image embedding, prompt embedding)``, the raw cosine (no temperature): about 0.26–0.29
for Stable Diffusion images (the DDE paper's Table 2 reports 0.2622 for SD1.5, printed as 2.622 in units
of 0.1, without saying which HPS version). Two checkpoints exist and papers mix their numbers up:
``HPS_v2_compressed.pt`` (v2.0) and ``HPS_v2.1_compressed.pt`` (v2.1, the default here), both in the Hub
repository ``xswu/HPSv2``; every report names the version.

The checkpoint is an open_clip state dict; it is renamed onto a transformers ``CLIPModel`` with the
architecture of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (see ``open_clip_conversion``), so no
``open_clip``/torchvision is needed. Images are preprocessed as HPSv2 does: longest side to 224
(bicubic), centred on a black square, CLIP mean/std normalisation.
"""

from __future__ import annotations

import os

import torch

from ..loading import quiet_libraries, resolve_file
from ..rewards import register_reward
from .clip_backbone import ClipEmbedder, build_clip_model, letterbox_preprocess, load_clip_tokenizer, resolve_dtype
from .open_clip_conversion import open_clip_to_transformers

__all__ = ["HPS_CHECKPOINTS", "HPSv2"]

HPS_CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


def _architecture_config(location: str):
    from transformers import CLIPConfig

    try:
        with quiet_libraries():
            return CLIPConfig.from_pretrained(location)
    except Exception as error:
        raise OSError(f"Could not read the CLIP architecture (config.json) from {location!r}: {type(error).__name__}: "
                      f"{error}. HPSv2 needs the config of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (or a local copy) to "
                      "build the model its checkpoint is loaded into.") from error


@register_reward("hpsv2")
class HPSv2:
    """HPSv2 as a reward ``f(images, prompts) -> Tensor[N]``.

    Args:
        version: ``"v2.1"`` (default) or ``"v2.0"``.
        checkpoint: Hub repository (default ``xswu/HPSv2``), a folder holding the version's file, or the
            ``.pt`` file itself.
        architecture: hub id or folder with the open_clip ViT-H-14's transformers ``config.json``,
            ``preprocessor_config.json`` and tokenizer files (default ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``;
            only those small files are read, never its weights).
        device / batch_size / dtype: where and how the model runs.
    """

    def __init__(self, version: str = "v2.1", checkpoint: str = "xswu/HPSv2",
                 architecture: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", device: str | None = None,
                 batch_size: int = 16, dtype: str | torch.dtype = torch.float32):
        if version not in HPS_CHECKPOINTS:
            raise ValueError(f"version must be one of {list(HPS_CHECKPOINTS)}, got {version!r}.")
        other = {name: file for name, file in HPS_CHECKPOINTS.items() if name != version}
        for other_version, file in other.items():
            if os.path.basename(os.fspath(checkpoint)) == file:
                raise ValueError(f"checkpoint {checkpoint} is the HPS {other_version} file but version={version!r}; pass "
                                 f"version={other_version!r} or the {HPS_CHECKPOINTS[version]} file.")
        config = _architecture_config(architecture)  # cheap checks before reading gigabytes
        path = resolve_file(checkpoint, HPS_CHECKPOINTS[version], what=f"the HPS {version} checkpoint")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = saved.get("state_dict", saved) if isinstance(saved, dict) else saved
        model = build_clip_model(config, open_clip_to_transformers(state_dict), resolve_dtype(dtype),
                                 what=f"HPS {version} checkpoint {path}")
        size = config.vision_config.image_size
        self.clip = ClipEmbedder(model, load_clip_tokenizer(architecture), letterbox_preprocess(architecture, size),
                                 device, batch_size)
        self.version = version
        self.name = f"hps{version}"
        self.description = f"HPS {version} ({HPS_CHECKPOINTS[version]} on {architecture}'s architecture): raw cosine"

    def __call__(self, images, prompts) -> torch.Tensor:
        return self.clip.cosine(images, prompts)
