"""Validation images during training: a ``TrainerCallback`` that shows what the model draws now.

Every ``every_n_steps`` optimizer steps the main process generates images for fixed prompts and seeds
with the pipeline being trained (its ``unet`` or ``transformer`` is the module the trainer updates), writes them under
``output_dir/validation/step-NNNNNN/``, logs a grid to the configured trackers (TensorBoard, Weights &
Biases) and optionally a scorer's mean. Enabled from ``DDEConfig`` (``validation_prompts`` and the other
``validation_*`` fields); ``ValidationCallback.from_config(args, pipeline)`` builds it, or ``None``.

It leaves training exactly as it would have been: the torch RNG state is saved and restored around
generation (which draws its noise from its own seeded generators), gradients are off, the UNet returns
to train mode, and a VAE or text encoder that was parked elsewhere (``precompute_latents`` moves them
to the CPU) goes back there. Under several processes only the main one generates; the model is read,
not changed, so the other processes are not waited for. Not supported with FSDP or DeepSpeed ZeRO-3,
where no single process holds the whole UNet (``DDEConfig`` refuses that combination).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import TrainerCallback

from .generation import GenerationSettings, render_batches
from .reports import image_grid

__all__ = ["ValidationCallback"]


class ValidationCallback(TrainerCallback):
    """Generate, save and log validation images every ``every_n_steps`` steps.

    Args:
        pipeline: the diffusers pipeline being trained (``trainer.pipeline``).
        prompts: the validation prompts.
        output_dir: where images go (``step-NNNNNN/PPP_II.png`` and ``step-NNNNNN/grid.png``).
        every_n_steps: generate after every this many optimizer steps.
        num_images_per_prompt / seed / guidance_scale / num_inference_steps / resolution: the generation;
            image ``j`` of prompt ``i`` always uses ``image_seed(seed, i, j)``, so steps are comparable.
        scorer: optional reward (name, callable or ``"module:function"``, see ``load_reward``); its mean is
            logged as ``validation/<name>`` and appended to ``output_dir/scores.jsonl``.
        report_to: trackers to log to (``"tensorboard"``, ``"wandb"``); others are ignored.
        autocast_dtype: run generation under ``torch.autocast`` in this dtype (the trainer's mixed precision).
        batch_size: images per pipeline call (prompts are batched together).
    """

    def __init__(
        self,
        pipeline,
        prompts: Sequence[str],
        output_dir: str | os.PathLike,
        every_n_steps: int = 100,
        num_images_per_prompt: int = 1,
        seed: int = 0,
        guidance_scale: float = 7.5,
        num_inference_steps: int = 25,
        resolution: int | None = None,
        scorer=None,
        report_to: Sequence[str] = (),
        autocast_dtype: torch.dtype | None = None,
        batch_size: int = 8,
    ):
        if not prompts:
            raise ValueError("ValidationCallback needs at least one prompt.")
        if every_n_steps < 1 or num_images_per_prompt < 1 or num_inference_steps < 1 or batch_size < 1:
            raise ValueError("every_n_steps, num_images_per_prompt, num_inference_steps and batch_size must be at least 1.")
        self.pipeline = pipeline
        self.prompts = list(prompts)
        self.output_dir = Path(output_dir)
        self.every_n_steps = every_n_steps
        self.settings = GenerationSettings(num_images_per_prompt, seed, num_inference_steps, guidance_scale, resolution,
                                           batch_size)
        self.scorer_spec = scorer
        self.scorer = None
        self.report_to = set(report_to or ())
        self.autocast_dtype = autocast_dtype
        self._tensorboard = None

    @classmethod
    def from_config(cls, args, pipeline) -> "ValidationCallback | None":
        """The callback ``args`` (a ``DDEConfig``) asks for, or ``None`` when ``validation_prompts`` is unset."""
        if not args.validation_prompts:
            return None
        return cls(
            pipeline,
            prompts=args.validation_prompts,
            output_dir=os.path.join(args.output_dir, "validation"),
            every_n_steps=args.validation_steps,
            num_images_per_prompt=args.validation_num_images,
            seed=args.validation_seed,
            guidance_scale=args.validation_guidance_scale,
            num_inference_steps=args.validation_num_inference_steps,
            scorer=args.validation_scorer,
            report_to=args.report_to,
            autocast_dtype=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every_n_steps == 0:
            self.validate(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    @contextlib.contextmanager
    def _generation_mode(self):
        """Eval mode, no gradients, the encoders next to the denoiser (the family's UNet or transformer), torch RNG
        untouched; all undone on exit."""
        from ..families import family_class_for

        unet = getattr(self.pipeline, family_class_for(self.pipeline).denoiser_name)
        device = unet.device
        parked = {}
        for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(self.pipeline, name, None)
            if module is not None and module.device != device:
                parked[module] = module.device
                module.to(device)
        was_training = unet.training
        unet.eval()
        autocast = (torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), autocast:
                yield
        finally:
            unet.train(was_training)
            for module, where in parked.items():
                module.to(where)

    def generate(self) -> list[list]:
        """``images[prompt][image]`` for the validation prompts and seeds, with the current weights, ``batch_size``
        images per pipeline call (``render_batches``: batching does not change an image's noise)."""
        self.pipeline.set_progress_bar_config(disable=True)
        with self._generation_mode():
            flat = [image for _, images in render_batches(self.pipeline, self.prompts, self.settings) for image in images]
        count = self.settings.num_images_per_prompt
        return [flat[p * count:(p + 1) * count] for p in range(len(self.prompts))]

    def validate(self, step: int) -> list[list]:
        """Generate, write and log the images of ``step``; returns them as ``images[prompt][image]``."""
        images = self.generate()
        folder = self.output_dir / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for p, row in enumerate(images):
            for j, image in enumerate(row):
                image.save(folder / f"{p:03d}_{j:02d}.png")
        grid = image_grid(images, row_labels=[prompt[:32] for prompt in self.prompts])
        grid.save(folder / "grid.png")
        scores = self._score(images)
        self._log(step, grid, images, scores)
        return images

    def _score(self, images: list[list]) -> torch.Tensor | None:
        if self.scorer_spec is None:
            return None
        if self.scorer is None:
            from .rewards import load_reward

            self.scorer = load_reward(self.scorer_spec)
        flat = [image for row in images for image in row]
        prompts = [prompt for prompt, row in zip(self.prompts, images) for _ in row]
        return self.scorer(flat, prompts)

    def _log(self, step: int, grid, images: list[list], scores: torch.Tensor | None) -> None:
        metrics = {f"validation/{self.scorer.name}": float(scores.mean())} if scores is not None else {}
        if scores is not None:
            with open(self.output_dir / "scores.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "scorer": self.scorer.description, "mean": float(scores.mean()),
                                         "scores": scores.tolist()}) + "\n")
        if "tensorboard" in self.report_to:
            if self._tensorboard is None:
                from torch.utils.tensorboard import SummaryWriter

                log_dir = os.getenv("TENSORBOARD_LOGGING_DIR") or str(self.output_dir.parent / "runs" / "validation")
                self._tensorboard = SummaryWriter(log_dir=log_dir)
            self._tensorboard.add_image("validation/images", np.asarray(grid), step, dataformats="HWC")
            for key, value in metrics.items():
                self._tensorboard.add_scalar(key, value, step)
            self._tensorboard.flush()
        if "wandb" in self.report_to:
            import wandb

            if wandb.run is not None:
                captioned = [wandb.Image(image, caption=prompt) for prompt, row in zip(self.prompts, images) for image in row]
                wandb.log({"validation/images": captioned, **metrics, "train/global_step": step})
