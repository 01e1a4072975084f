"""Preference pairs from a model and a reward (AI feedback): generate K images per prompt, score them, pair them.

Image ``j`` of prompt ``i`` starts from the seed ``image_seed(seed, i, j)`` (``evaluation.generation``), so
what a prompt yields does not depend on the order, the shard or the process that generates it. Rows go to
Parquet shards as they are finished (``writer.PairShards``): rerunning the same command after a kill
generates only the missing shards. Under ``accelerate launch`` / ``torchrun`` each process (``RANK``,
``WORLD_SIZE``) takes every ``WORLD_SIZE``-th shard; the process that finds every shard written writes the
dataset card. No collective is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from typing import Sequence

from ..evaluation.generation import GenerationSettings, ModelSpec, image_seed, model_variant, render
from ..evaluation.rewards import combine_rewards, load_reward
from .card import dataset_statistics, write_dataset_card
from .selection import check_selection, select_pairs
from .writer import PairShards, png_bytes

__all__ = ["generate_pairs", "process_rank"]


def process_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process as set by ``accelerate launch`` / ``torchrun`` (``(0, 1)`` alone)."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size}).")
    return rank, world_size


def _device(device: str | None) -> str:
    import torch

    from ..evaluation.loading import default_device

    if device is not None:
        return device
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return default_device()


def generate_pairs(
    model,
    prompts: Sequence[str],
    rewards: Sequence,
    output_dir: str | os.PathLike,
    reward_weights: Sequence[float] | None = None,
    settings: GenerationSettings = GenerationSettings(num_images_per_prompt=4),
    selection: str = "best_worst",
    margin: float = 0.0,
    prompts_per_shard: int = 8,
    adapter: str | None = None,
    device: str | None = None,
    torch_dtype=None,
    progress: bool = True,
):
    """Generate, score and pair; write the dataset to ``output_dir``. Returns it (a ``datasets.Dataset``) once every
    shard is written, ``None`` on a process that finishes while others still write theirs.

    Args:
        model: hub id or folder of a pipeline of any supported family, or a pipeline instance.
        prompts: the prompts (``evaluation.load_prompts`` reads files, datasets and the shipped lists).
        rewards: reward names (``available_rewards()``), callables ``f(images, prompts)`` or import strings.
        reward_weights: one weight per reward (default 1 each); pairs are chosen by the weighted sum.
        settings: images per prompt (K >= 2), seed, steps, guidance, resolution, batch size.
        selection / margin: ``best_worst``, ``margin`` or ``random`` (``selection.select_pairs``).
        prompts_per_shard: prompts per Parquet shard: the unit that is written at once and redone after a kill.
        adapter: a LoRA folder loaded on the pipeline (e.g. the policy of an online round).
    """
    from tqdm.auto import tqdm

    from ..evaluation.loading import quiet_libraries
    from ..families import load_pipeline
    from ..families.registry import family_class_for
    from ..preflight import check_resolution

    prompts = list(prompts)
    if not prompts:
        raise ValueError("generate_pairs needs at least one prompt.")
    if settings.num_images_per_prompt < 2:
        raise ValueError(f"images_per_prompt must be at least 2 to form a pair, got {settings.num_images_per_prompt}.")
    check_selection(selection, margin)
    spec = ModelSpec("policy", adapter=adapter) if adapter is not None else None
    if spec is not None:
        spec.check()
    rewards = [load_reward(r) for r in rewards]  # a bad reward fails here, before the pipeline loads
    weights = [1.0] * len(rewards) if reward_weights is None else [float(w) for w in reward_weights]
    reward = combine_rewards(rewards, weights)
    rank, world_size = process_rank()
    shards = PairShards(output_dir, len(prompts), prompts_per_shard)
    check_resolution(settings.resolution, family_class_for(model), model)  # config files only, before the weights
    with quiet_libraries():
        family = load_pipeline(model, torch_dtype=torch_dtype)
        family.pipeline.to(_device(device))
    family.pipeline.set_progress_bar_config(disable=True)
    config = _run_config(model, adapter, family.pipeline, prompts, reward, rewards, weights, settings, selection, margin,
                         prompts_per_shard)
    shards.claim(config)
    todo = shards.missing(rank, world_size)
    shards.clear_temporary(todo)
    count = settings.num_images_per_prompt
    bar = tqdm(total=sum(len(shards.prompt_range(s)) for s in todo) * count, unit="img", disable=not progress,
               desc=f"pairs{f' [rank {rank}/{world_size}]' if world_size > 1 else ''}")
    with quiet_libraries(), model_variant(family, spec) as pipeline:
        for shard in todo:
            items = [(p, j, image_seed(settings.seed, p, j)) for p in shards.prompt_range(shard) for j in range(count)]
            images = []
            for start in range(0, len(items), settings.batch_size):
                batch = items[start:start + settings.batch_size]
                images += render(pipeline, [prompts[p] for p, _, _ in batch], [s for _, _, s in batch], settings)
                bar.update(len(batch))
            scores = reward(images, [prompts[p] for p, _, _ in items]).tolist()
            shards.write(shard, _rows(prompts, items, images, scores, settings, selection, margin),
                         [scores[first:first + count] for first in range(0, len(scores), count)])
    bar.close()
    if shards.missing():
        return None
    dataset = shards.load()
    write_dataset_card(output_dir, config, dataset_statistics(dataset, len(prompts), count, shards.image_scores()))
    return dataset


def _rows(prompts, items, images, scores, settings, selection, margin) -> dict[str, list]:
    """The pair rows of one shard: ``items`` hold K consecutive images per prompt."""
    count = settings.num_images_per_prompt
    rows = {name: [] for name in ("prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin", "tie",
                                  "prompt_index", "chosen_index", "rejected_index", "chosen_seed", "rejected_seed",
                                  "num_inference_steps", "guidance_scale", "height", "width")}
    for first in range(0, len(items), count):
        prompt_index = items[first][0]
        prompt_scores = scores[first:first + count]
        for chosen, rejected, tie in select_pairs(prompt_scores, selection, margin, seed=[settings.seed, prompt_index]):
            win, lose = images[first + chosen], images[first + rejected]
            values = {
                "prompt": prompts[prompt_index], "chosen": png_bytes(win), "rejected": png_bytes(lose),
                "chosen_score": prompt_scores[chosen], "rejected_score": prompt_scores[rejected],
                "margin": prompt_scores[chosen] - prompt_scores[rejected], "tie": tie, "prompt_index": prompt_index,
                "chosen_index": chosen, "rejected_index": rejected, "chosen_seed": items[first + chosen][2],
                "rejected_seed": items[first + rejected][2], "num_inference_steps": settings.num_inference_steps,
                "guidance_scale": settings.guidance_scale, "height": win.height, "width": win.width,
            }
            for name, value in values.items():
                rows[name].append(value)
    return rows


def _run_config(model, adapter, pipeline, prompts, reward, rewards, weights, settings, selection, margin,
                prompts_per_shard) -> dict:
    """What the run generates, recorded in ``pairs_config.json`` (a resume must match it) and the dataset card. The
    batch size is part of it: it changes no seed, but batched kernels round differently."""
    model_name = model if isinstance(model, (str, os.PathLike)) else getattr(pipeline, "name_or_path", None) or f"a {type(pipeline).__name__} instance"
    return {
        "model": str(model_name), "adapter": None if adapter is None else str(adapter),
        "pipeline": type(pipeline).__name__, "scheduler": type(pipeline.scheduler).__name__,
        "rewards": [{"name": r.name, "weight": w, "description": r.description} for r, w in zip(rewards, weights)],
        "combined_reward": reward.name,
        "settings": asdict(settings), "selection": selection, "margin": float(margin),
        "prompts_per_shard": prompts_per_shard, "num_prompts": len(prompts),
        "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode("utf-8")).hexdigest(),
    }
