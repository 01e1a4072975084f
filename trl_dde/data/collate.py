"""Turning prepared rows into a batch of pixels, token ids and crop information.

Rows reach the collator already filtered (``prepare.py``): every row is decodable, so a batch always has
as many pairs as rows. Streamed rows carry the counts of rows skipped before them, summed here into
``num_ties``/``num_corrupt`` for the trainer's counters.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch

from .images import draw_augmentation, load_image, paired_transform
from .prepare import AUGMENTATION_SEED, PAIR_EPOCH, PAIR_INDEX, SKIPPED_CORRUPT, SKIPPED_TIES
from .schema import PreferenceSchema

__all__ = ["PreferenceCollator", "pair_positions"]


def pair_positions(rows: list[dict]) -> dict[str, list[int]]:
    """``pair_index``/``pair_epoch`` of the rows as host lists (they seed the per-pair draws on the host, see
    ``draws.py``), when the rows carry them (training rows from ``PreferencePairs``); else nothing."""
    if not rows or PAIR_INDEX not in rows[0]:
        return {}
    return {PAIR_INDEX: [int(row[PAIR_INDEX]) for row in rows], PAIR_EPOCH: [int(row[PAIR_EPOCH]) for row in rows]}


@dataclass
class PreferenceCollator:
    """Batches ``pixel_values_w``/``pixel_values_l`` ``[B, 3, R, R]`` in ``[-1, 1]``, token ids (one key per
    tokenizer: ``input_ids``, ``input_ids_2``, ...) ``[B, L]``, ``crop_info_w``/``crop_info_l`` ``[B, 6]``,
    ``preference`` ``[B]`` (1.0 decided, 0.5 kept tie), the skip counters ``num_ties``/``num_corrupt`` and,
    for training rows, ``pair_positions``.

    Rows with an augmentation seed are cropped/flipped by it (``random_crop``/``random_flip``); rows without
    one (evaluation) are centre-cropped.
    """

    tokenize: Callable[[list[str]], dict[str, torch.Tensor]]
    schema: PreferenceSchema
    resolution: int
    random_crop: bool = False
    random_flip: bool = False

    def decode_row(self, row: dict):
        """``((winner, loser) RGB images, prompt, preference)`` of a prepared row."""
        winner, loser, preference = self.schema.orient(row)
        try:
            pair = (load_image(winner), load_image(loser))
        except ValueError as error:  # rows were checked when the dataset was prepared: this is a changed file
            raise ValueError(f"A row that passed the dataset check no longer decodes ({error}); prompt "
                             f"{row.get(self.schema.prompt)!r}. Were image files changed during training?") from error
        return pair, row[self.schema.prompt] or "", preference

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        pixels, crop_info, prompts, preferences = [], [], [], []
        for row in rows:
            pair, prompt, preference = self.decode_row(row)
            seed = row.get(AUGMENTATION_SEED)
            rng = random.Random(seed) if seed is not None else None
            crop, flip = draw_augmentation(rng, self.random_crop, self.random_flip)
            pair_pixels, pair_crop = paired_transform(pair, self.resolution, crop, flip)
            pixels.append(pair_pixels)
            crop_info.append(pair_crop)
            prompts.append(prompt)
            preferences.append(preference)
        pixels, crop_info = torch.stack(pixels), torch.stack(crop_info)
        return {
            "pixel_values_w": pixels[:, 0],
            "pixel_values_l": pixels[:, 1],
            "crop_info_w": crop_info[:, 0],
            "crop_info_l": crop_info[:, 1],
            **self.tokenize(prompts),
            "preference": torch.tensor(preferences, dtype=torch.float32),
            "num_ties": torch.tensor(sum(row.get(SKIPPED_TIES, 0) for row in rows)),
            "num_corrupt": torch.tensor(sum(row.get(SKIPPED_CORRUPT, 0) for row in rows)),
            **pair_positions(rows),
        }
