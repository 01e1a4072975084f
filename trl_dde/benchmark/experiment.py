"""The benchmark's three phases after pretraining: preference pairs from the base, one training run per
(method, seed) through ``DDEDiffusionTrainer``, and the held-out evaluation of each run.

Methods are names: ``sft`` (winners only), any credit strategy (registered name or ``module:Class``),
``dde:mean``/``dde-step:mean`` for ``correction_reduction="mean"``, ``uniform@LOW-HIGH`` for uniform credit
on ``τ ∈ [LOW, HIGH)``, and ``segments``, shorthand for the paper's Fig. 3 sweep: uniform credit on each
10 % segment of the schedule. Every method gets the same pairs, LoRA, steps, learning rate and seeds.

Images are drawn with the evaluation package's paired generation: image ``j`` of prompt ``i`` starts from
the noise seeded ``image_seed(seed, i, j)`` in every model, so a tuned model's image and the base's are a
pair that differs only by the model.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field

from ..evaluation.callback import ValidationCallback
from ..evaluation.generation import GenerationSettings, render_batches
from .preference import preference_label, preference_score
from .world import Scene, fidelity

__all__ = ["CurveValidation", "RunResult", "SAMPLING", "evaluate", "expand_methods", "make_pairs", "method_config",
           "sample", "segment_methods", "train_method"]

SAMPLING = GenerationSettings(num_inference_steps=10, guidance_scale=1.0, batch_size=64)
NUM_TIMESTEPS = 1000


def segment_methods(count: int = 10) -> list[str]:
    """``uniform@LOW-HIGH`` for each of ``count`` equal segments of the schedule (the paper's Fig. 3)."""
    width = NUM_TIMESTEPS // count
    return [f"uniform@{low}-{low + width}" for low in range(0, NUM_TIMESTEPS, width)]


def expand_methods(methods: list[str]) -> list[str]:
    """``methods`` with ``segments`` replaced by the ten segment methods, duplicates dropped, order kept."""
    expanded = [name for method in methods for name in (segment_methods() if method == "segments" else [method])]
    return list(dict.fromkeys(expanded))


def method_config(method: str) -> dict:
    """The ``DDEConfig`` fields of a method name; a clear error for a name that is none of the forms."""
    from ..credit import resolve_credit_class

    if method == "sft":
        return {"loss_type": "sft", "credit": "uniform"}
    if method.startswith("uniform@"):
        bounds = method.removeprefix("uniform@").split("-")
        if len(bounds) != 2 or not all(b.isdigit() for b in bounds) or not int(bounds[0]) < int(bounds[1]) <= NUM_TIMESTEPS:
            raise ValueError(f"{method!r}: write uniform@LOW-HIGH with integers 0 <= LOW < HIGH <= {NUM_TIMESTEPS}, "
                             "e.g. uniform@200-700.")
        return {"credit": "uniform", "timestep_range": [int(bounds[0]), int(bounds[1])]}
    if method in ("dde:mean", "dde-step:mean"):  # the strategies with a correction_reduction option
        return {"credit": method.removesuffix(":mean"), "credit_kwargs": {"correction_reduction": "mean"}}
    try:
        resolve_credit_class(method)
    except (ValueError, ImportError, AttributeError, TypeError) as error:
        raise ValueError(f"Unknown benchmark method {method!r}: use sft, segments, uniform@LOW-HIGH, dde:mean, "
                         f"dde-step:mean, or a credit strategy ({error})") from error
    return {"credit": method}


def sample(pipeline, captions: list[str], seed: int, images_per_caption: int = 1, progress: str | None = None) -> list:
    """``images_per_caption`` images per caption, prompt-major; image ``j`` of caption ``i`` from ``image_seed(seed, i, j)``;
    a progress bar over the batches when ``progress`` names it."""
    pipeline.unet.eval()
    pipeline.set_progress_bar_config(disable=True)
    settings = dataclasses.replace(SAMPLING, seed=seed, num_images_per_prompt=images_per_caption)
    return [image for _, images in render_batches(pipeline, captions, settings, progress) for image in images]


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_pairs(pipeline, scenes: list[Scene], samples_per_prompt: int, seed: int):
    """Pick-a-Pic-style pairs: ``samples_per_prompt`` base samples per prompt, consecutive ones paired and labelled
    by the benchmark's preference (``label_0`` 1, 0, or 0.5 for a tie)."""
    from datasets import Dataset, Features, Value

    images = sample(pipeline, [scene.caption for scene in scenes], seed, samples_per_prompt, progress="preference pairs")
    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": []}
    for index, scene in enumerate(scenes):
        own = images[index * samples_per_prompt:(index + 1) * samples_per_prompt]
        for first, second in zip(own[0::2], own[1::2]):
            rows["caption"].append(scene.caption)
            rows["jpg_0"].append(_png(first))
            rows["jpg_1"].append(_png(second))
            rows["label_0"].append(preference_label(first, second, scene.caption))
    features = Features({"caption": Value("string"), "jpg_0": Value("binary"), "jpg_1": Value("binary"),
                         "label_0": Value("float64")})
    return Dataset.from_dict(rows, features=features)


class CurveValidation(ValidationCallback):
    """Validation images and their mean preference at chosen steps (the reward curve's points, the last step
    included); keeps the last images, which are the run's evaluation images."""

    def __init__(self, pipeline, prompts: list[str], output_dir: str, at_steps: list[int], seed: int, images_per_prompt: int):
        super().__init__(pipeline, prompts, output_dir, every_n_steps=1, num_images_per_prompt=images_per_prompt,
                         seed=seed, guidance_scale=SAMPLING.guidance_scale,
                         num_inference_steps=SAMPLING.num_inference_steps, scorer="benchmark-preference",
                         batch_size=SAMPLING.batch_size)
        self.at_steps = set(at_steps)
        self.curve: list[tuple[int, float]] = []
        self.last_images: list = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.at_steps:
            images = self.validate(state.global_step)
            self.last_images = [image for row in images for image in row]
            scores = [preference_score(image, prompt) for prompt, row in zip(self.prompts, images) for image in row]
            self.curve.append((state.global_step, sum(scores) / len(scores)))


@dataclass
class RunResult:
    """What one (method, seed) run returns: its logs, reward curve, evaluation images and scores."""

    method: str
    seed: int
    log_history: list[dict]
    curve: list[tuple[int, float]]
    images: list
    scores: dict[str, list[float]]
    corrections: list[float] | None = field(default=None)  # C(τ) at the end, for strategies that keep one


def curve_steps(steps: int, points: int = 4) -> list[int]:
    """``points`` evenly spaced steps ending at ``steps`` (fewer when ``steps`` is small)."""
    return sorted({max(1, round(steps * k / points)) for k in range(1, points + 1)})


def train_method(pipeline, method: str, pairs, steps: int, seed: int, output_dir: str, eval_captions: list[str],
                 eval_seed: int, images_per_prompt: int = 1, batch_size: int = 8, learning_rate: float = 1e-3,
                 beta: float = 500.0) -> RunResult:
    """Train a LoRA on ``pipeline`` (in place) with ``method``; evaluate on ``eval_captions`` along the way."""
    from peft import LoraConfig
    from transformers import PrinterCallback

    from ..config import DDEConfig
    from ..trainer import DDEDiffusionTrainer

    args = DDEConfig(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size,
                     learning_rate=learning_rate, lr_scheduler_type="constant", beta=beta,
                     logging_steps=max(1, steps // 10), save_strategy="no", report_to="none", seed=seed, use_cpu=True,
                     disable_tqdm=True, **method_config(method))
    lora = LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    curve = CurveValidation(pipeline, eval_captions, f"{output_dir}/validation", curve_steps(steps), eval_seed,
                            images_per_prompt)
    trainer = DDEDiffusionTrainer(pipeline, args=args, train_dataset=pairs, peft_config=lora, callbacks=[curve])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    corrections = trainer.credit.corrections().tolist() if hasattr(trainer.credit, "corrections") else None
    captions = [caption for caption in eval_captions for _ in range(images_per_prompt)]
    return RunResult(method, seed, trainer.state.log_history, curve.curve, curve.last_images,
                     evaluate(curve.last_images, captions), corrections)


def evaluate(images: list, captions: list[str]) -> dict[str, list[float]]:
    """Per-image preference score and fidelity (the checker's share of caption attributes)."""
    return {"preference": [preference_score(image, caption) for image, caption in zip(images, captions)],
            "fidelity": [fidelity(image, caption) for image, caption in zip(images, captions)]}
