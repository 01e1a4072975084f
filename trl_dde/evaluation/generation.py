"""Paired generation: the base model and tuned versions of it draw images from the same starting noise.

Image ``j`` of prompt ``i`` gets the seed ``image_seed(seed, i, j)`` in every model, on a CPU generator
(so the starting latents are identical on any device), with the same scheduler, number of steps,
guidance scale and resolution. The only difference between two images of a pair is the model, which is
what makes paired statistics (beat ratio, paired bootstrap) meaningful.

A tuned model is the base pipeline plus a LoRA adapter (``pytorch_lora_weights.safetensors`` as
``trainer.save_model()`` writes it, loaded with ``pipe.load_lora_weights``) or a replacement UNet (a
full fine-tune's ``unet/`` folder, a UNet folder or a hub id). Images are written as PNG under
``output_dir/images/<label>/`` next to ``generation.json`` (prompts, seeds, settings, models), so
``PairedImages.load(output_dir)`` scores them again without generating.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

__all__ = ["BASE_LABEL", "GenerationSettings", "ModelSpec", "PairedImages", "generate_paired", "image_seed",
           "model_variant", "parse_model_spec", "render", "render_batches"]

BASE_LABEL = "base"
MANIFEST = "generation.json"


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of image ``image_index`` of prompt ``prompt_index``: independent of how many prompts or
    images there are, so a longer run reproduces a shorter one's images."""
    return int(np.random.SeedSequence([seed, prompt_index, image_index]).generate_state(1)[0])


@dataclass(frozen=True)
class ModelSpec:
    """A model to compare with the base: the base pipeline plus ``adapter`` (LoRA) or with ``unet`` replaced."""

    label: str
    adapter: str | None = None
    unet: str | None = None

    def __post_init__(self):
        if (self.adapter is None) == (self.unet is None):
            raise ValueError(f"Model {self.label!r}: give exactly one of adapter (LoRA folder or hub id) or unet.")
        if not self.label or self.label == BASE_LABEL or "/" in self.label:
            raise ValueError(f"Model label {self.label!r} is not allowed: it names a folder, must not be empty, "
                             f"'{BASE_LABEL}' or contain '/'.")

    @property
    def source(self) -> dict[str, str]:
        return {"adapter": self.adapter} if self.adapter is not None else {"unet": self.unet}

    def check(self) -> None:
        """Refuse a local adapter/UNet folder that cannot hold what is asked (before anything is loaded)."""
        location = self.adapter or self.unet
        if not os.path.exists(location):
            if location.startswith((".", "/", "~")) or location.count("/") != 1:
                raise FileNotFoundError(f"Model {self.label!r}: {location} is neither a local folder nor a Hub id.")
            return  # a hub id: checked when downloaded
        if self.adapter is not None and os.path.isdir(location) and not any(
                name.endswith(".safetensors") for name in os.listdir(location)):
            raise FileNotFoundError(f"Model {self.label!r}: {location} holds no LoRA weights (*.safetensors, e.g. "
                                    "pytorch_lora_weights.safetensors written by trainer.save_model()).")
        if self.unet is not None and not any(os.path.isfile(os.path.join(location, *sub, "config.json"))
                                             for sub in ((), ("unet",), ("transformer",))):
            raise FileNotFoundError(f"Model {self.label!r}: {location} is not a denoiser folder (config.json) nor a "
                                    "full fine-tune's output (with unet/ or, for SD3/Flux, transformer/).")


def parse_model_spec(text: str, kind: str) -> ModelSpec:
    """``"label=location"`` or ``"location"`` (label: the folder's name) for ``kind`` ``"adapter"`` or ``"unet"``."""
    label, separator, location = text.partition("=")
    if not separator:
        location, label = text, os.path.basename(os.path.normpath(text))
    return ModelSpec(label=label, **{kind: location})


@dataclass(frozen=True)
class GenerationSettings:
    """What every model shares. ``resolution=None`` uses the pipeline's default size."""

    num_images_per_prompt: int = 1
    seed: int = 0
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    resolution: int | None = None
    batch_size: int = 4

    def __post_init__(self):
        for name in ("num_images_per_prompt", "num_inference_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 or less: no classifier-free guidance), got {self.guidance_scale}.")
        if self.resolution is not None and self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 (the VAE's downsampling), got {self.resolution}.")


class PairedImages:
    """Images of several models for the same ``(prompt, image index)`` items, stored in ``folder``."""

    def __init__(self, folder: str | os.PathLike, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest
        self.prompts: list[str] = manifest["prompts"]
        self.settings = GenerationSettings(**manifest["settings"])
        self.models: dict[str, dict] = manifest["models"]
        count = self.settings.num_images_per_prompt
        self.items = [(p, j, image_seed(self.settings.seed, p, j)) for p in range(len(self.prompts)) for j in range(count)]

    @property
    def labels(self) -> list[str]:
        return list(self.models)

    @property
    def item_prompts(self) -> list[str]:
        """The prompt of every item, in item order."""
        return [self.prompts[p] for p, _, _ in self.items]

    def path(self, label: str, prompt_index: int, image_index: int) -> Path:
        return self.folder / "images" / label / f"{prompt_index:05d}_{image_index:02d}.png"

    def paths(self, label: str) -> list[Path]:
        return [self.path(label, p, j) for p, j, _ in self.items]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "PairedImages":
        """Images generated earlier by ``generate_paired`` into ``folder``; every image must be there."""
        manifest_path = Path(folder) / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{folder} has no {MANIFEST}; it was not written by generate_paired / trl-dde eval.")
        images = cls(folder, json.loads(manifest_path.read_text(encoding="utf-8")))
        missing = [str(path) for label in images.labels for path in images.paths(label) if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images listed in {manifest_path} are missing, e.g. {missing[0]}.")
        return images


def render(pipeline, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings) -> list:
    """One pipeline call: image ``i`` from ``prompts[i]`` and the CPU generator seeded ``seeds[i]``, with the shared
    steps, guidance and resolution of ``settings``; PIL images."""
    import torch

    size = {"height": settings.resolution, "width": settings.resolution} if settings.resolution else {}
    return pipeline(
        prompt=list(prompts),
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        output_type="pil",
        **size,
    ).images


def render_batches(pipeline, prompts: Sequence[str], settings: GenerationSettings,
                   progress: str | None = None) -> Iterator[tuple[list[tuple[int, int]], list]]:
    """Every prompt's ``settings.num_images_per_prompt`` images, prompt-major, ``settings.batch_size`` per pipeline
    call: yields ``([(prompt index, image index), ...], images)`` per call, image ``j`` of prompt ``i`` drawn from
    ``image_seed(settings.seed, i, j)`` (so batching never changes an image's noise); a progress bar over the
    calls when ``progress`` names it."""
    from tqdm.auto import tqdm

    items = [(p, j) for p in range(len(prompts)) for j in range(settings.num_images_per_prompt)]
    starts = range(0, len(items), settings.batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        batch = items[start:start + settings.batch_size]
        yield batch, render(pipeline, [prompts[p] for p, _ in batch],
                            [image_seed(settings.seed, p, j) for p, j in batch], settings)


@contextlib.contextmanager
def model_variant(family, spec: ModelSpec | None) -> Iterator:
    """The base pipeline (``spec=None``), with a LoRA adapter loaded (removed again on exit), or with its denoiser
    (UNet) replaced by a full fine-tune."""
    pipeline = family.pipeline
    if spec is None:
        yield pipeline
    elif spec.adapter is not None:
        pipeline.load_lora_weights(spec.adapter, adapter_name=spec.label)
        try:
            yield pipeline
        finally:
            pipeline.unload_lora_weights()
    else:
        denoiser = family.load_denoiser(spec.unet).to(pipeline.device, family.denoiser.dtype)
        yield type(pipeline)(**{**pipeline.components, family.denoiser_name: denoiser})


def generate_paired(
    base,
    models: Sequence[ModelSpec],
    prompts: Sequence[str],
    output_dir: str | os.PathLike,
    settings: GenerationSettings = GenerationSettings(),
    device: str | None = None,
    torch_dtype=None,
    progress: bool = True,
) -> PairedImages:
    """Generate every prompt's images with the base model and each model of ``models``, write them as PNG.

    Args:
        base: hub id or folder of a diffusers Stable Diffusion (1.5 or XL) pipeline, or a pipeline instance.
        models: the tuned models (``ModelSpec``), compared side by side; may be empty.
        prompts: the prompts (``load_prompts``).
        output_dir: where ``generation.json`` and ``images/<label>/*.png`` go.
        settings: images per prompt, seed, steps, guidance, resolution, batch size (shared by all models).
        device / torch_dtype: where and in which dtype the pipeline runs (default: CUDA if available, as stored).
    """
    from .loading import default_device, quiet_libraries

    labels = [spec.label for spec in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"Model labels must be distinct; got {labels}. Name them with label=location.")
    for spec in models:
        spec.check()
    prompts = list(prompts)
    if not prompts:
        raise ValueError("generate_paired needs at least one prompt.")
    with quiet_libraries():
        from ..families import load_pipeline

        family = load_pipeline(base, torch_dtype=torch_dtype)
        pipeline = family.pipeline.to(device or default_device())
    pipeline.set_progress_bar_config(disable=True)
    base_name = base if isinstance(base, (str, os.PathLike)) else getattr(pipeline, "name_or_path", type(pipeline).__name__)
    manifest = {
        "base_model": str(base_name),
        "pipeline": type(pipeline).__name__,
        "scheduler": type(pipeline.scheduler).__name__,
        "prompts": prompts,
        "settings": asdict(settings),
        "models": {BASE_LABEL: {}, **{spec.label: spec.source for spec in models}},
    }
    images = PairedImages(output_dir, manifest)
    for spec in [None, *models]:
        label = BASE_LABEL if spec is None else spec.label
        images.path(label, 0, 0).parent.mkdir(parents=True, exist_ok=True)
        with quiet_libraries(), model_variant(family, spec) as variant:
            for batch, output in render_batches(variant, prompts, settings, f"generating {label}" if progress else None):
                for (p, j), image in zip(batch, output):
                    image.save(images.path(label, p, j))
    (Path(output_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return images
