"""``DDEConfig``: training arguments of ``DDEDiffusionTrainer`` (the TRL ``XConfig`` pattern)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

__all__ = ["DDEConfig"]

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "sft")
DEFAULT_LEARNING_RATE = 1e-5


@dataclass
class DDEConfig(TrainingArguments):
    r"""
    Configuration of [`DDEDiffusionTrainer`]: every [`~transformers.TrainingArguments`] field plus the ones below.

    Defaults that differ from `TrainingArguments`: `learning_rate=1e-5`, `logging_steps=10`,
    `remove_unused_columns=False` (the image columns are not arguments of the UNet's forward) and
    `label_names=[]`. `gradient_checkpointing=True` switches on diffusers' UNet checkpointing.
    `resume_from_checkpoint="true"` (the transformers idiom; also `True` from YAML) means the latest
    checkpoint in `output_dir`.

    Everything that can be checked without loading a model is checked when the config is built: the strategy
    exists and accepts `credit_kwargs`, `timestep_range`, `loss_type`, `beta`, the flow-matching time sampling, the learning rate, the
    `report_to` integrations, the precompute options. Errors name the field, the value and the fix.

    Parameters:
        > Preference optimisation

        credit (`str`, defaults to `"dde"`): credit-assignment strategy, a name from `trl_dde.available_credits()`
            or your own `CreditAssigner` subclass as `"package.module:ClassName"`.
        credit_kwargs (`dict` or JSON `str`, *optional*): options of the strategy, e.g. `{"gamma": 0.9}` for
            `discounted`; `trl_dde.credit_options(credit)` lists what a strategy accepts.
        beta (`float`, defaults to `5000`): inverse temperature of the preference loss (Diffusion-DPO units).
        loss_type (`str`, defaults to `"sigmoid"`): `sigmoid`, `hinge`, `ipo` or `sft` (denoising loss on winners).
        timestep_range (`list[int]`, *optional*): train only on timesteps in `[lo, hi)`.
        learning_rate_per_pair (`float`, *optional*): linear learning-rate scaling, Diffusion-DPO's `--scale_lr`:
            `learning_rate` becomes this value times the total batch in pairs (`per_device_train_batch_size ×
            gradient_accumulation_steps × number of processes`), e.g. `1e-8 × 2048 = 2.048e-5`.

        > Flow-matching time sampling (SD3; refused for DDPM models)

        weighting_scheme (`str`, *optional*): diffusers' SD3 `weighting_scheme`: `none`/`uniform` (uniform times),
            `logit_normal` (with `logit_mean`, `logit_std`), `mode` (with `mode_scale`), or the loss weightings
            `sigma_sqrt` / `cosmap` (uniform times). Default: `none`.
        logit_mean / logit_std / mode_scale (`float`, *optional*): defaults 0.0, 1.0 and 1.29 (SD3's).

        > Data

        resolution (`int`, *optional*): training image size; defaults to the UNet's native size.
        random_crop / random_flip (`bool`): paired augmentation, identical for winner and loser.
        drop_ties (`bool`, defaults to `True`): drop Pick-a-Pic pairs with `label_0 == 0.5`.
        precompute_latents (`bool`): encode images and prompts once before training (see `docs/data.md`), with
            `precompute_flip`, `precompute_vae` (`sample`/`mean`), `precompute_dtype`, `precompute_batch_size`,
            `precompute_cache_dir`.
        pair_seeded_draws (`bool`): each pair's timestep, noise and posterior sample from generators seeded by
            `(seed, epoch, pair index)` (`trl_dde/draws.py`); map-style datasets only.
        precompute_ref (`bool`): the reference's per-pair terms computed for every epoch before training
            (`docs/architecture.md`, "Training without the reference"), with `precompute_ref_batch_size` and
            `precompute_ref_cache_dir`; implies `pair_seeded_draws`.
        caption_column, image_0_column, image_1_column, label_0_column: Pick-a-Pic v2 column names.
        prompt_column, chosen_column, rejected_column: paired-schema column names.
        images_column, ranks_column, ranked_pairs: the ranked layout (one prompt, ranked images → pairs:
            `adjacent`, `all` or `best_worst`).
        column_map (`dict` or JSON `str`, *optional*): the dataset's column for each role (`prompt`, `chosen`,
            `rejected`, `caption`, `jpg_0`, `jpg_1`, `label_0`, `images`, `ranks`); sets the `*_column` options.
        image_root (`str`, *optional*): local folder for string image cells (relative paths, mirrored URLs).

        > Model

        vae (`str`, *optional*): replacement VAE, e.g. an fp16-safe SDXL VAE (SDXL's own VAE stays fp32).
        torch_dtype / model_revision / model_variant: passed to `from_pretrained` when `model` is a hub id or folder.

        > Validation during training

        validation_prompts (`list[str]`, *optional*): generate images for these prompts every `validation_steps`
            steps (see `trl_dde.evaluation.ValidationCallback`), with `validation_num_images`, `validation_seed`,
            `validation_guidance_scale`, `validation_num_inference_steps`, and optionally log the mean of
            `validation_scorer`.
    """

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "credit_kwargs", "column_map"]

    # Overridden TrainingArguments defaults
    learning_rate: float = field(
        default=DEFAULT_LEARNING_RATE, metadata={"help": "Initial AdamW learning rate (LoRA-scale default)."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: image columns are consumed by the collator, not the UNet."}
    )
    label_names: list[str] | None = field(default_factory=list, metadata={"help": "Unused; kept empty."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Every trained weight is used in every step, so DDP's extra search for unused parameters "
                          "(transformers' default for models that are not PreTrainedModels) is off."},
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "Off: transformers' filter reads every step's loss on the host (a synchronisation per step). "
                          "trl-dde watches for non-finite values on the device and stops with the cause instead."},
    )

    # Preference optimisation
    credit: str = field(
        default="dde",
        metadata={"help": "Credit-assignment strategy: uniform, discounted, dde-single, dde-step, dde, another "
                          "registered name, or your own CreditAssigner subclass as package.module:ClassName."},
    )
    credit_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Options of the credit strategy as a dict or JSON string, e.g. "
            "'{\"gamma\": 0.9, \"num_steps\": 50}' (discounted) or '{\"correction_reduction\": \"mean\"}' (dde). "
            "Options the strategy does not accept are refused."
        },
    )
    beta: float = field(
        default=5000.0,
        metadata={"help": "Inverse temperature of the preference loss, in Diffusion-DPO units (5000 for SD1.5/SDXL)."},
    )
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": "Preference loss: sigmoid (DPO), hinge, ipo, or sft (plain denoising loss on winners).",
                  "choices": list(LOSS_TYPES)},
    )
    timestep_range: list[int] | None = field(
        default=None,
        metadata={"help": "Train only on timesteps in [lo, hi), e.g. 200 700 (paper Fig. 3). Any strategy.", "nargs": 2},
    )
    learning_rate_per_pair: float | None = field(
        default=None,
        metadata={"help": "Linear learning-rate scaling (Diffusion-DPO's --scale_lr): learning_rate = this x total "
                          "batch in pairs (per_device_train_batch_size x gradient_accumulation_steps x processes), "
                          "e.g. 1e-8 x 2048 = 2.048e-5. Leave learning_rate unset when using it."},
    )

    # Flow-matching time sampling
    weighting_scheme: str | None = field(
        default=None,
        metadata={"help": "Flow-matching (SD3) time sampling and loss weighting, as diffusers' SD3 training: none, "
                          "uniform, logit_normal, mode, sigma_sqrt or cosmap. Default: none. Not for DDPM models."},
    )
    logit_mean: float | None = field(default=None, metadata={"help": "Mean of logit_normal time sampling (0.0)."})
    logit_std: float | None = field(default=None, metadata={"help": "Std of logit_normal time sampling (1.0)."})
    mode_scale: float | None = field(default=None, metadata={"help": "Scale of mode time sampling (1.29)."})

    # Data
    resolution: int | None = field(
        default=None, metadata={"help": "Training resolution in pixels; default: the UNet's native size (512 for SD1.5)."}
    )
    random_crop: bool = field(default=False, metadata={"help": "Random instead of center crop (same for both images)."})
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flip (same for both images)."})
    drop_ties: bool = field(
        default=True,
        metadata={"help": "Drop tied Pick-a-Pic pairs (label_0 == 0.5). If False they train with a soft label of 0.5."},
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Processes for the one-off dataset check (every image decoded once)."}
    )
    corrupt_warning_threshold: float = field(
        default=0.1,
        metadata={"help": "Warn loudly, naming the rows, when more than this fraction of the rows cannot be trained "
                          "on (undecodable images, invalid labels). A dataset with no usable row is always an error."},
    )
    precompute_latents: bool = field(
        default=False,
        metadata={"help": "Encode all images (VAE) and prompts (text encoders) once before training, cached on disk "
                          "by datasets; train without the VAE and text encoders on the device. Centre crops only."},
    )
    precompute_flip: bool = field(
        default=False, metadata={"help": "Also cache the mirrored images so random_flip works with precompute_latents."}
    )
    precompute_vae: str = field(
        default="sample",
        metadata={"help": "Cache the VAE posterior (mean and log-variance; a latent is sampled each step, as on the "
                          "fly) or only its mean (half the disk).", "choices": ["sample", "mean"]},
    )
    precompute_dtype: str = field(
        default="float16", metadata={"help": "Storage dtype of the cache.", "choices": ["float16", "float32"]}
    )
    precompute_batch_size: int = field(default=16, metadata={"help": "Batch size of the encoding pass."})
    precompute_cache_dir: str | None = field(
        default=None, metadata={"help": "Where cache files go (default: the datasets cache, subfolder trl-dde)."}
    )
    pair_seeded_draws: bool = field(
        default=False,
        metadata={"help": "Draw each pair's timestep, noise and VAE posterior sample from its own generator seeded by "
                          "(seed, epoch, pair index): independent of batch composition, shuffling, processes and "
                          "resume. Map-style datasets only; implied by precompute_ref."},
    )
    precompute_ref: bool = field(
        default=False,
        metadata={"help": "Compute the reference's per-pair terms for every epoch in an inference-only pass before "
                          "training and train without a reference forward (full fine-tuning: no reference copy in "
                          "memory). The losses equal the live reference's with pair_seeded_draws. Needs a strategy "
                          "with reference_inputs='scalars' (every built-in) and no eval_dataset."},
    )
    precompute_ref_batch_size: int | None = field(
        default=None,
        metadata={"help": "Pairs per batch of the reference pass (default: per_device_train_batch_size, which gives "
                          "the training step's rounding; a larger batch is faster and equal up to rounding)."},
    )
    precompute_ref_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where the reference cache goes (default: the datasets cache, subfolder trl-dde/reference)."},
    )
    caption_column: str = field(default="caption", metadata={"help": "Pick-a-Pic schema: prompt column."})
    image_0_column: str = field(default="jpg_0", metadata={"help": "Pick-a-Pic schema: first image column."})
    image_1_column: str = field(default="jpg_1", metadata={"help": "Pick-a-Pic schema: second image column."})
    label_0_column: str = field(
        default="label_0", metadata={"help": "Pick-a-Pic schema: 1 if the first image is preferred, 0 if the second, 0.5 tie."}
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Paired schema: prompt column."})
    chosen_column: str = field(default="chosen", metadata={"help": "Paired schema: preferred image column."})
    rejected_column: str = field(default="rejected", metadata={"help": "Paired schema: rejected image column."})
    images_column: str = field(default="images", metadata={"help": "Ranked layout: column of a list of images."})
    ranks_column: str = field(default="ranks", metadata={"help": "Ranked layout: column of their ranks (1 = best)."})
    ranked_pairs: str = field(
        default="adjacent",
        metadata={"help": "Ranked layout: which pairs a list gives (adjacent ranks, all, or best vs worst).",
                  "choices": ["adjacent", "all", "best_worst"]},
    )
    column_map: dict[str, str] | str | None = field(
        default=None,
        metadata={"help": "Dataset column of each role, a JSON object, e.g. '{\"prompt\": \"caption\", \"chosen\": "
                          "\"image_a\", \"rejected\": \"image_b\"}'. Roles: prompt, chosen, rejected, caption, jpg_0, "
                          "jpg_1, label_0, images, ranks. Sets the matching *_column options."},
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Local folder that string image cells are resolved in: relative paths under it, URLs "
                          "https://host/a.jpg at image_root/host/a.jpg (a local mirror; nothing is downloaded)."},
    )

    # Model
    vae: str | None = field(
        default=None,
        metadata={"help": "Replacement VAE (hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix. SDXL's own VAE "
                          "is kept in fp32; a VAE given here runs in the mixed-precision dtype."},
    )
    torch_dtype: str | None = field(
        default=None,
        metadata={"help": "dtype the pipeline's weights are loaded in (default: as stored). Trainable weights are "
                          "fp32 whatever this says.", "choices": ["float32", "float16", "bfloat16"]},
    )
    model_revision: str | None = field(default=None, metadata={"help": "Revision of the model to load."})
    model_variant: str | None = field(default=None, metadata={"help": "Weights variant to load, e.g. fp16."})

    # Validation during training
    validation_prompts: list[str] | None = field(
        default=None,
        metadata={"help": "Prompts to generate validation images for during training (off when unset); images go to "
                          "output_dir/validation/ and to the trackers in report_to (tensorboard, wandb)."},
    )
    validation_steps: int = field(default=100, metadata={"help": "Generate validation images every X optimizer steps."})
    validation_num_images: int = field(default=1, metadata={"help": "Validation images per prompt."})
    validation_seed: int = field(default=0, metadata={"help": "Seed of the validation images (the same at every step)."})
    validation_guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance of validation images."})
    validation_num_inference_steps: int = field(default=25, metadata={"help": "Sampler steps of validation images."})
    validation_scorer: str | None = field(
        default=None,
        metadata={"help": "Optional reward whose mean over the validation images is logged as validation/<name>: "
                          "pickscore, hpsv2, clip, aesthetic, or 'module:function'."},
    )

    def __post_init__(self):
        # For a UNet "gradient checkpointing" is the native term; map it onto transformers' new name quietly.
        if self.gradient_checkpointing is not None and self.activation_checkpointing is None:
            self.activation_checkpointing, self.gradient_checkpointing = self.gradient_checkpointing, None
        self.credit_kwargs = self._parse_credit_kwargs(self.credit_kwargs)  # before transformers parses it bare
        from .data.adapters import apply_column_map, parse_column_map

        self.column_map = parse_column_map(self.column_map)
        apply_column_map(self)
        super().__post_init__()
        import torch

        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            self.dataloader_pin_memory = False  # nothing to pin for; torch would warn on every dataloader
        self._check_preference_options()
        self._check_data_options()
        self._check_run_options()
        self._check_validation_arguments()

    def _check_preference_options(self) -> None:
        """The strategy, its options, the timestep range, the loss: everything the trainer builds before training."""
        from .credit import check_credit_options, resolve_credit_class  # torch; transformers is loaded already

        try:
            resolve_credit_class(self.credit)
        except (ValueError, ImportError, AttributeError, TypeError) as error:
            raise ValueError(f"DDEConfig.credit={self.credit!r} cannot be used: {error}") from error
        try:
            check_credit_options(self.credit, self.credit_kwargs)
        except ValueError as error:
            raise ValueError(f"DDEConfig.credit_kwargs={self.credit_kwargs}: {error}") from error
        if self.timestep_range is not None:
            self.timestep_range = self._parse_timestep_range(self.timestep_range)
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"DDEConfig.loss_type must be one of {list(LOSS_TYPES)}, got {self.loss_type!r}.")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"DDEConfig.beta must be a positive number (5000 for SD1.5 and SDXL), got {self.beta!r}.")
        if self.process_options():
            from .processes.flow_matching import check_time_sampling

            options = {"weighting_scheme": "none", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29,
                       **self.process_options()}
            try:
                check_time_sampling(**options)
            except ValueError as error:
                raise ValueError(f"DDEConfig.{error}") from None

    def process_options(self) -> dict[str, Any]:
        """The noise-process options that were set (the flow-matching time sampling), passed to the family's
        ``process_from_scheduler_config``; a process that takes none refuses them."""
        names = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @staticmethod
    def _parse_credit_kwargs(value) -> dict[str, Any]:
        """A dict, from a dict, ``None`` or a JSON object string (the command line's form)."""
        example = "'{\"gamma\": 0.9}'"
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"DDEConfig.credit_kwargs={value!r} is not valid JSON ({error}). Write a JSON "
                                 f"object with double quotes, e.g. --credit_kwargs {example}.") from None
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"DDEConfig.credit_kwargs must be a dict or a JSON object such as {example}, got {value!r}.")
        return dict(value or {})

    @staticmethod
    def _parse_timestep_range(value) -> list[int]:
        """``[lo, hi)`` as two integers with ``0 <= lo < hi``; the upper bound against the schedule length is
        checked by the trainer, which reads the schedule."""
        fix = "Give two integers lo < hi, e.g. --timestep_range 200 700 (timesteps 200..699)."
        if isinstance(value, (str, bytes)) or len(value) != 2:
            raise ValueError(f"DDEConfig.timestep_range must be [lo, hi), got {value!r}. {fix}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in value):
            raise ValueError(f"DDEConfig.timestep_range={list(value)} must hold integer timesteps. {fix}")
        lo, hi = (int(v) for v in value)
        if not 0 <= lo < hi:
            raise ValueError(f"DDEConfig.timestep_range={[lo, hi]} must satisfy 0 <= lo < hi. {fix}")
        return [lo, hi]

    def _check_data_options(self) -> None:
        from .data.adapters import RANKED_PAIRS

        if self.ranked_pairs not in RANKED_PAIRS:
            raise ValueError(f"DDEConfig.ranked_pairs must be one of {RANKED_PAIRS}, got {self.ranked_pairs!r}.")
        if self.image_root is not None and not os.path.isdir(self.image_root):
            raise ValueError(f"DDEConfig.image_root={self.image_root!r} is not a folder: give the local folder that "
                             "relative image paths and mirrored URLs are read from.")
        if self.remove_unused_columns:
            raise ValueError("DDEConfig.remove_unused_columns=True would drop the image columns; it must stay False.")
        if self.precompute_latents and self.random_crop:
            raise ValueError("random_crop cannot be applied to precomputed latents (images are encoded once, centre-"
                             "cropped). Set random_crop=False, or precompute_latents=False.")
        if self.precompute_latents and self.random_flip and not self.precompute_flip:
            raise ValueError("random_flip with precompute_latents needs the mirrored images cached too: set "
                             "precompute_flip=True (twice the image cache), or random_flip=False.")
        self._check_precompute_ref()

    def _check_precompute_ref(self) -> None:
        """``precompute_ref``: a loss that uses the reference, a strategy that needs only its per-pair terms."""
        if not self.precompute_ref:
            return
        self.pair_seeded_draws = True  # the pass and the step must draw the same values
        if self.loss_type == "sft":
            raise ValueError("DDEConfig.precompute_ref=True with loss_type='sft': the SFT loss uses no reference. "
                             "Set precompute_ref=False.")
        if self.precompute_ref_batch_size is not None and not (
                isinstance(self.precompute_ref_batch_size, int) and self.precompute_ref_batch_size >= 1):
            raise ValueError(f"DDEConfig.precompute_ref_batch_size must be a positive integer, got "
                             f"{self.precompute_ref_batch_size!r}.")
        from .credit import resolve_credit_class

        check_reference_inputs(resolve_credit_class(self.credit))

    def _check_validation_arguments(self) -> None:
        """The ``validation_*`` fields: sizes, a known scorer, and a parallelism that keeps the UNet whole."""
        if not self.validation_prompts:
            return
        if any(not isinstance(prompt, str) or not prompt.strip() for prompt in self.validation_prompts):
            raise ValueError(f"validation_prompts must be non-empty strings, got {self.validation_prompts}.")
        for name in ("validation_steps", "validation_num_images", "validation_num_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.validation_guidance_scale < 0:
            raise ValueError(f"validation_guidance_scale must be >= 0, got {self.validation_guidance_scale}.")
        if self.validation_scorer is not None and ":" not in self.validation_scorer:
            from .evaluation.rewards import available_rewards

            if self.validation_scorer not in available_rewards():
                raise ValueError(f"validation_scorer {self.validation_scorer!r} is not a registered reward "
                                 f"({', '.join(available_rewards())}) nor a 'module:function' import string.")
        deepspeed_zero3 = getattr(self, "hf_deepspeed_config", None) is not None and self.hf_deepspeed_config.is_zero3()
        if self.fsdp or deepspeed_zero3:
            raise ValueError("validation_prompts cannot be used with FSDP or DeepSpeed ZeRO-3: the main process would "
                             "need the whole UNet to generate. Generate from a saved checkpoint with `trl-dde eval` instead.")

    def _check_run_options(self) -> None:
        """Learning-rate scaling, the resume idiom and the logging integrations."""
        if self.learning_rate_per_pair is not None:
            if not self.learning_rate_per_pair > 0:
                raise ValueError(f"DDEConfig.learning_rate_per_pair must be positive, got {self.learning_rate_per_pair}.")
            pairs = self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size
            scaled = self.learning_rate_per_pair * pairs
            if self.learning_rate not in (DEFAULT_LEARNING_RATE, scaled):
                raise ValueError(
                    f"DDEConfig: learning_rate={self.learning_rate} and learning_rate_per_pair="
                    f"{self.learning_rate_per_pair} both set the learning rate ({self.learning_rate_per_pair} x "
                    f"{pairs} pairs = {scaled:.4g}). Set only one of them."
                )
            self.learning_rate = scaled
        if isinstance(self.resume_from_checkpoint, str) and self.resume_from_checkpoint.lower() in ("true", "false"):
            # transformers' idiom: "true" is the latest checkpoint in output_dir
            self.resume_from_checkpoint = True if self.resume_from_checkpoint.lower() == "true" else None
        self._check_report_to()

    def _check_report_to(self) -> None:
        """Each ``report_to`` integration is known and installed: transformers would refuse it only after the
        pipeline has loaded."""
        from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

        installed = get_available_reporting_integrations()
        for name in self.report_to or []:
            if name not in INTEGRATION_TO_CALLBACK:
                raise ValueError(f"DDEConfig.report_to={name!r} is not a logging integration. Choose from "
                                 f"{sorted(INTEGRATION_TO_CALLBACK)}, or 'none'.")
            if name not in installed:
                raise ValueError(f"DDEConfig.report_to={name!r}: {name} is not installed. Install it or set "
                                 "report_to='none'.")


def check_reference_inputs(credit) -> None:
    """Refuse, for ``precompute_ref``, a strategy (class or instance) that reads the reference predictions."""
    if getattr(credit, "reference_inputs", "tensors") != "scalars":
        name = getattr(credit, "name", type(credit).__name__)
        raise ValueError(
            f"precompute_ref=True cannot train the credit strategy {name!r}: it declares reference_inputs="
            f"{getattr(credit, 'reference_inputs', None)!r}, i.e. its margin reads the reference's predictions, and the "
            "reference cache stores only per-pair terms. Implement reference_terms(outputs) returning the per-pair "
            "reference values (Tensor[B] each) the strategy needs, read them in margin/update with "
            "self.reference(outputs), and set reference_inputs = 'scalars' (docs/credit_strategies.md); or set "
            "precompute_ref=False."
        )
