"""Image decoding and the paired transform (PIL, numpy and torch only: no torchvision).

Images may be encoded bytes, ``{"bytes", "path"}`` dicts (``datasets.Image`` storage), paths, PIL images
or ``HWC`` uint8 arrays. A pair's two images are resized, cropped and flipped *identically*; the crop and
flip come from a per-row seed (``augmentation_seed``), so a resumed run re-draws exactly the
augmentations of an uninterrupted one.
"""

from __future__ import annotations

import io
import random

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

__all__ = ["augmentation_seed", "draw_augmentation", "image_error", "load_image", "paired_transform"]

# what decoding an arbitrary cell can raise: a bad or truncated file, a value that is no image, a decompression bomb
DECODE_ERRORS = (OSError, UnidentifiedImageError, TypeError, KeyError, ValueError, SyntaxError, AttributeError,
                 PILImage.DecompressionBombError)


def _open(value) -> PILImage.Image:
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, dict):
        return PILImage.open(io.BytesIO(value["bytes"])) if value.get("bytes") else PILImage.open(value["path"])
    if isinstance(value, (bytes, bytearray)):
        return PILImage.open(io.BytesIO(value))
    if isinstance(value, str):
        return PILImage.open(value)
    if isinstance(value, np.ndarray):
        return PILImage.fromarray(value)
    raise TypeError(f"unsupported image value of type {type(value).__name__}")


def load_image(value) -> PILImage.Image:
    """Decode one image cell to an RGB PIL image. Raises ``ValueError`` for anything undecodable."""
    try:
        image = _open(value)
        image.load()
        return image.convert("RGB")
    except DECODE_ERRORS as error:
        raise ValueError(f"Undecodable image: {type(error).__name__}: {error}") from error


def image_error(value) -> str | None:
    """Why ``value`` cannot be decoded, or ``None`` if it can. Decodes fully (truncated files are caught) but,
    for JPEGs, at 1/8 scale through PIL's draft mode: the whole stream is read for a fraction of the cost."""
    try:
        image = _open(value)
        if getattr(image, "format", None) == "JPEG":
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        image.convert("RGB")
        return None
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of row ``index`` in ``epoch``: a hash, independent of draw order and workers."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def draw_augmentation(rng: random.Random | None, random_crop: bool, random_flip: bool) -> tuple[tuple[float, float], bool]:
    """One pair's crop position (fractions of the free margin, top then left) and flip. Without ``rng``
    (evaluation) the crop is centred and nothing is flipped."""
    crop = (rng.random(), rng.random()) if (random_crop and rng) else (0.5, 0.5)
    flip = bool(random_flip and rng and rng.random() < 0.5)
    return crop, flip


def paired_transform(
    images: tuple[PILImage.Image, PILImage.Image],
    resolution: int,
    crop: tuple[float, float] = (0.5, 0.5),
    flip: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (shorter side → ``resolution``), crop and flip the two images of a pair *identically*.

    Returns pixels ``[2, 3, R, R]`` in ``[-1, 1]`` and crop information ``[2, 6]``
    (``original_h, original_w, crop_top, crop_left, R, R`` of each image; the crop's top-left in resized
    pixels, mirrored when the pair is flipped), from which a family derives per-image conditioning
    (SDXL's ``time_ids``). ``crop`` places the crop as fractions of the free margin.
    """
    tensors, crop_info = [], []
    for image in images:
        original_height, original_width = image.height, image.width
        scale = resolution / min(image.size)
        width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
        image = image.resize((width, height), PILImage.Resampling.BILINEAR)
        left = round(crop[1] * (width - resolution))
        top = round(crop[0] * (height - resolution))
        image = image.crop((left, top, left + resolution, top + resolution))
        if flip:
            image = image.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
            left = width - left - resolution  # where the crop sits in the mirrored image
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        tensors.append(torch.from_numpy(array).permute(2, 0, 1))
        crop_info.append([original_height, original_width, top, left, resolution, resolution])
    return torch.stack(tensors), torch.tensor(crop_info, dtype=torch.float32)
