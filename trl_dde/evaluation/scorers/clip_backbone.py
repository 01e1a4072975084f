"""One CLIP stack for every scorer: a transformers ``CLIPModel``, its tokenizer and image preprocessing.

PickScore, HPSv2, the CLIP score and the LAION aesthetic predictor all embed images (and prompts) with
a CLIP model; they differ only in the weights, the image preprocessing and what they compute from the
embeddings. ``ClipEmbedder`` gives L2-normalised embeddings in batches, without gradients; the loaders
read hub ids or local folders in the layout the real models use (``config.json``, weights,
``preprocessor_config.json``, tokenizer files). Image preprocessing runs on PIL/numpy/torch only
(``CLIPImageProcessorPil``): no torchvision.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..loading import default_device, quiet_libraries

__all__ = [
    "ClipEmbedder",
    "build_clip_model",
    "clip_preprocess",
    "letterbox_preprocess",
    "load_clip_model",
    "load_clip_tokenizer",
    "resolve_dtype",
]

Preprocess = Callable[[Sequence[Image.Image]], torch.Tensor]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``torch.float32`` from ``"float32"`` or ``torch.float32``."""
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype such as 'float32' or 'float16', got {dtype!r}.")
    return resolved


def _loading_error(what: str, location: str, error: Exception) -> OSError:
    hint = ("Download it once where the Hub is reachable (`hf download {0}`) and pass the local folder."
            if not os.path.isdir(location) else "Check that the folder holds a transformers CLIP model (config.json and weights).")
    return OSError(f"Could not load {what} from {location!r}: {type(error).__name__}: {error}. " + hint.format(location))


def load_clip_model(location: str, dtype: torch.dtype = torch.float32, what: str = "the CLIP model"):
    """A ``transformers.CLIPModel`` from a hub id or a folder, in eval mode, without gradients."""
    from transformers import CLIPModel

    try:
        with quiet_libraries():
            model = CLIPModel.from_pretrained(location, dtype=dtype)
    except Exception as error:  # offline, missing files, not a CLIP checkpoint
        raise _loading_error(what, location, error) from error
    return model.eval().requires_grad_(False)


def build_clip_model(config, state_dict: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32, what: str = "checkpoint"):
    """A ``CLIPModel`` of architecture ``config`` holding exactly ``state_dict`` (every weight, right shapes)."""
    from transformers import CLIPModel

    with torch.device("meta"):
        expected = {key: value.shape for key, value in CLIPModel(config).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        details = "; ".join(f"{label}: {keys[:4]}{' ...' if len(keys) > 4 else ''}" for label, keys in
                            (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise ValueError(f"The {what} does not match the CLIP architecture it is loaded into ({details}). Is the "
                         "architecture folder the one the checkpoint was trained from?")
    with quiet_libraries():
        model = CLIPModel.from_pretrained(None, config=config, state_dict=state_dict, dtype=dtype)
    return model.eval().requires_grad_(False)


def load_clip_tokenizer(location: str, what: str = "the CLIP tokenizer"):
    from transformers import AutoTokenizer

    try:
        with quiet_libraries():
            return AutoTokenizer.from_pretrained(location)
    except Exception as error:
        raise _loading_error(what, location, error) from error


def _image_processor(location: str):
    from transformers import CLIPImageProcessorPil

    try:
        with quiet_libraries():
            return CLIPImageProcessorPil.from_pretrained(location)
    except Exception as error:
        raise _loading_error("the CLIP image preprocessing (preprocessor_config.json)", location, error) from error


def clip_preprocess(location: str) -> Preprocess:
    """CLIP's own preprocessing from ``preprocessor_config.json``: shortest side resized (bicubic),
    centre crop, rescale to [0, 1], normalise with the model's mean and std."""
    processor = _image_processor(location)
    return lambda images: processor(images=list(images), return_tensors="pt")["pixel_values"]


def letterbox_preprocess(location: str, size: int) -> Preprocess:
    """HPSv2's preprocessing: the longest side resized to ``size`` (bicubic, antialiased), the image
    centred on a black ``size × size`` square, then normalised with the mean and std of ``location``."""
    processor = _image_processor(location)
    mean = np.asarray(processor.image_mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(processor.image_std, dtype=np.float32).reshape(3, 1, 1)

    def preprocess(images: Sequence[Image.Image]) -> torch.Tensor:
        batch = []
        for image in images:
            image = image.convert("RGB")
            scale = size / max(image.size)
            width, height = (round(side * scale) for side in image.size)
            if (width, height) != image.size:
                image = image.resize((width, height), Image.Resampling.BICUBIC)
            canvas = np.zeros((3, size, size), dtype=np.float32)
            top, left = (size - height) // 2, (size - width) // 2
            canvas[:, top:top + height, left:left + width] = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
            batch.append((canvas - mean) / std)
        return torch.from_numpy(np.stack(batch))

    return preprocess


class ClipEmbedder:
    """L2-normalised CLIP image and text embeddings in batches (no gradients, outputs float32 on CPU).

    Args:
        model: a ``transformers.CLIPModel``.
        tokenizer: its tokenizer (prompts are padded to the model's context length, 77, and truncated).
        preprocess: images → pixel tensor ``[N, 3, H, W]``.
        device: where the model runs (default: CUDA if available).
        batch_size: images (and distinct prompts) per forward pass.
    """

    def __init__(self, model, tokenizer, preprocess: Preprocess, device: str | torch.device | None = None, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.device = torch.device(device or default_device())
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.context_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.preprocess(images[start:start + self.batch_size]).to(self.device, self.model.dtype)
            features = self.model.get_image_features(pixel_values=pixels).pooler_output
            chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(chunks)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """One embedding per prompt; repeated prompts are encoded once."""
        distinct = list(dict.fromkeys(prompts))
        chunks = []
        for start in range(0, len(distinct), self.batch_size):
            tokens = self.tokenizer(distinct[start:start + self.batch_size], padding="max_length", truncation=True,
                                    max_length=self.context_length, return_tensors="pt").to(self.device)
            features = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
            chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        embeddings = torch.cat(chunks)
        index = {prompt: i for i, prompt in enumerate(distinct)}
        return embeddings[[index[prompt] for prompt in prompts]]

    def cosine(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its prompt, ``Tensor[N]``."""
        return (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(dim=-1)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.float().exp())
