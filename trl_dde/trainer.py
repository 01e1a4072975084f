"""``DDEDiffusionTrainer``: Diffusion DPO with pluggable per-timestep credit assignment.

One training step (``compute_loss``) is the paper's Algorithm 1 for a batch of ``B`` preference pairs:

1. the clean latents and conditioning of winners and losers (the batch source: encoded now, or read from
   the precomputed cache);
2. one timestep ``τ`` per pair, drawn by the credit strategy, and one noise ``ε`` per pair, shared by winner
   and loser, give ``x_τ`` (the noise process); from the process's random stream, or per pair from
   ``(seed, epoch, pair index)`` (``pair_seeded_draws``, ``draws.py``);
3. the policy runs once and the reference once on ``[winners; losers]`` (the model family); with
   ``precompute_ref`` the reference's per-pair terms are read from the reference cache instead
   (``reference_cache.py``, filled by an inference-only pass at the start of ``train``);
4. the strategy turns both predictions into each pair's margin ``z``, and ``z`` into the loss;
5. the strategy updates its state (dde's EMA arrays).

Everything a model family, a noise process, a data source or a strategy decides lives behind its seam
(``families/``, ``processes/``, ``data/``, ``credit/``); this module wires them to ``transformers.Trainer``:
construction in the order that fails fast, metrics, saving and exact resume.
"""

from __future__ import annotations

import dataclasses
import math
import os

import safetensors.torch
import torch
from accelerate.utils import set_seed
from datasets import Dataset, IterableDataset
from datasets import config as datasets_config
from datasets.distributed import split_dataset_by_node
from diffusers import DiffusionPipeline
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .card import card_data_for, render_model_card
from .checkpoints import (
    checkpoint_problem,
    last_complete_checkpoint,
    mark_complete,
    remove_incomplete_checkpoints,
    without_secrets,
)
from .config import DDEConfig, check_reference_inputs
from .credit import CreditAssigner, DenoisingOutputs, get_credit
from .credit.base import squared_error
from .data import (
    PAIR_EPOCH,
    PAIR_INDEX,
    CachedBatches,
    CachedPairCollator,
    OnTheFlyBatches,
    PreferenceCollator,
    PreferencePairs,
    PreferenceStream,
    precompute_preference_dataset,
    prepare_preference_dataset,
)
from .data.precompute import weights_hash
from .draws import PairDraws
from .evaluation.callback import ValidationCallback
from .families import cast_module, family_class_for, load_pipeline, scheduler_config_of, unwrap_model
from .losses import preference_loss
from .metrics import StepMetrics
from .preflight import check_8bit_optimizer, check_lora_targets, check_resolution
from .processes import NoiseProcess
from .reference import AdapterSwitch, build_reference, prepare_reference
from .reference_cache import ReferenceCache, build_reference_cache, cache_key, reference_scalars

__all__ = ["DDEDiffusionTrainer"]

CREDIT_STATE_NAME = "credit_state.safetensors"


def _weight_dtype(args: DDEConfig) -> torch.dtype:
    """dtype of the frozen weights (VAE, text encoders, LoRA base) under mixed precision."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def build_credit(credit: str | CreditAssigner | None, process: NoiseProcess, args: DDEConfig) -> CreditAssigner:
    """The strategy for ``process``: built from a name (``credit`` or ``args.credit``) and ``args.credit_kwargs``,
    or a given instance checked against the pipeline's process and ``args.timestep_range``."""
    if credit is None or isinstance(credit, str):
        return get_credit(credit or args.credit, process=process, timestep_range=args.timestep_range, **args.credit_kwargs)
    if not credit.process.same_as(process):
        raise ValueError(
            f"The credit strategy instance was built for another noise process ({credit.process}) than the pipeline's "
            f"({process}). Build it from the pipeline's schedule, or pass its name as credit='{credit.name}'."
        )
    if args.timestep_range is not None and tuple(args.timestep_range) != credit.timestep_range:
        raise ValueError(
            f"args.timestep_range={args.timestep_range} but the credit strategy instance samples {list(credit.timestep_range)}; "
            "set timestep_range on the instance and leave args.timestep_range unset."
        )
    if args.credit_kwargs:
        raise ValueError(f"credit_kwargs={args.credit_kwargs} cannot reach a strategy that is already built; pass the "
                         "options to its constructor.")
    return credit


class _CreditOptimizerStep(TrainerCallback):
    """Tells the strategy that an optimizer step happened (for state updated once per optimizer step)."""

    def __init__(self, credit: CreditAssigner):
        self.credit = credit

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.credit.on_optimizer_step()


class _PairEpoch(TrainerCallback):
    """Sets the training pairs' epoch (their crops, flips and per-pair draws follow it) as transformers starts each
    epoch. accelerate's ``set_epoch`` does not reach the dataset when a sampler below it takes the epoch (under
    several processes, and in the batch-skipping loader of a resumed epoch), which would replay epoch 0's draws."""

    def __init__(self, pairs: PreferencePairs):
        self.pairs = pairs

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch: the epochs done plus the part of this one a resumed run already trained (exact at epoch ends)
        self.pairs.set_epoch(math.floor(state.epoch))


class DDEDiffusionTrainer(Trainer):
    """Trainer for Direct Preference Optimization of diffusion pipelines with a credit strategy.

    Args:
        model: hub id or local folder of a diffusers pipeline of a supported family (``trl_dde.families``), or a
            pipeline instance. The trained module (``trainer.model``) is its denoiser (the UNet); the VAE and
            text encoders are frozen.
        ref_model: reference denoiser for full fine-tuning (instance, folder or hub id); default a frozen copy.
            Not allowed with ``peft_config``: the LoRA reference is the denoiser with adapters disabled. With
            ``args.precompute_ref`` no copy is made: the reference pass runs ``ref_model`` (loaded for the pass
            only) or the denoiser before training.
        args: a ``DDEConfig``.
        train_dataset / eval_dataset: preference pairs (Pick-a-Pic v2 or ``prompt``/``chosen``/``rejected``),
            map-style or streaming.
        peft_config: a ``peft.LoraConfig`` to train LoRA adapters instead of the full denoiser.
        credit: strategy name or ``CreditAssigner`` instance; overrides ``args.credit``.
        callbacks / optimizers: as in ``transformers.Trainer``.
    """

    def __init__(
        self,
        model: str | os.PathLike | DiffusionPipeline,
        ref_model: torch.nn.Module | str | os.PathLike | None = None,
        args: DDEConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | None = None,
        peft_config=None,
        credit: str | CreditAssigner | None = None,
        callbacks=None,
        optimizers=(None, None),
    ):
        if args is None:
            name = model if isinstance(model, (str, os.PathLike)) else "pipeline"
            args = DDEConfig(output_dir=f"{os.path.basename(str(name).rstrip('/'))}-DDE")
        if not isinstance(args, DDEConfig):
            raise TypeError(f"args must be a DDEConfig, got {type(args).__name__}.")
        if peft_config is not None and ref_model is not None:
            raise ValueError(
                "ref_model and peft_config are mutually exclusive: with LoRA the reference is the base model "
                "(adapters disabled). Pass ref_model only for full fine-tuning."
            )
        if train_dataset is None:
            raise ValueError("DDEDiffusionTrainer needs a train_dataset of preference pairs.")
        check_8bit_optimizer(args)

        # What is trained and how, from configuration files alone: a bad option fails before any weight loads.
        family_class = family_class_for(model, revision=args.model_revision)
        process = family_class.process_from_scheduler_config(scheduler_config_of(model, revision=args.model_revision),
                                                               **args.process_options())
        check_lora_targets(peft_config, family_class, model, revision=args.model_revision)
        check_resolution(args.resolution, family_class, model, revision=args.model_revision)
        self.credit = build_credit(credit, process, args)
        self.process = self.credit.process
        if args.precompute_ref:
            check_reference_inputs(self.credit)
            if eval_dataset is not None:
                raise ValueError("precompute_ref=True keeps no reference for evaluation (its terms are precomputed for "
                                 "the training pairs only). Pass no eval_dataset, or set precompute_ref=False.")
        if args.pair_seeded_draws and isinstance(train_dataset, IterableDataset):
            raise ValueError("pair_seeded_draws (implied by precompute_ref) seeds each pair by its index, which a "
                             "streamed dataset does not have. Load the data without streaming, or set both to False.")
        with args.main_process_first(desc="preparing the preference data"):
            train = prepare_preference_dataset(train_dataset, args, "train")
            evaluation = prepare_preference_dataset(eval_dataset, args, "eval") if eval_dataset is not None else None
        self.ties_dropped, self.corrupt_skipped = train.ties_dropped, train.corrupt_dropped

        set_seed(args.seed)  # LoRA initialisation follows args.seed
        self.weight_dtype = _weight_dtype(args)
        self.family = load_pipeline(model, torch_dtype=args.torch_dtype and getattr(torch, args.torch_dtype),
                                    variant=args.model_variant, revision=args.model_revision)
        self.pipeline = self.family.pipeline
        self.base_model_name = str(model) if isinstance(model, (str, os.PathLike)) else getattr(self.pipeline, "name_or_path", None)
        if args.vae is not None:
            from diffusers import AutoencoderKL

            subfolder = "vae" if os.path.isdir(os.path.join(args.vae, "vae")) else None
            self.pipeline.vae = AutoencoderKL.from_pretrained(args.vae, subfolder=subfolder, revision=args.model_revision)
        frozen = [(self.family.vae, self.family.vae_dtype(self.weight_dtype, replaced_vae=args.vae is not None))]
        frozen += [(encoder, self.weight_dtype) for encoder in self.family.text_encoders]
        for module, dtype in frozen:
            cast_module(module.requires_grad_(False), dtype, args.device).eval()
        denoiser = self.family.prepare_denoiser(peft_config, self.weight_dtype)
        self.reference_adapters = AdapterSwitch(denoiser) if peft_config is not None else None  # the LoRA reference
        # full fine-tuning: the frozen reference, or with precompute_ref none at all (the pass at the start of
        # train() runs the given ref_model, loaded then, or the denoiser before training)
        self.ref_model = None if args.precompute_ref else build_reference(self.family, ref_model, peft_config)
        self._pass_reference = ref_model if args.precompute_ref else None
        self.reference_cache: ReferenceCache | None = None
        self.draws = PairDraws(args.seed, self.credit, args.device) if args.pair_seeded_draws else None
        if args.activation_checkpointing:
            denoiser.enable_gradient_checkpointing()
            # transformers' train() calls `model.activation_checkpointing_enable()`, which diffusers models
            # lack; the denoiser's own checkpointing is already on, so make that call a no-op on this instance.
            denoiser.activation_checkpointing_enable = lambda **kwargs: None
        self.credit.to(args.device).prepare_sampling(args.device)

        train_dataset, eval_dataset, collator = self._prepare_batches(train, evaluation, args)
        self._eval_generator: torch.Generator | None = None
        super().__init__(model=denoiser, args=args, data_collator=collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, callbacks=callbacks, optimizers=optimizers)
        self.add_callback(_CreditOptimizerStep(self.credit))
        if isinstance(self.train_dataset, PreferencePairs):
            self.add_callback(_PairEpoch(self.train_dataset))
        validation = ValidationCallback.from_config(args, self.pipeline)
        if validation is not None:
            self.add_callback(validation)
        self.metrics = StepMetrics(self.accelerator.device)
        if self.ref_model is not None:
            self.ref_model = prepare_reference(self.ref_model, self.accelerator)
        if self.accelerator.num_processes > 1:
            # transformers seeds every rank alike, so ranks would draw the same noise and timesteps (or, with
            # per-pair draws, the same dropout masks); give each its own stream (checkpointed per rank). Data order
            # stays shared: accelerate syncs the sampler.
            set_seed(args.seed, device_specific=True)

    def _prepare_batches(self, train, evaluation, args: DDEConfig):
        """The datasets the dataloaders read, the collator and the batch source (optionally precomputing)."""
        collator = PreferenceCollator(self.family.tokenize, train.schema, args.resolution or self.family.default_resolution,
                                      args.random_crop, args.random_flip)
        self.batches = OnTheFlyBatches(self.family)
        self.precomputed = None
        train_dataset, eval_dataset = train.dataset, evaluation.dataset if evaluation is not None else None
        if args.precompute_latents:
            if isinstance(train_dataset, IterableDataset) or isinstance(eval_dataset, IterableDataset):
                raise ValueError("precompute_latents needs a map-style dataset; a stream cannot be encoded ahead of "
                                 "time. Set precompute_latents=False, or load the data without streaming.")
            splits = [train_dataset] + ([eval_dataset] if eval_dataset is not None else [])
            with args.main_process_first(desc="precomputing latents"):
                self.precomputed = precompute_preference_dataset(
                    splits, collator, self.family, flip=args.precompute_flip, vae_mode=args.precompute_vae,
                    dtype=getattr(torch, args.precompute_dtype), batch_size=args.precompute_batch_size,
                    cache_dir=args.precompute_cache_dir,
                )
            train_dataset = self.precomputed.pairs[0]
            eval_dataset = self.precomputed.pairs[1] if eval_dataset is not None else None
            collator = CachedPairCollator(self.precomputed.prompts, args.random_flip, self.precomputed.has_flip)
            self.batches = CachedBatches(self.family, self.precomputed.vae_mode, self.weight_dtype)
            for encoder in (self.family.vae, *self.family.text_encoders):
                encoder.to("cpu")  # training reads the cache: the encoders leave the device
        if isinstance(train_dataset, IterableDataset):
            # every rank reads and filters its own shard of the stream (not every row, as accelerate's sharding of a
            # torch IterableDataset would); dispatching (rank 0 reads and broadcasts batches) would ship decoded
            # images between processes each step
            train_dataset = split_dataset_by_node(train_dataset, rank=args.process_index, world_size=args.world_size)
            args.accelerator_config = dataclasses.replace(args.accelerator_config, dispatch_batches=False)  # a copy
            train_dataset = PreferenceStream(train_dataset, train.schema, args.seed, args.drop_ties,
                                             args.corrupt_warning_threshold)
        else:
            train_dataset = PreferencePairs(train_dataset, args.seed)
        return train_dataset, eval_dataset, collator

    def get_train_dataloader(self):
        """Under several processes a stream is already split (each process reads and filters its own shard, see
        ``_prepare_batches``); accelerate would split it again, so its loader is prepared as one process's."""
        if not isinstance(self.train_dataset, PreferenceStream) or self.accelerator.num_processes == 1:
            return super().get_train_dataloader()
        from accelerate.data_loader import prepare_data_loader

        args = self.args
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers, prefetch_factor=args.dataloader_prefetch_factor,
        )
        # no RNG synchronisation: it is a collective, and shards end at different times on different processes
        return prepare_data_loader(loader, self.accelerator.device, num_processes=1, process_index=0, put_on_device=True,
                                   rng_types=None, dispatch_batches=False, non_blocking=self.accelerator.non_blocking)

    # ---- the step (Algorithm 1) --------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        # evaluation draws from its own seeded generator: comparable across evaluations, training RNG untouched
        generator = None if model.training else self._eval_generator
        if mode == "train":
            self.metrics.count("ties_dropped", inputs["num_ties"])
            self.metrics.count("corrupt_skipped", inputs["num_corrupt"])
        batch, timesteps, noise = self._draw(inputs, generator, model.training)  # 1. latents and conditioning, 2.
        reference = None
        if self.reference_cache is not None and model.training:  # the reference's terms, computed before training
            reference = self.reference_cache.lookup(inputs[PAIR_INDEX], inputs[PAIR_EPOCH], batch.x0_w.device)
        if self.args.loss_type == "sft":
            loss = self._sft_loss(model, batch, noise, timesteps, mode)
        else:
            outputs = self._denoise(model, batch, noise, timesteps, reference)  # 3.
            z = self.credit.margin(outputs)  # 4.
            loss = preference_loss(z, batch.preference, self.args.beta, self.args.loss_type).mean()
            if model.training:
                self.credit.update(outputs)  # 5.
            self._record(mode, outputs, z, loss)
        return (loss, {}) if return_outputs else loss

    def _draw(self, inputs: dict, generator: torch.Generator | None, training: bool):
        """The batch (latents and conditioning), one timestep and one noise per pair: in training under
        ``pair_seeded_draws`` from each pair's own generators (``draws.py``: a function of seed, epoch and pair
        index), otherwise from ``generator`` (``None``: the trainer's random stream)."""
        if self.draws is not None and training:
            indices, epochs = inputs[PAIR_INDEX], inputs[PAIR_EPOCH]
            batch = self.batches(inputs, self.draws.latent_generators(indices, epochs))
            timesteps, noise = self.draws.timesteps_and_noise(indices, epochs, batch.x0_w)
            return batch, timesteps, noise
        batch = self.batches(inputs, generator)
        latents = batch.x0_w
        timesteps = self.credit.sample_timesteps(batch.size, device=latents.device, generator=generator)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        return batch, timesteps, noise

    def _denoise(self, model, batch, noise: torch.Tensor, timesteps: torch.Tensor,
                 reference: dict[str, torch.Tensor] | None = None) -> DenoisingOutputs:
        """Noise winners and losers alike, then run the policy once on both, and the reference too unless its
        per-pair terms are given (``reference``, from the reference cache); ``outputs.reference`` holds them."""
        x_t, model_time = self._noised(batch, noise, timesteps)
        prediction = self.family.predict(model, x_t, model_time, batch.conditioning)
        (xt_w, xt_l), (pred_w, pred_l) = x_t.chunk(2), prediction.chunk(2)
        ref_w = ref_l = None
        if reference is None:
            ref_w, ref_l = self._reference_predict(model, x_t, model_time, batch.conditioning).chunk(2)
        outputs = DenoisingOutputs(batch.x0_w, batch.x0_l, noise, timesteps, xt_w, xt_l, pred_w, pred_l, ref_w, ref_l,
                                   self.process, reference)
        if reference is None:
            outputs.reference = reference_scalars(self.credit, outputs)
        return outputs

    def _noised(self, batch, noise: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_τ`` of ``[winners; losers]`` (one noise per pair, shared) and the model times of both."""
        twice = torch.cat([timesteps, timesteps])
        x_t = self.process.add_noise(torch.cat([batch.x0_w, batch.x0_l]), torch.cat([noise, noise]), twice)
        return x_t, self.process.model_timesteps(twice)

    @torch.no_grad()
    def _reference_predict(self, model, x_t: torch.Tensor, model_time: torch.Tensor, conditioning,
                           reference: torch.nn.Module | None = None) -> torch.Tensor:
        """The reference's prediction: ``model`` with its LoRA adapters disabled, or the frozen ``reference``
        (default ``ref_model``; the reference pass gives the one it loaded)."""
        if self.reference_adapters is not None:
            with self.reference_adapters.disabled():
                return self.family.predict(model, x_t, model_time, conditioning)
        reference = self.ref_model if reference is None else reference
        if reference is None:
            raise RuntimeError("precompute_ref=True: this trainer holds no reference model; its terms are computed by "
                               "train() before the first step, and only training steps read them.")
        if reference.training != model.training:
            # the policy's mode: identical weights then give identical outputs (train mode changes no value in
            # a denoiser without active dropout, but it does change kernel paths and so the rounding)
            reference.train(model.training)
        return self.family.predict(reference, x_t, model_time, conditioning)

    def _sft_loss(self, model, batch, noise, timesteps, mode):
        """The paper's SFT baseline: the plain denoising loss (in the model's own target, with the process's
        ``loss_weights``) on the winners only."""
        process = self.process
        x_t = process.add_noise(batch.x0_w, noise, timesteps)
        prediction = self.family.predict(model, x_t, process.model_timesteps(timesteps), batch.winners_conditioning())
        mse = squared_error(prediction, process.target(batch.x0_w, noise, timesteps))
        loss = (mse * process.loss_weights[timesteps]).mean()  # weighted as the process's recipe weights it
        self.metrics.record(mode, {"mse/policy_chosen": mse, "timestep": timesteps})
        self.metrics.watch(self.state.global_step + 1, policy=prediction, loss=loss)
        return loss

    def _record(self, mode: str, outputs: DenoisingOutputs, z: torch.Tensor, loss: torch.Tensor) -> None:
        """Buffer the step's per-pair metrics on the device and watch for non-finite values."""
        z = z.detach()
        noise = outputs.noise
        self.metrics.record(mode, {
            "implicit_acc": (z > 0).float() + 0.5 * (z == 0).float(),
            "margin": z,
            "beta_margin": self.args.beta * z,
            "mse/policy_chosen": squared_error(outputs.eps_w.detach(), noise),
            "mse/policy_rejected": squared_error(outputs.eps_l.detach(), noise),
            "mse/ref_chosen": outputs.reference["mse/ref_chosen"],
            "mse/ref_rejected": outputs.reference["mse/ref_rejected"],
            "timestep": outputs.timesteps,
            **{f"credit/{key}": value for key, value in self.credit.pair_metrics().items()},
        })
        self.metrics.watch(self.state.global_step + 1, reference=torch.stack(list(outputs.reference.values())),
                           policy=outputs.pred_w, margin=z, loss=loss)

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

    def _drain_metrics(self, mode: str) -> dict[str, float]:
        """The averages buffered since the last log (over every process), the strategy's own metrics and, for
        training, the data counters. Raises if a non-finite value was seen."""
        self.metrics.check_finite(self.credit.name)
        metrics = self.metrics.drain(mode)
        if metrics and self.args.loss_type != "sft":
            metrics.update({f"credit/{key}": value for key, value in self.credit.metrics().items()})
        if mode == "train":
            streamed = self.metrics.totals()
            metrics["data/ties_dropped"] = self.ties_dropped + streamed.get("ties_dropped", 0)
            metrics["data/corrupt_skipped"] = self.corrupt_skipped + streamed.get("corrupt_skipped", 0)
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:  # evaluation metrics travel with evaluate()'s own output instead
            logs = {**logs, **self._drain_metrics("train")}
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in self._drain_metrics("eval").items()})
        return output

    # ---- saving and resuming -----------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False, format: str = "diffusers") -> None:
        """Save the trained weights. ``format="diffusers"`` (default): the LoRA file ``pipe.load_lora_weights``
        reads, or the full ``unet/`` folder. ``format="kohya"`` (LoRA only) also writes the adapter in the kohya
        key format AUTOMATIC1111 and ComfyUI load (``pytorch_lora_weights_kohya.safetensors``)."""
        if format not in ("diffusers", "kohya"):
            raise ValueError(f"format must be 'diffusers' or 'kohya', got {format!r}.")
        if format == "kohya" and not self.is_lora:
            raise ValueError("format='kohya' exports LoRA adapters; this run trains the full model (saved as diffusers folders).")
        super().save_model(output_dir, _internal_call)
        if format == "kohya" and self.args.should_save:
            self.family.save_kohya(self.model, output_dir or self.args.output_dir)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Diffusers-format weights (LoRA file or ``unet/``) instead of transformers' ``model.safetensors``."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save = self.family.save_lora if self.is_lora else self.family.save_full
        save(self.model, output_dir, state_dict)
        torch.save(without_secrets(self.args), os.path.join(output_dir, TRAINING_ARGS_NAME))
        if os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir):  # the final model, not a checkpoint
            self.create_model_card()

    def _save_checkpoint(self, model, trial) -> None:
        """transformers' checkpoint, plus the strategy's state, then the completeness marker (``checkpoints.py``);
        older checkpoints are rotated out only once the new one is complete."""
        self.metrics.check_finite(self.credit.name)  # never write a checkpoint of weights a non-finite step touched
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            state = {key: value.detach().cpu().contiguous() for key, value in self.credit.state_dict().items()}
            safetensors.torch.save_file(state, os.path.join(folder, CREDIT_STATE_NAME), metadata={"credit": self.credit.name})
        self.accelerator.wait_for_everyone()  # every process has written its files (RNG states)
        if self.args.should_save:
            mark_complete(folder)
            remove_incomplete_checkpoints(run_dir, keep=folder)
            rotate_checkpoints(run_dir, limit, best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``transformers.Trainer.train``, restoring the credit strategy's state too when resuming."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint found in {self.args.output_dir} to resume from.")
        elif resume_from_checkpoint:
            problem = checkpoint_problem(resume_from_checkpoint)
            if problem is not None:
                last = last_complete_checkpoint(os.path.dirname(os.path.abspath(resume_from_checkpoint)))
                raise ValueError(f"Cannot resume from {resume_from_checkpoint}: {problem}. "
                                 + (f"The last complete checkpoint is {last}." if last else "There is no complete checkpoint."))
        if resume_from_checkpoint:
            # here rather than in _load_from_checkpoint, which transformers skips under DeepSpeed and FSDP
            self._load_credit_state(resume_from_checkpoint)
        if self.args.precompute_ref and self.reference_cache is None:
            # before super().train() loads a checkpoint's weights: the model is still the one the run started from
            self.reference_cache = self._precompute_reference()
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def _planned_epochs(self) -> int:
        """How many epochs ``train`` will start: transformers' own count (``set_initial_training_values``) from this
        process's training dataloader, whose length accelerate's sharding sets (``dataloader_drop_last``,
        ``even_batches``), not a re-derivation of it."""
        return self.set_initial_training_values(self.args, self.get_train_dataloader())[0]

    def _reference_cache_key(self, reference: torch.nn.Module) -> tuple[str, dict]:
        """The cache folder's key and a description: everything the reference terms depend on."""
        args, process = self.args, self.process
        tables = torch.stack([process.signal.float().cpu(), process.noise_scale.float().cpu()])
        description = {
            "reference_weights": weights_hash([reference], skip="lora_"),
            "encoder_weights": weights_hash([self.family.vae, *self.family.text_encoders]),
            "data": self.train_dataset.dataset._fingerprint, "num_pairs": len(self.train_dataset),
            "seed": args.seed, "draws_device": self.draws.device.type,  # CPU and CUDA generators draw other numbers
            "credit": f"{type(self.credit).__module__}.{type(self.credit).__qualname__}({self.credit.extra_repr()})",
            "sampling": cache_key(self.credit.sampling_probabilities().tolist()),
            "process": f"{type(process).__name__}/{process.prediction_type}/{cache_key(tables.tolist())}",
            "data_options": [args.resolution, args.random_crop, args.random_flip, args.precompute_latents,
                             args.precompute_vae, args.precompute_flip, args.precompute_dtype, args.vae],
            "dtype": str(self.weight_dtype), "mixed_precision": [args.bf16, args.fp16],
        }
        return cache_key(description), description

    def _precompute_reference(self) -> ReferenceCache:
        """The inference-only pass: the reference's terms of every training pair for every planned epoch, read from
        the cache or computed (this process's shards) and stored there. Full fine-tuning loads a given
        ``ref_model`` for the pass only; without one the reference is the denoiser as it is now."""
        args, model, dataset = self.args, self.model, self.train_dataset
        reference = model
        if self.reference_adapters is None and self._pass_reference is not None:
            reference = build_reference(self.family, self._pass_reference, None).to(args.device)
        key, description = self._reference_cache_key(reference)
        root = args.precompute_ref_cache_dir or os.path.join(datasets_config.HF_DATASETS_CACHE, "trl-dde", "reference")
        was_training, epoch = model.training, dataset.epoch
        model.train()  # the mode of the training step, so that the reference's rounding is the same

        def compute(indices: list[int], pass_epoch: int) -> dict[str, torch.Tensor]:
            dataset.set_epoch(pass_epoch)
            inputs = self._prepare_inputs(self.data_collator([dataset[index] for index in indices]))
            with torch.no_grad(), self.accelerator.autocast():
                batch, timesteps, noise = self._draw(inputs, None, training=True)
                x_t, model_time = self._noised(batch, noise, timesteps)
                (xt_w, xt_l), (ref_w, ref_l) = x_t.chunk(2), self._reference_predict(
                    model, x_t, model_time, batch.conditioning, reference).chunk(2)
                outputs = DenoisingOutputs(batch.x0_w, batch.x0_l, noise, timesteps, xt_w, xt_l, None, None, ref_w,
                                           ref_l, self.process)
                return reference_scalars(self.credit, outputs)

        try:
            cache = build_reference_cache(
                os.path.join(root, key), len(dataset), self._planned_epochs(),
                args.precompute_ref_batch_size or args.per_device_train_batch_size, compute,
                process_index=args.process_index, num_processes=args.world_size,
                wait_for_everyone=self.accelerator.wait_for_everyone, description=description,
                progress=self.is_world_process_zero() and not args.disable_tqdm,
            )
        finally:
            model.train(was_training)
            dataset.set_epoch(epoch)
        self._pass_reference = None  # the given ref_model is not needed again (kept if the pass failed: a retry uses it)
        return cache

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
        load = self.family.load_lora if self.is_lora else self.family.load_full
        load(model or self.model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          base_model: str | None = None, **kwargs) -> None:
        """Write ``README.md`` (a diffusers model card) into ``output_dir``; ``push_to_hub`` uploads it."""
        if not self.is_world_process_zero():
            return
        data = card_data_for(self, model_name=model_name, dataset_name=dataset_name, base_model=base_model)
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(render_model_card(data))

    @property
    def is_lora(self) -> bool:
        return bool(getattr(unwrap_model(self.model), "peft_config", None))
