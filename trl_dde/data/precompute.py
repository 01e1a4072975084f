"""Encode a preference dataset once: VAE posteriors of both images and the text conditioning of each prompt.

Re-encoding every image and prompt at every step (what the reference scripts do) costs a VAE encoder
and one or two text encoders per step. ``precompute_latents=True`` runs them once, batched, before
training, and trains from the cache with the VAE and text encoders off the accelerator.

What is cached, per pair (winner first; the split was already prepared, so ties are dropped and every
row decodes): ``posterior_w``/``posterior_l`` — the VAE's diagonal Gaussian ``[mean; logvar]`` (2C
channels), so a latent is *sampled* at train time exactly as ``latent_dist.sample()`` would
(``precompute_vae="mean"`` keeps only the mean: half the disk, a deterministic latent);
``crop_info_w``/``crop_info_l`` (for per-image conditioning such as SDXL's ``time_ids``);
``prompt_index`` into a separate table of unique prompts holding the family's prompt conditioning as
``prompt_<key>`` columns — Pick-a-Pic has far fewer unique captions than pairs. With ``flip=True`` the
horizontally mirrored images are encoded too (``*_flip`` columns) so ``random_flip`` survives. Random
crops cannot be cached: images are centre-cropped.

Caching goes through ``datasets`` cache files named by a fingerprint of the dataset (its own
``_fingerprint``: stable for datasets loaded from the Hub or ``load_from_disk``), a hash of the VAE and
text-encoder weights and the settings, so a second run with the same data and model reuses the cache and,
under several processes, the main process encodes while the others wait and then read its files.
``datasets`` writes each cache file to a temporary file and renames it when complete, so an interrupted
pass leaves no partial cache; a cache file that is damaged all the same (truncated, unreadable) is detected
when it is read, removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random

import datasets
import numpy as np
import torch
from datasets import Array3D, Dataset, Features, List, Value

from ..families import ModelFamily
from .collate import PreferenceCollator, pair_positions
from .images import paired_transform
from .prepare import AUGMENTATION_SEED

__all__ = ["CachedPairCollator", "PrecomputedData", "precompute_preference_dataset", "weights_hash"]

CACHE_VERSION = "3"  # 3: posteriors stored as fixed-shape Array3D columns (read 2-3x faster than nested lists)

logger = logging.getLogger(__name__)


def _cached_map(dataset: Dataset, function, cache_file_name: str, **kwargs) -> Dataset:
    """``dataset.map(function, cache_file_name=...)``, rebuilding the cache file once if it exists but cannot be read."""
    try:
        return dataset.map(function, cache_file_name=cache_file_name, **kwargs)
    except (OSError, ValueError) as error:  # pyarrow reports truncated or garbled files as OSError/ArrowInvalid
        if not os.path.isfile(cache_file_name):
            raise
        logger.warning("The cache file %s is damaged (%s); removing it and encoding again.", cache_file_name, error)
        os.remove(cache_file_name)
        return dataset.map(function, cache_file_name=cache_file_name, **kwargs)


def weights_hash(modules, skip: str | None = None) -> str:
    """A digest of every weight of ``modules`` (but those whose name contains ``skip``): a cache key follows the
    model, not its name."""
    digest = hashlib.blake2b(digest_size=16)
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            if skip is not None and skip in name:
                continue
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class PrecomputedData:
    """Cached pair datasets (one per split), their shared prompt table (``datasets.Dataset``s in torch
    format), and how the cache was made."""

    def __init__(self, pairs: list[Dataset], prompts: Dataset, vae_mode: str, has_flip: bool):
        self.pairs, self.prompts, self.vae_mode, self.has_flip = pairs, prompts, vae_mode, has_flip


def precompute_preference_dataset(
    splits: list[Dataset],
    collator: PreferenceCollator,
    family: ModelFamily,
    *,
    flip: bool = False,
    vae_mode: str = "sample",
    dtype: torch.dtype = torch.float16,
    batch_size: int = 16,
    cache_dir: str | None = None,
) -> PrecomputedData:
    """Encode prepared ``splits`` (e.g. train and eval) with ``family``'s VAE and text encoders. All splits
    share one prompt table."""
    if vae_mode not in ("sample", "mean"):
        raise ValueError(f"precompute_vae must be 'sample' or 'mean', got {vae_mode!r}.")
    cache_dir = cache_dir or os.path.join(datasets.config.HF_DATASETS_CACHE, "trl-dde")
    os.makedirs(cache_dir, exist_ok=True)
    model_hash = weights_hash([family.vae, *family.text_encoders])
    settings = (family.name, collator.resolution, flip, vae_mode, str(dtype), CACHE_VERSION)
    keys = [datasets.fingerprint.Hasher.hash((split._fingerprint, model_hash, settings)) for split in splits]
    schema, numpy_dtype = collator.schema, np.dtype(str(dtype).removeprefix("torch."))

    unique = sorted(set().union(*(split.unique(schema.prompt) for split in splits)))
    prompt_key = datasets.fingerprint.Hasher.hash((keys, "prompts"))
    prompts = _cached_map(
        Dataset.from_dict({"prompt": unique}), lambda batch: _encode_prompt_batch(batch["prompt"], family, numpy_dtype),
        os.path.join(cache_dir, f"prompts-{prompt_key}.arrow"),
        batched=True, batch_size=batch_size, new_fingerprint=prompt_key, desc="Encoding prompts",
    )
    prompt_index = {prompt: i for i, prompt in enumerate(prompts["prompt"])}
    features = _pair_features(family, collator.resolution, flip, vae_mode, numpy_dtype)
    cached = [
        _cached_map(
            split, lambda batch: _encode_pair_batch(batch, collator, family, prompt_index, flip, vae_mode, numpy_dtype),
            os.path.join(cache_dir, f"pairs-{key}.arrow"),
            batched=True, batch_size=batch_size, remove_columns=split.column_names, new_fingerprint=key, features=features,
            desc="Encoding images",
        )
        for split, key in zip(splits, keys)
    ]
    return PrecomputedData([pairs.with_format("torch") for pairs in cached],
                           prompts.remove_columns("prompt").with_format("torch"), vae_mode=vae_mode, has_flip=flip)


def _pair_features(family: ModelFamily, resolution: int, flip: bool, vae_mode: str, numpy_dtype) -> Features:
    """The cached pair columns with fixed shapes: posteriors as ``Array3D`` (read as one buffer per row, not as
    nested lists), crop information as 6 floats."""
    channels = family.vae.config.latent_channels * (1 if vae_mode == "mean" else 2)  # "sample" keeps mean and logvar
    side = resolution // family.pipeline.vae_scale_factor
    columns = {"prompt_index": Value("int64"), "preference": Value("float64")}
    for suffix in ["", "_flip"] if flip else [""]:
        for side_name in ("w", "l"):
            columns[f"posterior_{side_name}{suffix}"] = Array3D((channels, side, side), str(numpy_dtype))
            columns[f"crop_info_{side_name}{suffix}"] = List(Value("float32"), length=6)
    return Features(columns)


@torch.no_grad()
def _encode_prompt_batch(prompts: list[str], family: ModelFamily, numpy_dtype) -> dict:
    conditioning = family.encode_prompts(family.tokenize(prompts))
    return {f"prompt_{key}": value.float().cpu().numpy().astype(numpy_dtype) for key, value in conditioning.items()}


@torch.no_grad()
def _encode_pair_batch(batch: dict, collator, family: ModelFamily, prompt_index, flip, vae_mode, numpy_dtype) -> dict:
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    decoded = [collator.decode_row(row) for row in rows]
    columns = {"prompt_index": [prompt_index[prompt] for _, prompt, _ in decoded],
               "preference": [float(preference) for _, _, preference in decoded]}
    vae = family.vae
    for mirrored in [False, True] if flip else [False]:
        suffix = "_flip" if mirrored else ""
        transformed = [paired_transform(pair, collator.resolution, flip=mirrored) for pair, _, _ in decoded]
        pixels = torch.stack([pixels for pixels, _ in transformed])  # [B, 2, 3, R, R]
        crop_info = torch.stack([crop for _, crop in transformed]).numpy()  # [B, 2, 6]
        posterior = vae.encode(torch.cat([pixels[:, 0], pixels[:, 1]]).to(vae.device, vae.dtype)).latent_dist
        parameters = posterior.mean if vae_mode == "mean" else posterior.parameters
        winners, losers = parameters.float().cpu().numpy().astype(numpy_dtype).reshape(2, len(rows), *parameters.shape[1:])
        columns[f"posterior_w{suffix}"], columns[f"posterior_l{suffix}"] = list(winners), list(losers)
        columns[f"crop_info_w{suffix}"], columns[f"crop_info_l{suffix}"] = list(crop_info[:, 0]), list(crop_info[:, 1])
    return columns


class CachedPairCollator:
    """Batches of precomputed pairs: posteriors, crop information, the prompt conditioning looked up in the
    prompt table, the preference and the ``pair_positions``; with ``random_flip`` and a cached mirrored variant, each pair takes
    the mirrored one with probability ½ (from its augmentation seed)."""

    def __init__(self, prompts: Dataset, random_flip: bool, has_flip: bool):
        self.prompts = prompts
        self.random_flip = random_flip and has_flip

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        suffixes = []
        for row in rows:
            seed = row.get(AUGMENTATION_SEED)
            flipped = self.random_flip and seed is not None and random.Random(seed).random() < 0.5
            suffixes.append("_flip" if flipped else "")
        batch = {f"{name}_{side}": torch.stack([row[f"{name}_{side}{s}"] for row, s in zip(rows, suffixes)])
                 for name in ("posterior", "crop_info") for side in ("w", "l")}
        table = self.prompts[[int(row["prompt_index"]) for row in rows]]
        batch.update({key: value for key, value in table.items() if key.startswith("prompt_")})
        batch["preference"] = torch.stack([row["preference"] for row in rows]).float()
        batch["num_ties"] = batch["num_corrupt"] = torch.tensor(0)
        batch.update(pair_positions(rows))
        return batch
