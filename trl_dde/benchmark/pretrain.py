"""Pretraining the benchmark's base model through ``DDEDiffusionTrainer`` (``loss_type="sft"``), cached on disk.

The base is trained on clean renders of the training scenes (the winner of each pair; the loser column
is a second render and unused by the SFT loss) until its samples are recognisably on-prompt. Its UNet
weights (the frozen text encoder is fixed by the seed) are cached under ``cache_dir/<key>.pt``, the key a hash of every setting that
changes them, so a second run starts from the cached base.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch
from datasets import Dataset, Features, Image, Value
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback

from ..config import DDEConfig
from ..trainer import DDEDiffusionTrainer
from .pipeline import benchmark_pipeline
from .world import Scene, render

__all__ = ["default_cache_dir", "pretrained_base", "scene_dataset"]

PRETRAIN_VERSION = 3  # bump when the world or the pipeline changes what a pretrained base is


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRL_DDE_CACHE", Path.home() / ".cache" / "trl-dde")) / "benchmark"


def _png(image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def scene_dataset(scenes: list[Scene], copies: int) -> Dataset:
    """``copies`` clean renders of each scene as prompt/chosen/rejected rows (rejected: a speckled render)."""
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for copy in range(copies):
        for scene in scenes:
            rows["prompt"].append(scene.caption)
            rows["chosen"].append(_png(render(scene)))
            rows["rejected"].append(_png(render(scene, noise=20.0, seed=copy)))
    features = Features({"prompt": Value("string"), "chosen": Image(), "rejected": Image()})
    return Dataset.from_dict(rows, features=features)


class StepBar(TrainerCallback):
    """A progress bar over the optimizer steps of one training run (the trainer's own prints log dictionaries)."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, desc=self.description)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


def pretrained_base(scenes: list[Scene], steps: int, output_dir: str, cache_dir: Path | None = None,
                    seed: int = 0, batch_size: int = 16, learning_rate: float = 2e-3):
    """``(pipeline, path, cached)``: the base pipeline after ``steps`` SFT steps on ``scenes``, the cache file holding
    its UNet weights, and whether it was loaded from there rather than trained now."""
    settings = {"version": PRETRAIN_VERSION, "scenes": [s.caption for s in scenes], "steps": steps, "seed": seed,
                "batch_size": batch_size, "learning_rate": learning_rate}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = (cache_dir or default_cache_dir()) / f"base-{key}.pt"
    pipeline = benchmark_pipeline(seed=seed)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        pipeline.unet.load_state_dict(state["unet"])
        return pipeline, path, True
    if steps:
        args = DDEConfig(
            output_dir=output_dir, loss_type="sft", max_steps=steps, per_device_train_batch_size=batch_size,
            learning_rate=learning_rate, lr_scheduler_type="constant",
            logging_steps=max(1, steps // 10), save_strategy="no", report_to="none", seed=seed, use_cpu=True,
            disable_tqdm=True,
        )
        trainer = DDEDiffusionTrainer(pipeline, args=args, train_dataset=scene_dataset(scenes, copies=2),
                                      callbacks=[StepBar("pretrain base")])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")  # renamed whole: a killed run leaves no truncated base
    torch.save({"unet": pipeline.unet.state_dict(), "settings": settings}, partial)
    os.replace(partial, path)
    return pipeline, path, False
