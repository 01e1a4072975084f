"""``DDEDiffusionTrainer``: Diffusion DPO with pluggable per-timestep credit assignment.

One training step, for a batch of ``B`` preference pairs:

1. encode winner and loser images with the frozen VAE and the prompt with the frozen text encoder;
2. draw one timestep per pair from the credit strategy and one noise tensor per pair, shared by winner
   and loser, and noise both latents;
3. run the policy UNet once on ``[winners; losers]`` and the reference once (LoRA: adapters disabled;
   full fine-tune: a frozen copy), converting outputs to epsilon predictions;
4. ask the strategy for each pair's margin ``z`` and take the loss (``sigmoid``: ``-log σ(β z)``);
5. let the strategy update its state (dde's EMA arrays).

Checkpoints hold the weights in diffusers format (LoRA file or ``unet/``), the optimizer, scheduler,
RNG states, the data position and the strategy's state, so a resumed run continues exactly.
"""

from __future__ import annotations

import os
from collections import defaultdict

import safetensors.torch
import torch
import torch.nn.functional as F
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .card import card_data_for, render_model_card
from .config import DDEConfig
from .credit import CreditAssigner, DenoisingOutputs, get_credit
from .credit.base import squared_error
from .data import AugmentedPairs, AugmentedStream, PreferenceCollator, input_ids_keys, prepare_preference_dataset
from .hub import has_lora, load_unet_weights, save_unet_weights
from .models import (
    adapters_disabled,
    cast_module,
    encode_prompts,
    is_sdxl,
    load_pipeline,
    load_reference_unet,
    load_vae,
    prepare_unet,
    text_encoders_of,
    tokenizers_of,
)
from .precompute import CachedPairCollator, cached_prompt_embeddings, precompute_preference_dataset, sample_latents
from .schedule import add_noise, epsilon_from_prediction

__all__ = ["DDEDiffusionTrainer"]

CREDIT_STATE_NAME = "credit_state.safetensors"


def _weight_dtype(args: DDEConfig) -> torch.dtype:
    """dtype of the frozen weights (VAE, text encoder, LoRA base, reference) under mixed precision."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def _check_8bit_optimizer(args: DDEConfig) -> None:
    """Fail before training, with a fix, when an 8-bit bitsandbytes optimizer cannot run on this device."""
    if "8bit" not in args.optim:
        return
    try:
        import bitsandbytes as bnb  # lazily: only 8-bit optimizers need it
    except ImportError as error:
        raise ImportError(f"optim={args.optim!r} needs bitsandbytes: pip install 'trl-dde[bnb]'.") from error
    try:  # one real 8-bit step (>= 4096 elements, the size bitsandbytes quantizes) on the training device
        probe = torch.zeros(4096, device=args.device, requires_grad=True)
        probe.grad = torch.ones_like(probe)
        bnb.optim.AdamW8bit([probe]).step()
    except Exception as error:  # bitsandbytes raises many types for unsupported devices
        raise RuntimeError(
            f"optim={args.optim!r}: bitsandbytes {bnb.__version__} cannot run an 8-bit optimizer on "
            f"device {args.device} ({type(error).__name__}: {error}). Use optim='adamw_torch' (or 'adamw_torch_fused')."
        ) from error


def _unwrap(model: torch.nn.Module) -> UNet2DConditionModel:
    """The UNet inside DDP/compile wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


class DDEDiffusionTrainer(Trainer):
    """Trainer for Direct Preference Optimization of Stable Diffusion pipelines with a credit strategy.

    Args:
        model: hub id or local folder of a diffusers pipeline, or a pipeline instance. The trained module
            (``trainer.model``) is its UNet; the VAE and text encoder are frozen.
        ref_model: reference UNet for full fine-tuning (instance or folder); default a frozen copy of the
            UNet. Not allowed with ``peft_config``: the LoRA reference is the UNet with adapters disabled.
        args: a ``DDEConfig``.
        train_dataset / eval_dataset: preference pairs (Pick-a-Pic v2 or ``prompt``/``chosen``/``rejected``).
        peft_config: a ``peft.LoraConfig`` to train LoRA adapters instead of the full UNet.
        credit: strategy name or ``CreditAssigner`` instance; overrides ``args.credit``.
        callbacks / optimizers: as in ``transformers.Trainer``.
    """

    def __init__(
        self,
        model: str | os.PathLike | DiffusionPipeline,
        ref_model: UNet2DConditionModel | str | os.PathLike | None = None,
        args: DDEConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | None = None,
        peft_config=None,
        credit: str | CreditAssigner | None = None,
        callbacks=None,
        optimizers=(None, None),
    ):
        if args is None:
            name = model if isinstance(model, str) else "pipeline"
            args = DDEConfig(output_dir=f"{os.path.basename(str(name).rstrip('/'))}-DDE")
        if not isinstance(args, DDEConfig):
            raise TypeError(f"args must be a DDEConfig, got {type(args).__name__}.")
        if peft_config is not None and ref_model is not None:
            raise ValueError(
                "ref_model and peft_config are mutually exclusive: with LoRA the reference is the base UNet "
                "(adapters disabled). Pass ref_model only for full fine-tuning."
            )
        if train_dataset is None:
            raise ValueError("DDEDiffusionTrainer needs a train_dataset of preference pairs.")
        _check_8bit_optimizer(args)
        set_seed(args.seed)  # LoRA initialisation follows args.seed

        weight_dtype = _weight_dtype(args)
        self.pipeline = load_pipeline(model, torch_dtype=args.torch_dtype and getattr(torch, args.torch_dtype),
                                      variant=args.model_variant, revision=args.model_revision)
        self.base_model_name = model if isinstance(model, (str, os.PathLike)) else getattr(
            self.pipeline, "name_or_path", None
        )
        self.is_sdxl = is_sdxl(self.pipeline)
        if args.vae is not None:
            self.pipeline.vae = load_vae(args.vae, revision=args.model_revision)
        # SDXL's own VAE overflows in fp16: keep it fp32 unless the user supplied an fp16-safe one
        vae_dtype = torch.float32 if self.is_sdxl and args.vae is None else weight_dtype
        for frozen, dtype in ((self.pipeline.vae, vae_dtype), *((e, weight_dtype) for e in text_encoders_of(self.pipeline))):
            frozen.requires_grad_(False)
            cast_module(frozen, dtype, args.device).eval()
        unet = prepare_unet(self.pipeline.unet, peft_config, weight_dtype)
        self.ref_unet = None if peft_config is not None else load_reference_unet(unet, ref_model, weight_dtype).to(args.device)
        if args.activation_checkpointing:
            unet.enable_gradient_checkpointing()
            # transformers' train() calls `model.activation_checkpointing_enable()`, which diffusers models
            # lack; the UNet's own checkpointing is already on, so make that call a no-op on this instance.
            unet.activation_checkpointing_enable = lambda **kwargs: None

        self.noise_scheduler = DDPMScheduler.from_config(self.pipeline.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(args.device, dtype=torch.float32)
        if credit is None or isinstance(credit, str):
            credit = get_credit(
                credit or args.credit,
                alphas_cumprod=self.noise_scheduler.alphas_cumprod,
                timestep_range=args.timestep_range,
                **args.credit_kwargs,
            )
        self.credit = credit.to(args.device)

        self.weight_dtype = weight_dtype
        train_dataset, eval_dataset, collator = self._prepare_data(train_dataset, eval_dataset, args)

        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._eval_generator: torch.Generator | None = None
        self._input_id_keys = input_ids_keys(len(tokenizers_of(self.pipeline)))
        super().__init__(
            model=unet,
            args=args,
            data_collator=collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        if self.accelerator.num_processes > 1:
            # transformers seeds every rank alike, so ranks would draw the same noise and timesteps; give each
            # its own stream (checkpointed per rank). Data order stays shared: accelerate syncs the sampler.
            set_seed(args.seed, device_specific=True)

    def _prepare_data(self, train_dataset, eval_dataset, args: DDEConfig):
        """Schema check and tie filtering, the collator, the optional precompute pass, augmentation seeds."""
        train_dataset, schema, self.ties_dropped = prepare_preference_dataset(train_dataset, args)
        if eval_dataset is not None:
            eval_dataset, _, _ = prepare_preference_dataset(eval_dataset, args)
        self.corrupt_skipped = 0
        resolution = args.resolution or self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor
        collator = PreferenceCollator(tokenizers_of(self.pipeline), schema, resolution, args.random_crop,
                                      args.random_flip, micro_conditioning=self.is_sdxl, drop_ties=args.drop_ties)
        self.precomputed = None
        if args.precompute_latents:
            if isinstance(train_dataset, IterableDataset) or isinstance(eval_dataset, IterableDataset):
                raise ValueError("precompute_latents needs a map-style dataset; a stream cannot be encoded ahead of "
                                 "time. Set precompute_latents=False, or load the data without streaming.")
            splits = [train_dataset] + ([eval_dataset] if eval_dataset is not None else [])
            self.precomputed = precompute_preference_dataset(
                splits, collator, self.pipeline, flip=args.precompute_flip, vae_mode=args.precompute_vae,
                dtype=getattr(torch, args.precompute_dtype), batch_size=args.precompute_batch_size,
                cache_dir=args.precompute_cache_dir,
            )
            train_dataset = self.precomputed.pairs[0]
            eval_dataset = self.precomputed.pairs[1] if eval_dataset is not None else None
            self.corrupt_skipped = self.precomputed.corrupt_skipped[0]
            collator = CachedPairCollator(self.precomputed.prompts, self.is_sdxl, args.random_flip, self.precomputed.has_flip)
            for encoder in (self.pipeline.vae, *text_encoders_of(self.pipeline)):
                encoder.to("cpu")  # training reads the cache: the encoders leave the device
        if isinstance(train_dataset, IterableDataset):
            # every rank reads its own shard of the stream; dispatching (rank 0 reads and broadcasts batches)
            # would ship decoded images between processes each step and needs equal-sized batches
            train_dataset = split_dataset_by_node(train_dataset, rank=args.process_index, world_size=args.world_size)
            args.accelerator_config.dispatch_batches = False
            train_dataset = AugmentedStream(train_dataset, args.seed)
        else:
            train_dataset = AugmentedPairs(train_dataset, args.seed)
        return train_dataset, eval_dataset, collator

    # ---- the step ----------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_images(self, pixel_values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        vae = self.pipeline.vae
        latents = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist.sample(generator=generator)
        return latents.float() * vae.config.scaling_factor

    def _predict_epsilon(self, unet, x_t, timesteps, conditioning: dict) -> torch.Tensor:
        prediction = unet(x_t, timesteps, **conditioning).sample
        return epsilon_from_prediction(prediction.float(), x_t, timesteps, self.alphas_cumprod, self.prediction_type)

    @torch.no_grad()
    def _reference_epsilon(self, model, x_t, timesteps, conditioning: dict) -> torch.Tensor:
        if self.ref_unet is None:
            with adapters_disabled(_unwrap(model)):
                return self._predict_epsilon(model, x_t, timesteps, conditioning)
        dtype = self.ref_unet.dtype  # the frozen copy may be stored in bf16/fp16
        cast = lambda tree: tree.to(dtype) if torch.is_tensor(tree) else {k: cast(v) for k, v in tree.items()}  # noqa: E731
        prediction = self.ref_unet(x_t.to(dtype), timesteps, **cast(conditioning)).sample
        return epsilon_from_prediction(prediction.float(), x_t, timesteps, self.alphas_cumprod, self.prediction_type)

    def _preference_loss(self, z: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
        """Per-pair loss from the margin; ``preference`` is 1 for decided pairs and 0.5 for kept ties."""
        beta = self.args.beta
        if self.args.loss_type == "sigmoid":
            return -(preference * F.logsigmoid(beta * z) + (1 - preference) * F.logsigmoid(-beta * z))
        sign = 2 * preference - 1  # 1 for decided pairs, 0 for ties
        if self.args.loss_type == "hinge":
            return torch.relu(1 - sign * beta * z)
        return (z - sign / (2 * beta)) ** 2  # ipo

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        pairs = inputs["preference"].shape[0]
        if self._count_skipped(inputs, mode, empty=pairs == 0):
            # a batch with no decodable pair on some process: every process skips the step together, so all
            # of them still meet in the same collectives (gradient all-reduce, dde update, metric gathers)
            loss = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            return (loss, {}) if return_outputs else loss
        # evaluation draws from its own seeded generator: comparable across evaluations, training RNG untouched
        generator = None if model.training else self._eval_generator
        if self.precomputed is not None:
            posteriors = torch.cat([inputs["posterior_w"], inputs["posterior_l"]]).float()
            latents = sample_latents(posteriors, self.precomputed.vae_mode, generator) * self.pipeline.vae.config.scaling_factor
            prompts = cached_prompt_embeddings(inputs, self.weight_dtype)
        else:
            latents = self._encode_images(torch.cat([inputs["pixel_values_w"], inputs["pixel_values_l"]]), generator)
            prompts = encode_prompts(self.pipeline, tuple(inputs[key] for key in self._input_id_keys))
        x0_w, x0_l = latents.chunk(2)
        noise = torch.randn(x0_w.shape, generator=generator, device=x0_w.device, dtype=x0_w.dtype)
        timesteps = self.credit.sample_timesteps(pairs, device=latents.device, generator=generator)
        if self.args.loss_type == "sft":
            loss = self._sft_loss(model, x0_w, noise, timesteps, prompts.unet_kwargs(1, inputs.get("time_ids_w")), mode)
        else:
            time_ids = torch.cat([inputs["time_ids_w"], inputs["time_ids_l"]]) if self.is_sdxl else None
            conditioning = prompts.unet_kwargs(2, time_ids)  # winners then losers
            loss = self._dpo_loss(model, x0_w, x0_l, noise, timesteps, conditioning, inputs["preference"], mode)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The loss became {loss.item()} at step {self.state.global_step + 1}. Training stopped before the "
                "update so the last checkpoint is intact. Usual fixes: a lower learning_rate, bf16 instead of fp16, "
                "max_grad_norm=1.0, or a smaller beta; then resume from the last checkpoint."
            )
        return (loss, {}) if return_outputs else loss

    def _sft_loss(self, model, x0_w, noise, timesteps, conditioning, mode):
        """The paper's SFT baseline: the plain denoising loss on the preferred images only."""
        xt_w = add_noise(x0_w, noise, timesteps, self.alphas_cumprod)
        eps_w = self._predict_epsilon(model, xt_w, timesteps, conditioning)
        mse = squared_error(eps_w, noise)
        self._log_metrics(mode, {"mse/policy_chosen": mse.detach(), "timestep": timesteps.float()})
        return mse.mean()

    def _dpo_loss(self, model, x0_w, x0_l, noise, timesteps, conditioning, preference, mode):
        both = lambda t: torch.cat([t, t])  # noqa: E731 - winners and losers share noise, τ and prompt
        x_t = add_noise(torch.cat([x0_w, x0_l]), both(noise), both(timesteps), self.alphas_cumprod)
        eps = self._predict_epsilon(model, x_t, both(timesteps), conditioning)
        eps_ref = self._reference_epsilon(model, x_t, both(timesteps), conditioning)
        xt_w, xt_l = x_t.chunk(2)
        eps_w, eps_l = eps.chunk(2)
        eps_ref_w, eps_ref_l = eps_ref.chunk(2)
        outputs = DenoisingOutputs(x0_w, x0_l, noise, timesteps, xt_w, xt_l, eps_w, eps_l, eps_ref_w, eps_ref_l)
        z = self.credit.margin(outputs)
        loss = self._preference_loss(z, preference.to(z.dtype)).mean()
        if model.training:
            self.credit.update(outputs)
        z = z.detach()
        self._log_metrics(
            mode,
            {
                "implicit_acc": (z > 0).float() + 0.5 * (z == 0).float(),
                "margin": z,
                "beta_margin": self.args.beta * z,
                "mse/policy_chosen": squared_error(eps_w.detach(), noise),
                "mse/policy_rejected": squared_error(eps_l.detach(), noise),
                "mse/ref_chosen": squared_error(eps_ref_w, noise),
                "mse/ref_rejected": squared_error(eps_ref_l, noise),
                "timestep": timesteps.float(),
            },
        )
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation computes the same loss (no labels, no logits); ``eval_*`` metrics are logged."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, *args, **kwargs):
        self._eval_generator = torch.Generator(device=self.args.device).manual_seed(self.args.seed)
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._eval_generator = None

    # ---- metrics -----------------------------------------------------------------------------------

    def _log_metrics(self, mode: str, values: dict[str, torch.Tensor]) -> None:
        """Buffer the per-pair metrics of a step, averaged over every process's pairs, until the next log.

        One gather for all of them, and no host synchronisation on the step's path: the averages stay
        on the device until ``_drain_metrics`` reads them.
        """
        stacked = torch.stack([value.detach().float() for value in values.values()], dim=1)  # [B, K]
        means = self.accelerator.gather_for_metrics(stacked).mean(dim=0)
        for key, mean in zip(values, means):
            self._metrics[mode][key].append(mean)

    def _count_skipped(self, inputs: dict, mode: str, empty: bool) -> bool:
        """Add the batch's corrupt and (streamed) tied rows, over all processes, to the training counters;
        return whether any process has an empty batch (one collective for both)."""
        counts = torch.stack([inputs["num_corrupt"], inputs["num_ties"], torch.tensor(int(empty))]).to(self.accelerator.device)
        corrupt, ties, empty_batches = self.accelerator.gather(counts.reshape(1, 3)).sum(dim=0).tolist()
        if mode == "train":
            self.corrupt_skipped += corrupt
            self.ties_dropped += ties
        return empty_batches > 0

    def _drain_metrics(self, mode: str) -> dict[str, float]:
        """Averages of the metrics buffered since the last log, then an empty buffer; plus the credit
        strategy's own metrics (a snapshot of its state now)."""
        metrics = {key: torch.stack(values).mean().item() for key, values in self._metrics[mode].items() if values}
        if metrics and self.args.loss_type != "sft":
            metrics.update({f"credit/{key}": value for key, value in self.credit.metrics().items()})
        self._metrics[mode].clear()
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:  # evaluation metrics travel with evaluate()'s own output instead
            logs = {**logs, **self._drain_metrics("train"),
                    "data/ties_dropped": self.ties_dropped, "data/corrupt_skipped": self.corrupt_skipped}
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in self._drain_metrics("eval").items()})
        return output

    # ---- saving and resuming -----------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Diffusers-format weights (LoRA file or ``unet/``) instead of transformers' ``model.safetensors``."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        save_unet_weights(_unwrap(self.model), output_dir, type(self.pipeline), state_dict)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        if os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir):  # the final model, not a checkpoint
            self.create_model_card()

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            state = {key: value.detach().cpu().contiguous() for key, value in self.credit.state_dict().items()}
            safetensors.torch.save_file(state, os.path.join(folder, CREDIT_STATE_NAME), metadata={"credit": self.credit.name})

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``transformers.Trainer.train``, restoring the credit strategy's state too when resuming."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in {self.args.output_dir} to resume from.")
        if resume_from_checkpoint:
            # here rather than in _load_from_checkpoint, which transformers skips under DeepSpeed and FSDP
            self._load_credit_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def _load_credit_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, CREDIT_STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{checkpoint} has no {CREDIT_STATE_NAME}; it was not written by trl-dde.")
        with safetensors.safe_open(path, framework="pt") as handle:
            saved_credit = handle.metadata().get("credit")
        if saved_credit != self.credit.name:
            raise ValueError(
                f"{checkpoint} was trained with credit={saved_credit!r}, but this run uses "
                f"credit={self.credit.name!r}. Resume with the same strategy."
            )
        self.credit.load_state_dict(safetensors.torch.load_file(path, device=str(self.args.device)))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_unet_weights(_unwrap(model or self.model), resume_from_checkpoint)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          base_model: str | None = None, **kwargs) -> None:
        """Write ``README.md`` (a diffusers model card) into ``output_dir``; ``push_to_hub`` uploads it."""
        if not self.is_world_process_zero():
            return
        data = card_data_for(self, model_name=model_name, dataset_name=dataset_name, base_model=base_model)
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(render_model_card(data))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    @property
    def is_lora(self) -> bool:
        return has_lora(_unwrap(self.model))
