"""Preference data: schemas, preparation (filtering in the dataset), images, collation, precompute and batch sources."""

from .collate import PreferenceCollator, pair_positions
from .images import augmentation_seed, draw_augmentation, image_error, load_image, paired_transform
from .precompute import CachedPairCollator, PrecomputedData, precompute_preference_dataset
from .prepare import (
    AUGMENTATION_SEED,
    PAIR_EPOCH,
    PAIR_INDEX,
    PreferencePairs,
    PreferenceStream,
    PreparedData,
    prepare_preference_dataset,
    row_problem,
)
from .schema import TIE, PreferenceSchema, detect_schema, schemas_from_args
from .sources import CachedBatches, OnTheFlyBatches, PairBatch, sample_latents

__all__ = [
    "AUGMENTATION_SEED",
    "PAIR_EPOCH",
    "PAIR_INDEX",
    "TIE",
    "CachedBatches",
    "CachedPairCollator",
    "OnTheFlyBatches",
    "PairBatch",
    "PrecomputedData",
    "PreferenceCollator",
    "PreferencePairs",
    "PreferenceSchema",
    "PreferenceStream",
    "PreparedData",
    "augmentation_seed",
    "detect_schema",
    "draw_augmentation",
    "image_error",
    "load_image",
    "pair_positions",
    "paired_transform",
    "precompute_preference_dataset",
    "prepare_preference_dataset",
    "row_problem",
    "sample_latents",
    "schemas_from_args",
]
