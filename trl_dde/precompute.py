"""Encode a preference dataset once: VAE posteriors of both images and text embeddings of each prompt.

Re-encoding every image and prompt at every step (what the reference scripts do) costs a VAE encoder
and one or two text encoders per step. ``precompute_latents=True`` runs them once, batched, before
training, and trains from the cache with the VAE and text encoders off the accelerator.

What is cached, per pair (winner first, ties already dropped, corrupt pairs skipped and counted):
``posterior_w``/``posterior_l`` — the VAE's diagonal Gaussian ``[mean; logvar]`` (2C channels), so a
latent is *sampled* at train time exactly as ``latent_dist.sample()`` would (``precompute_vae="mean"``
keeps only the mean: half the disk, a deterministic latent); ``time_ids_w``/``time_ids_l`` (SDXL);
``prompt_index`` into a separate table of unique prompts (``prompt_embeds`` and, for SDXL,
``pooled_prompt_embeds``) — Pick-a-Pic has far fewer unique captions than pairs. With ``flip=True``
the horizontally mirrored images are encoded too (``*_flip`` columns) so ``random_flip`` survives.
Random crops cannot be cached: images are centre-cropped.

Caching goes through ``datasets`` cache files named by a fingerprint of the dataset (its own
``_fingerprint``: stable for datasets loaded from the Hub or ``load_from_disk``), a hash of the VAE and
text-encoder weights and the settings, so a second run with the same data and model reuses the cache.
"""

from __future__ import annotations

import hashlib
import os
import random

import datasets
import numpy as np
import torch
from datasets import Dataset
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from .data import AUGMENTATION_SEED, PreferenceCollator, paired_transform
from .models import PromptEmbeddings, encode_prompts, text_encoders_of

__all__ = [
    "CachedPairCollator",
    "PrecomputedData",
    "cached_prompt_embeddings",
    "precompute_preference_dataset",
    "sample_latents",
]

CACHE_VERSION = "1"


def _weights_hash(modules) -> str:
    """A digest of every weight of ``modules``: the cache key follows the model, not its name."""
    digest = hashlib.blake2b(digest_size=16)
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class PrecomputedData:
    """Cached pair datasets (one per split), their shared prompt table (``datasets.Dataset``s in torch
    format), the corrupt pairs skipped in each split, and how the cache was made."""

    def __init__(self, pairs: list[Dataset], prompts: Dataset, corrupt_skipped: list[int], vae_mode: str, has_flip: bool):
        self.pairs, self.prompts, self.corrupt_skipped = pairs, prompts, corrupt_skipped
        self.vae_mode, self.has_flip = vae_mode, has_flip


def precompute_preference_dataset(
    splits: list[Dataset],
    collator: PreferenceCollator,
    pipeline,
    *,
    flip: bool = False,
    vae_mode: str = "sample",
    dtype: torch.dtype = torch.float16,
    batch_size: int = 16,
    cache_dir: str | None = None,
) -> PrecomputedData:
    """Encode ``splits`` (schema-checked and tie-filtered; e.g. train and eval) with ``pipeline``'s VAE and
    text encoders. All splits share one prompt table."""
    if vae_mode not in ("sample", "mean"):
        raise ValueError(f"precompute_vae must be 'sample' or 'mean', got {vae_mode!r}.")
    cache_dir = cache_dir or os.path.join(datasets.config.HF_DATASETS_CACHE, "trl-dde")
    os.makedirs(cache_dir, exist_ok=True)
    model_hash = _weights_hash([pipeline.vae, *text_encoders_of(pipeline)])
    settings = (collator.resolution, collator.micro_conditioning, flip, vae_mode, str(dtype), CACHE_VERSION)
    keys = [datasets.fingerprint.Hasher.hash((split._fingerprint, model_hash, settings)) for split in splits]
    schema, numpy_dtype = collator.schema, np.dtype(str(dtype).removeprefix("torch."))

    unique = sorted(set().union(*(split.unique(schema.prompt) for split in splits)))
    prompt_key = datasets.fingerprint.Hasher.hash((keys, "prompts"))
    prompts = Dataset.from_dict({"prompt": unique}).map(
        lambda batch: _encode_prompt_batch(batch["prompt"], collator, pipeline, numpy_dtype),
        batched=True, batch_size=batch_size, new_fingerprint=prompt_key,
        cache_file_name=os.path.join(cache_dir, f"prompts-{prompt_key}.arrow"), desc="Encoding prompts",
    )
    prompt_index = {prompt: i for i, prompt in enumerate(prompts["prompt"])}
    cached = [
        split.map(
            lambda batch: _encode_pair_batch(batch, collator, pipeline, prompt_index, flip, vae_mode, numpy_dtype),
            batched=True, batch_size=batch_size, remove_columns=split.column_names, new_fingerprint=key,
            cache_file_name=os.path.join(cache_dir, f"pairs-{key}.arrow"), desc="Encoding images",
        )
        for split, key in zip(splits, keys)
    ]
    return PrecomputedData(
        [pairs.with_format("torch") for pairs in cached],
        prompts.remove_columns("prompt").with_format("torch"),
        corrupt_skipped=[len(split) - len(pairs) for split, pairs in zip(splits, cached)],
        vae_mode=vae_mode,
        has_flip=flip,
    )


@torch.no_grad()
def _encode_prompt_batch(prompts: list[str], collator: PreferenceCollator, pipeline, numpy_dtype) -> dict:
    ids = collator.tokenize(prompts)
    embeddings = encode_prompts(pipeline, tuple(ids.values()))
    columns = {"prompt_embeds": embeddings.hidden_states.float().cpu().numpy().astype(numpy_dtype)}
    if embeddings.pooled is not None:
        columns["pooled_prompt_embeds"] = embeddings.pooled.float().cpu().numpy().astype(numpy_dtype)
    return columns


@torch.no_grad()
def _encode_pair_batch(batch: dict, collator, pipeline, prompt_index, flip, vae_mode, numpy_dtype) -> dict:
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    variants = [False, True] if flip else [False]
    pixels, time_ids, kept = {v: [] for v in variants}, {v: [] for v in variants}, []
    for row in rows:
        decoded = collator.decode_row(row)
        if decoded is None:  # corrupt: skipped, counted by the caller from the row counts
            continue
        pair, prompt, preference = decoded
        for mirrored in variants:  # decoded once, transformed once per cached variant
            pair_pixels, pair_ids = paired_transform(pair, collator.resolution, flip=mirrored)
            pixels[mirrored].append(pair_pixels)
            time_ids[mirrored].append(pair_ids)
        kept.append((prompt, preference))
    vae = pipeline.vae
    columns = {"prompt_index": [prompt_index[p] for p, _ in kept], "preference": [float(p) for _, p in kept]}
    for mirrored in variants:
        suffix = "_flip" if mirrored else ""
        if not kept:
            for side in ("w", "l"):
                columns[f"posterior_{side}{suffix}"] = []
                if collator.micro_conditioning:
                    columns[f"time_ids_{side}{suffix}"] = []
            continue
        stacked = torch.stack(pixels[mirrored])  # [B, 2, 3, R, R]
        images = torch.cat([stacked[:, 0], stacked[:, 1]]).to(vae.device, vae.dtype)
        posterior = vae.encode(images).latent_dist
        parameters = posterior.mean if vae_mode == "mean" else posterior.parameters
        winners, losers = parameters.float().cpu().numpy().astype(numpy_dtype).reshape(2, len(kept), *parameters.shape[1:])
        columns[f"posterior_w{suffix}"], columns[f"posterior_l{suffix}"] = list(winners), list(losers)
        if collator.micro_conditioning:
            ids = torch.stack(time_ids[mirrored]).numpy()
            columns[f"time_ids_w{suffix}"], columns[f"time_ids_l{suffix}"] = list(ids[:, 0]), list(ids[:, 1])
    return columns


def sample_latents(cached: torch.Tensor, vae_mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """A latent from the cache: ``mean + std·ε`` from ``[mean; logvar]`` (``vae_mode="sample"``, the same
    draw as ``latent_dist.sample()`` on the fly) or the cached mean itself (``"mean"``)."""
    if vae_mode == "mean":
        return cached
    return DiagonalGaussianDistribution(cached).sample(generator=generator)


class CachedPairCollator:
    """Batches of precomputed pairs: posteriors, prompt embeddings looked up in the prompt table,
    preference, SDXL ``time_ids``; with ``random_flip`` and a cached mirrored variant, each pair takes
    the mirrored one with probability ½ (from its augmentation seed)."""

    def __init__(self, prompts: Dataset, micro_conditioning: bool, random_flip: bool, has_flip: bool):
        self.prompts, self.micro_conditioning = prompts, micro_conditioning
        self.random_flip = random_flip and has_flip

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        suffixes = []
        for row in rows:
            seed = row.get(AUGMENTATION_SEED)
            flipped = self.random_flip and seed is not None and random.Random(seed).random() < 0.5
            suffixes.append("_flip" if flipped else "")
        batch = {f"posterior_{side}": torch.stack([row[f"posterior_{side}{s}"] for row, s in zip(rows, suffixes)])
                 for side in ("w", "l")}
        if self.micro_conditioning:
            for side in ("w", "l"):
                batch[f"time_ids_{side}"] = torch.stack([row[f"time_ids_{side}{s}"] for row, s in zip(rows, suffixes)]).float()
        table = self.prompts[[int(row["prompt_index"]) for row in rows]]
        batch["prompt_embeds"] = table["prompt_embeds"]
        if "pooled_prompt_embeds" in table:
            batch["pooled_prompt_embeds"] = table["pooled_prompt_embeds"]
        batch["preference"] = torch.stack([row["preference"] for row in rows]).float()
        batch["num_corrupt"] = torch.tensor(0)
        batch["num_ties"] = torch.tensor(0)
        return batch


def cached_prompt_embeddings(inputs: dict, dtype: torch.dtype) -> PromptEmbeddings:
    """The UNet's text conditioning from a cached batch, in the training dtype."""
    pooled = inputs.get("pooled_prompt_embeds")
    return PromptEmbeddings(inputs["prompt_embeds"].to(dtype), None if pooled is None else pooled.to(dtype))
