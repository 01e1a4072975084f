"""Model cards for trained adapters and UNets, written offline (no Hub call).

The card is the ``README.md`` of the output folder: YAML metadata the Hub indexes (``library_name:
diffusers``, ``base_model``, ``pipeline_tag``, tags) and a body with the base model, the data, the credit
strategy and its options, key hyperparameters, the final metrics, a loading snippet and citations.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["ModelCardData", "card_data_for", "dataset_name_of", "render_model_card"]

CITATIONS = """```bibtex
@article{shi2024dde,
  title   = {Prioritize Denoising Steps on Diffusion Model Preference Alignment via Explicit Denoised Distribution Estimation},
  author  = {Shi, Dingyuan and Wang, Yong and Li, Hangyu and Chu, Xiangxiang},
  journal = {arXiv preprint arXiv:2411.14871},
  year    = {2024}
}

@inproceedings{wallace2024diffusiondpo,
  title     = {Diffusion Model Alignment Using Direct Preference Optimization},
  author    = {Wallace, Bram and Dang, Meihua and Rafailov, Rafael and Zhou, Linqi and Lou, Aaron and Purushwalkam, Senthil and Ermon, Stefano and Xiong, Caiming and Joty, Shafiq and Naik, Nikhil},
  booktitle = {CVPR},
  year      = {2024}
}
```"""

HYPERPARAMETERS = (
    "beta", "loss_type", "learning_rate", "lr_scheduler_type", "warmup_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_steps", "num_train_epochs", "optim", "bf16", "fp16", "resolution",
    "random_crop", "random_flip", "timestep_range", "drop_ties", "seed",
)


def is_hub_id(name: str | None) -> bool:
    """``owner/name`` that is not a local path: worth naming in Hub metadata."""
    return bool(name) and not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/"))


@dataclass
class ModelCardData:
    """What a model card says."""

    pipeline_class: str
    family: str  # the model family's card tag (``sd-1.5``, ``sdxl``, ``sd3``)
    process: str  # the noise process and its options (``NoiseProcess`` repr)
    denoiser: str  # the trained module: ``unet`` or ``transformer`` (the folder of a full fine-tune)
    denoiser_class: str  # its diffusers class, for the loading snippet
    credit: str
    credit_options: str  # the strategy's own description of its options (CreditAssigner.extra_repr)
    is_lora: bool
    hyperparameters: dict[str, Any]
    metrics: dict[str, float]
    model_name: str | None = None
    repo_id: str | None = None  # where the model is loaded from in the usage snippet
    base_model: str | None = None
    dataset_name: str | None = None
    lora: dict[str, Any] | None = field(default=None)


def _plain(value: Any) -> Any:
    """Enum members as their values (``linear``, not ``SchedulerType.LINEAR``), recursively in lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def dataset_name_of(dataset) -> str | None:
    """The name a ``datasets`` object knows itself by, looking through wrappers that hold it as ``.dataset``.

    ``info.dataset_name`` (else ``info.builder_name``), unless it is only the name of a generic file loader
    (``parquet``, ``csv``, ...), with a non-default ``config_name`` in brackets.
    """
    from datasets import packaged_modules

    for _ in range(4):  # e.g. the trainer's augmentation wrapper around the prepared Dataset
        if getattr(dataset, "info", None) is not None or getattr(dataset, "dataset", None) is None:
            break
        dataset = dataset.dataset
    info = getattr(dataset, "info", None)
    generic = set(getattr(packaged_modules, "_PACKAGED_DATASETS_MODULES", {}))
    name = next((n for n in (getattr(info, "dataset_name", None), getattr(info, "builder_name", None))
                 if n and n not in generic), None)
    config = getattr(info, "config_name", None)
    return f"{name} ({config})" if name and config and config != "default" else name


def card_data_for(trainer, model_name: str | None = None, dataset_name: str | None = None,
                  base_model: str | None = None) -> ModelCardData:
    """What the model card of a ``DDEDiffusionTrainer`` says, from its arguments, state and strategy.

    The title is ``model_name``, else the name part of ``hub_model_id``, else the output folder's name; the
    dataset is ``dataset_name``, else the name the training dataset knows itself by. Only the whitelisted
    ``HYPERPARAMETERS`` are read from the arguments, so no token can reach the card.
    """
    args = trainer.args
    hub_model_id = trainer.hub_model_id or args.hub_model_id
    logged = [entry for entry in trainer.state.log_history if "loss" in entry and "train_runtime" not in entry]
    final = {k: v for k, v in (logged[-1] if logged else {}).items()
             if isinstance(v, (int, float)) and k not in ("step", "epoch")}
    final.update({k: v for entry in trainer.state.log_history for k, v in entry.items() if k.startswith("eval_")})
    lora = None
    if trainer.is_lora:
        adapter = trainer.accelerator.unwrap_model(trainer.model).peft_config["default"].to_dict()
        lora = {k: _plain(v) for k, v in adapter.items() if k in ("r", "lora_alpha", "lora_dropout", "target_modules")}
    return ModelCardData(
        model_name=model_name or (hub_model_id.split("/")[-1] if hub_model_id else
                                  os.path.basename(os.path.abspath(args.output_dir))),
        repo_id=hub_model_id or args.output_dir,
        base_model=base_model or (str(trainer.base_model_name) if trainer.base_model_name else None),
        dataset_name=dataset_name or dataset_name_of(trainer.train_dataset),
        pipeline_class=type(trainer.pipeline).__name__,
        family=trainer.family.card_tag,
        process=repr(trainer.process).replace("\n", " "),
        denoiser=trainer.family.denoiser_name,
        denoiser_class=type(trainer.family.denoiser).__name__,
        credit=trainer.credit.name,
        credit_options=trainer.credit.extra_repr(),
        is_lora=trainer.is_lora,
        lora=lora,
        hyperparameters={key: _plain(getattr(args, key)) for key in HYPERPARAMETERS},
        metrics=final,
    )


def _usage(data: ModelCardData) -> str:
    pipeline_class = data.pipeline_class
    base = data.base_model or "<base model>"
    repo = data.repo_id or data.model_name or "<this repo>"
    if data.is_lora:
        return (f"```python\nimport torch\nfrom diffusers import {pipeline_class}\n\n"
                f"pipe = {pipeline_class}.from_pretrained(\"{base}\", torch_dtype=torch.float16).to(\"cuda\")\n"
                f"pipe.load_lora_weights(\"{repo}\")\nimage = pipe(\"a photo of an astronaut riding a horse\").images[0]\n```")
    name, cls = data.denoiser, data.denoiser_class
    return (f"```python\nimport torch\nfrom diffusers import {pipeline_class}, {cls}\n\n"
            f"{name} = {cls}.from_pretrained(\"{repo}\", subfolder=\"{name}\", torch_dtype=torch.float16)\n"
            f"pipe = {pipeline_class}.from_pretrained(\"{base}\", {name}={name}, torch_dtype=torch.float16).to(\"cuda\")\n"
            f"image = pipe(\"a photo of an astronaut riding a horse\").images[0]\n```")


def render_model_card(data: ModelCardData) -> str:
    """The README.md text of a trained model."""
    tags = ["trl", "trl-dde", "diffusers", "dpo", *(["lora"] if data.is_lora else []), data.credit, data.family,
            "text-to-image"]
    metadata = {"library_name": "diffusers", "pipeline_tag": "text-to-image", "tags": tags}
    if is_hub_id(data.base_model):
        metadata["base_model"] = data.base_model
    if is_hub_id(data.dataset_name):
        metadata["datasets"] = [data.dataset_name]
    kind = "LoRA adapter" if data.is_lora else f"full {data.denoiser} fine-tune"
    lines = [
        "---", yaml.safe_dump(metadata, sort_keys=False).strip(), "---", "",
        f"# {data.model_name or 'trl-dde model'}", "",
        f"A {kind} of `{data.base_model or 'a Stable Diffusion pipeline'}` aligned with human preference "
        f"pairs by Diffusion DPO, trained with trl-dde and the **`{data.credit}`** "
        "credit-assignment strategy.", "",
        "## Training", "",
        f"- Base model: `{data.base_model or 'unknown'}` ({data.pipeline_class}, model family `{data.family}`)",
        f"- Noise process: `{data.process}`",
        f"- Dataset: `{data.dataset_name or 'unknown'}`",
        f"- Credit strategy: `{data.credit}` (`{data.credit_options}`)",
    ]
    if data.lora:
        lines.append(f"- LoRA: `{json.dumps(data.lora, sort_keys=True, default=sorted)}`")
    lines += ["", "| hyperparameter | value |", "|---|---|"]
    lines += [f"| `{key}` | `{value}` |" for key, value in data.hyperparameters.items()]
    lines += ["", "## Final metrics", ""]
    if data.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| `{key}` | {value:.6g} |" for key, value in data.metrics.items()]
    else:
        lines.append("No training step was logged.")
    lines += ["", "## Usage", "", _usage(data), "", "## Citations", "", CITATIONS, ""]
    return "\n".join(lines)
