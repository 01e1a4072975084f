"""Preference datasets: schema detection, tie handling, image decoding, paired transforms and the collator.

Two row schemas are accepted:

* **Pick-a-Pic v2**: ``caption``, ``jpg_0``, ``jpg_1``, ``label_0`` (1: ``jpg_0`` preferred, 0: ``jpg_1``
  preferred, 0.5: tie);
* **paired** (TRL style): ``prompt``, ``chosen``, ``rejected``.

Images may be encoded bytes, ``{"bytes", "path"}`` dicts (``datasets.Image`` storage), paths, PIL images
or ``HWC`` uint8 arrays. Image columns are kept undecoded until the collator so that a corrupt image
is skipped and counted instead of crashing the dataloader. No torchvision: PIL, numpy and torch only.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, Image, IterableDataset
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

__all__ = [
    "AUGMENTATION_SEED",
    "AugmentedPairs",
    "AugmentedStream",
    "augmentation_seed",
    "PreferenceCollator",
    "PreferenceSchema",
    "detect_schema",
    "draw_augmentation",
    "input_ids_keys",
    "load_image",
    "paired_transform",
    "prepare_preference_dataset",
]

TIE = 0.5
AUGMENTATION_SEED = "augmentation_seed"


@dataclass(frozen=True)
class PreferenceSchema:
    """Which columns hold the prompt, the two images and (Pick-a-Pic only) the label."""

    kind: str  # "pickapic" or "paired"
    prompt: str
    image_a: str  # jpg_0 / chosen
    image_b: str  # jpg_1 / rejected
    label: str | None = None  # label_0 for Pick-a-Pic

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.prompt, self.image_a, self.image_b, self.label) if c is not None)

    @property
    def image_columns(self) -> tuple[str, str]:
        return self.image_a, self.image_b


def schemas_from_args(args) -> tuple[PreferenceSchema, PreferenceSchema]:
    """The two accepted schemas with the column names configured in ``DDEConfig``."""
    return (
        PreferenceSchema("pickapic", args.caption_column, args.image_0_column, args.image_1_column, args.label_0_column),
        PreferenceSchema("paired", args.prompt_column, args.chosen_column, args.rejected_column),
    )


def detect_schema(column_names, schemas: tuple[PreferenceSchema, ...]) -> PreferenceSchema:
    """The first schema whose columns are all present; otherwise a ``ValueError`` naming what is missing."""
    present = set(column_names)
    for schema in schemas:
        if set(schema.columns) <= present:
            return schema
    lines = [f"The preference dataset has columns {sorted(present)}, which match no accepted schema:"]
    for schema in schemas:
        missing = [c for c in schema.columns if c not in present]
        lines.append(f"  - {schema.kind}: needs {list(schema.columns)}; missing {missing}")
    lines.append("Rename columns with dataset.rename_column(...) or set the *_column options of DDEConfig.")
    raise ValueError("\n".join(lines))


def prepare_preference_dataset(dataset: Dataset, args) -> tuple[Dataset, PreferenceSchema, int]:
    """Check the schema, drop ties (when ``args.drop_ties``) and keep image columns undecoded.

    Returns the dataset, its schema and the number of ties dropped. Refuses a dataset that is left empty.
    A streaming ``IterableDataset`` is checked against its first row and returned lazily; its ties are
    dropped by the collator.
    """
    streaming = isinstance(dataset, IterableDataset)
    columns = dataset.column_names if dataset.column_names is not None else list(next(iter(dataset)))
    schema = detect_schema(columns, schemas_from_args(args))
    dataset = dataset.select_columns(list(schema.columns))
    for column in schema.image_columns:
        if dataset.features is not None and isinstance(dataset.features[column], Image):
            dataset = dataset.cast_column(column, Image(decode=False))
    ties_dropped = 0
    if streaming:  # no length, no upfront pass: the collator drops and counts ties as they stream by
        return dataset, schema, ties_dropped
    if schema.kind == "pickapic" and args.drop_ties:
        before = len(dataset)
        dataset = dataset.filter(
            lambda labels: [label != TIE for label in labels], input_columns=[schema.label], batched=True,
            desc="Dropping ties",
        )
        ties_dropped = before - len(dataset)
        if len(dataset) == 0:
            raise ValueError(
                f"All {before} pairs are ties ({schema.label} == 0.5): nothing to learn a preference from. "
                "Use a dataset with decided pairs, or set drop_ties=False to train on ties with soft labels."
            )
    if len(dataset) == 0:
        raise ValueError("The preference dataset is empty.")
    return dataset, schema, ties_dropped


def load_image(value) -> PILImage.Image:
    """Decode one image cell to an RGB PIL image. Raises ``ValueError`` for anything undecodable."""
    try:
        if isinstance(value, PILImage.Image):
            image = value
        elif isinstance(value, dict):
            image = PILImage.open(io.BytesIO(value["bytes"])) if value.get("bytes") else PILImage.open(value["path"])
        elif isinstance(value, (bytes, bytearray)):
            image = PILImage.open(io.BytesIO(value))
        elif isinstance(value, str):
            image = PILImage.open(value)
        elif isinstance(value, np.ndarray):
            image = PILImage.fromarray(value)
        else:
            raise TypeError(f"unsupported image value of type {type(value).__name__}")
        image.load()
        return image.convert("RGB")
    except (OSError, UnidentifiedImageError, TypeError, KeyError, ValueError, SyntaxError) as error:
        raise ValueError(f"Undecodable image: {error}") from error


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of row ``index`` in ``epoch``: a hash, independent of draw order and workers."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class AugmentedPairs(torch.utils.data.Dataset):
    """Map-style view of a preference dataset that tags every row with its own augmentation seed.

    The seed is a hash of ``(seed, epoch, row index)``, so a pair's crop and flip depend neither on the
    order rows are drawn in nor on which dataloader worker collates them: a resumed run re-draws exactly
    the augmentations of an uninterrupted one, and each epoch draws new ones (accelerate forwards
    ``set_epoch``). Drawing them from torch's global RNG in the collator would break exact resume,
    because transformers fetches the first batch after a resume before it restores the RNG state.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], AUGMENTATION_SEED: augmentation_seed(self.seed, self.epoch, index)}


class AugmentedStream(torch.utils.data.IterableDataset):
    """The streaming counterpart of ``AugmentedPairs`` for a ``datasets.IterableDataset``: rows are tagged
    with ``augmentation_seed(seed, epoch, position in the stream)``; ``set_epoch`` reaches the stream too
    (its shuffling follows the epoch)."""

    def __init__(self, dataset: IterableDataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        for index, row in enumerate(self.dataset):
            yield {**row, AUGMENTATION_SEED: augmentation_seed(self.seed, self.epoch, index)}


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

    Returns pixels ``[2, 3, R, R]`` in ``[-1, 1]`` and SDXL micro-conditioning ``[2, 6]``
    (``original_h, original_w, crop_top, crop_left, R, R`` of each image; the crop's top-left in resized
    pixels, mirrored when the pair is flipped). ``crop`` places the crop as fractions of the free margin.
    """
    tensors, conditioning = [], []
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
        conditioning.append([original_height, original_width, top, left, resolution, resolution])
    return torch.stack(tensors), torch.tensor(conditioning, dtype=torch.float32)


def input_ids_keys(count: int) -> tuple[str, ...]:
    """Batch keys of the token ids of ``count`` tokenizers: ``input_ids``, ``input_ids_2``, ..."""
    return tuple("input_ids" if i == 0 else f"input_ids_{i + 1}" for i in range(count))


@dataclass
class PreferenceCollator:
    """Turns rows into a batch: ``pixel_values_w``/``pixel_values_l`` ``[B, 3, R, R]``, ``input_ids`` (and
    ``input_ids_2`` for a second tokenizer) ``[B, 77]``, ``preference`` ``[B]`` (1.0 decided, 0.5 tie),
    ``num_corrupt`` (rows skipped because an image could not be decoded), ``num_ties`` (tied rows skipped
    with ``drop_ties``, for streams that were not filtered beforehand) and, with ``micro_conditioning``,
    SDXL's ``time_ids_w``/``time_ids_l`` ``[B, 6]``."""

    tokenizers: tuple
    schema: PreferenceSchema
    resolution: int
    random_crop: bool = False
    random_flip: bool = False
    micro_conditioning: bool = False
    drop_ties: bool = False

    def _orient(self, row) -> tuple[object, object, float]:
        """(winner image, loser image, preference) of a row."""
        if self.schema.kind == "paired":
            return row[self.schema.image_a], row[self.schema.image_b], 1.0
        label = float(row[self.schema.label])
        if label == TIE:
            return row[self.schema.image_a], row[self.schema.image_b], TIE
        if label == 1.0:
            return row[self.schema.image_a], row[self.schema.image_b], 1.0
        if label == 0.0:
            return row[self.schema.image_b], row[self.schema.image_a], 1.0
        raise ValueError(f"{self.schema.label} must be 1, 0 or 0.5, got {label}.")

    def decode_row(self, row) -> tuple[tuple[PILImage.Image, PILImage.Image], str, float] | None:
        """``((winner, loser) images, prompt, preference)`` of a row, or ``None`` when an image does not decode."""
        winner, loser, preference = self._orient(row)
        try:
            pair = (load_image(winner), load_image(loser))
        except ValueError:
            return None
        return pair, row[self.schema.prompt] or "", preference

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` (and ``input_ids_2``, ...) for each tokenizer, padded to its max length."""
        ids = {}
        for key, tokenizer in zip(input_ids_keys(len(self.tokenizers)), self.tokenizers):
            length = tokenizer.model_max_length
            ids[key] = (
                tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
                if prompts else torch.zeros(0, length, dtype=torch.long)  # a batch whose images were all corrupt
            )
        return ids

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        pixels, conditioning, prompts, preferences = [], [], [], []
        ties = 0
        for row in rows:
            if self.drop_ties and self._orient(row)[2] == TIE:
                ties += 1
                continue
            decoded = self.decode_row(row)
            if decoded is None:
                continue
            pair, prompt, preference = decoded
            seed = row.get(AUGMENTATION_SEED)
            rng = random.Random(seed) if seed is not None else None  # rows without a seed (eval) are not augmented
            crop, flip = draw_augmentation(rng, self.random_crop, self.random_flip)
            pair_pixels, pair_conditioning = paired_transform(pair, self.resolution, crop, flip)
            pixels.append(pair_pixels)
            conditioning.append(pair_conditioning)
            prompts.append(prompt)
            preferences.append(preference)
        size = self.resolution
        stacked = torch.stack(pixels) if pixels else torch.zeros(0, 2, 3, size, size)
        batch = {
            "pixel_values_w": stacked[:, 0],
            "pixel_values_l": stacked[:, 1],
            **self.tokenize(prompts),
            "preference": torch.tensor(preferences, dtype=torch.float32),
            "num_corrupt": torch.tensor(len(rows) - ties - len(pixels)),
            "num_ties": torch.tensor(ties),
        }
        if self.micro_conditioning:
            time_ids = torch.stack(conditioning) if conditioning else torch.zeros(0, 2, 6)
            batch["time_ids_w"], batch["time_ids_l"] = time_ids[:, 0], time_ids[:, 1]
        return batch
