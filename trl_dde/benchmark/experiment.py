"""The benchmark's three phases after pretraining: preference pairs from the base, one training run per
(method, seed) through ``DDEDiffusionTrainer``, and evaluation on held-out prompts.

Methods are names: ``sft`` (winners only), any credit strategy (registered name or ``module:Class``),
``dde:mean``/``dde-step:mean`` for ``correction_reduction="mean"``, and ``uniform@200-700`` for
``timestep_range=[200, 700)``. Every method gets the same pairs, LoRA, steps, learning rate and seeds.
"""

from __future__ import annotations

import io

import torch
from datasets import Dataset, Features, Value
from peft import LoraConfig
from transformers import PrinterCallback

from ..config import DDEConfig
from ..credit import resolve_credit_class
from ..trainer import DDEDiffusionTrainer
from .preference import preference_label, preference_score
from .world import Scene, fidelity

__all__ = ["evaluate", "generate", "make_pairs", "method_config", "train_method"]

SAMPLING_STEPS = 10


def method_config(method: str) -> dict:
    """The ``DDEConfig`` fields of a method name; a clear error for a name that is none of the forms."""
    if method == "sft":
        return {"loss_type": "sft", "credit": "uniform"}
    if method.startswith("uniform@"):
        low, high = (int(x) for x in method.removeprefix("uniform@").split("-"))
        return {"credit": "uniform", "timestep_range": [low, high]}
    if method in ("dde:mean", "dde-step:mean"):  # the strategies with a correction_reduction option
        return {"credit": method.removesuffix(":mean"), "credit_kwargs": {"correction_reduction": "mean"}}
    try:
        resolve_credit_class(method)
    except (ValueError, ImportError, AttributeError, TypeError) as error:
        raise ValueError(f"Unknown benchmark method {method!r}: use sft, uniform@LOW-HIGH, dde:mean, dde-step:mean"
                         f", or a credit strategy ({error})") from error
    return {"credit": method}


def generate(pipeline, captions: list[str], seed: int, batch_size: int = 32) -> list:
    """One image per caption, image ``i`` from the generator seeded ``seed + i`` (the same noise for every model)."""
    pipeline.unet.eval()
    pipeline.set_progress_bar_config(disable=True)
    images = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start:start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images += pipeline(chunk, num_inference_steps=SAMPLING_STEPS, guidance_scale=1.0, generator=generators,
                           output_type="pil").images
    return images


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_pairs(pipeline, scenes: list[Scene], samples_per_prompt: int, seed: int) -> Dataset:
    """Pick-a-Pic-style pairs: ``samples_per_prompt`` base samples per prompt, consecutive ones paired and labelled."""
    captions = [scene.caption for scene in scenes for _ in range(samples_per_prompt)]
    images = generate(pipeline, captions, seed)
    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": []}
    for i in range(0, len(images) - 1, 2):
        rows["caption"].append(captions[i])
        rows["jpg_0"].append(_png(images[i]))
        rows["jpg_1"].append(_png(images[i + 1]))
        rows["label_0"].append(preference_label(images[i], images[i + 1], captions[i]))
    features = Features({"caption": Value("string"), "jpg_0": Value("binary"), "jpg_1": Value("binary"),
                         "label_0": Value("float64")})
    return Dataset.from_dict(rows, features=features)


def train_method(pipeline, method: str, pairs: Dataset, steps: int, seed: int, output_dir: str,
                 batch_size: int = 8, learning_rate: float = 1e-3, beta: float = 500.0) -> list[dict]:
    """Train a LoRA on ``pipeline`` (in place) with ``method``; returns the trainer's log history."""
    args = DDEConfig(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size,
                     learning_rate=learning_rate, lr_scheduler_type="constant", beta=beta,
                     logging_steps=max(1, steps // 5), save_strategy="no", report_to="none", seed=seed, use_cpu=True,
                     disable_tqdm=True, **method_config(method))
    lora = LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    trainer = DDEDiffusionTrainer(pipeline, args=args, train_dataset=pairs, peft_config=lora)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer.state.log_history


def evaluate(images: list, captions: list[str]) -> dict[str, list[float]]:
    """Per-image preference score and fidelity (the checker's share of caption attributes)."""
    return {"preference": [preference_score(image, caption) for image, caption in zip(images, captions)],
            "fidelity": [fidelity(image, caption) for image, caption in zip(images, captions)]}
