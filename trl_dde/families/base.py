"""The model-family seam: everything that differs between diffusers pipeline families.

A ``ModelFamily`` wraps one loaded pipeline and owns, for its family:

* loading (extra ``from_pretrained`` arguments) and the noise process its scheduler trains with;
* text conditioning: ``tokenize`` → ``encode_prompts`` → a flat dict of prompt tensors, plus the
  per-image conditioning some families derive from crops (``image_conditioning``; SDXL's ``time_ids``) —
  together one *conditioning* dict the family's ``predict`` turns into the denoiser's arguments;
* image latents (``encode_images``, ``scale_latents``) and the VAE's precision (``vae.config.force_upcast``);
* the trained module (``denoiser``: a UNet or a transformer), LoRA attachment, and saving/loading its
  weights in the format the family's own pipeline loads (LoRA file, full ``unet/`` or ``transformer/``),
  plus the kohya key format A1111/ComfyUI load.

The trainer, the batch sources and the data code talk to a family only through this interface, so a new
family (SD3, Flux, ...) is one new module registered with ``register_family``.
"""

from __future__ import annotations

import copy
import json
import os
from typing import ClassVar

import safetensors.torch
import torch
from diffusers import DiffusionPipeline
from diffusers.configuration_utils import FrozenDict

from ..processes import NoiseProcess

__all__ = ["ADAPTER_NAME", "LORA_WEIGHTS_NAME", "KOHYA_WEIGHTS_NAME", "ModelFamily", "cast_module", "unwrap_model"]

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS_NAME = "pytorch_lora_weights_kohya.safetensors"
ADAPTER_NAME = "default"

Conditioning = dict[str, torch.Tensor]


class _ReportableConfig(FrozenDict):
    """A diffusers config that transformers' logging integrations can serialise: TensorBoard, MLflow and Comet call
    ``model.config.to_json_string()`` / ``to_dict()``, which only ``PretrainedConfig`` has."""

    def to_dict(self) -> dict:
        return dict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"


def cast_module(module: torch.nn.Module, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.nn.Module:
    """``module.to(device, dtype)``, skipping the dtype cast (and diffusers' notice about it) when nothing changes."""
    if device is not None:
        module.to(device=device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    return module


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP/DeepSpeed/``torch.compile`` wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


class ModelFamily:
    """Base class of model families; subclasses set the class attributes and the text/denoiser methods.

    Class attributes:
        name: registry name, e.g. ``"sd"``.
        pipeline_class: the diffusers pipeline class of the family.
        denoiser_name: the pipeline attribute of the trained module (``"unet"`` / ``"transformer"``), also the
            subfolder of full weights and the key prefix of LoRA files.
        process_name: the noise process the family's scheduler trains with.
        card_tag: the model-card tag (``"sd-1.5"``).
        image_conditioning_keys: conditioning entries that differ between winner and loser (from crops).
    """

    name: ClassVar[str] = "base"
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    denoiser_name: ClassVar[str] = "unet"
    process_name: ClassVar[str] = "ddpm"
    card_tag: ClassVar[str] = ""
    image_conditioning_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipeline: DiffusionPipeline):
        if not isinstance(pipeline, self.pipeline_class):
            raise TypeError(f"{type(self).__name__} wraps a {self.pipeline_class.__name__}, got {type(pipeline).__name__}.")
        self.pipeline = pipeline

    # ---- loading ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained_kwargs(cls, model_index: dict) -> dict:
        """Extra ``from_pretrained`` arguments for a pipeline with this ``model_index.json`` (components training never
        uses are not loaded; optional components saved as absent are passed as ``None``)."""
        return {}

    @classmethod
    def process_from_scheduler_config(cls, config, **options) -> NoiseProcess:
        """The training noise process of a scheduler config of this family, with the process ``options`` the config
        sets (``DDEConfig.process_options()``: flow matching's time sampling)."""
        raise NotImplementedError

    def noise_process(self) -> NoiseProcess:
        return self.process_from_scheduler_config(self.pipeline.scheduler.config)

    # ---- components ---------------------------------------------------------------------------------

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.denoiser_name)

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipeline.vae

    @property
    def text_encoders(self) -> tuple[torch.nn.Module, ...]:
        """The pipeline's ``text_encoder``, ``text_encoder_2``, ``text_encoder_3`` that exist, in that order (a
        component left out, e.g. SD3's T5 with ``text_encoder_3=None``, is skipped)."""
        return self._numbered_components("text_encoder")

    @property
    def tokenizers(self) -> tuple:
        """The tokenizers matching ``text_encoders``, in the same order."""
        return self._numbered_components("tokenizer")

    def _numbered_components(self, name: str) -> tuple:
        candidates = (getattr(self.pipeline, key, None) for key in (name, f"{name}_2", f"{name}_3"))
        return tuple(component for component in candidates if component is not None)

    @classmethod
    def resolution_multiple(cls, vae_config, denoiser_config) -> int:
        """What training resolutions must be a multiple of: the VAE's downsampling factor times the denoiser's
        ``patch_size`` (1 for a UNet; a transformer cuts its latents into ``patch_size²`` patches)."""
        return 2 ** (len(vae_config["block_out_channels"]) - 1) * denoiser_config.get("patch_size", 1)

    @property
    def default_resolution(self) -> int:
        """The native training image size in pixels."""
        return self.denoiser.config.sample_size * self.pipeline.vae_scale_factor

    def vae_dtype(self, weight_dtype: torch.dtype, replaced_vae: bool) -> torch.dtype:
        """The VAE's own dtype: fp32 when its config asks for upcasting (SDXL's VAE overflows in fp16) and the
        user did not supply a replacement VAE, else the mixed-precision dtype."""
        return torch.float32 if self.vae.config.get("force_upcast", False) and not replaced_vae else weight_dtype

    # ---- conditioning -------------------------------------------------------------------------------

    @staticmethod
    def input_ids_key(index: int) -> str:
        """Batch key of the token ids of tokenizer ``index``: ``input_ids``, ``input_ids_2``, ..."""
        return "input_ids" if index == 0 else f"input_ids_{index + 1}"

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids for every tokenizer of the family, padded to its maximum length."""
        ids = {}
        for index, tokenizer in enumerate(self.tokenizers):
            length = self.token_length(index, tokenizer)
            ids[self.input_ids_key(index)] = tokenizer(
                prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            ).input_ids
        return ids

    def token_length(self, index: int, tokenizer) -> int:
        """The padded length of tokenizer ``index``'s ids (its ``model_max_length``)."""
        return tokenizer.model_max_length

    def encode_prompts(self, token_ids: dict[str, torch.Tensor]) -> Conditioning:
        """The prompt part of the conditioning from ``tokenize``'s output."""
        raise NotImplementedError

    def image_conditioning(self, crop_info: torch.Tensor) -> Conditioning:
        """Per-image conditioning from ``crop_info`` ``[N, 6]`` (original h, w, crop top, left, target h, w)."""
        return {}

    # ---- latents ------------------------------------------------------------------------------------

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents in the denoiser's units: ``(z - shift_factor) · scaling_factor``."""
        shift = self.vae.config.get("shift_factor", None) or 0.0
        return (latents.float() - shift) * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of images in ``[-1, 1]``, sampled from the VAE posterior."""
        vae = self.vae
        return self.scale_latents(vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample(generator=generator))

    # ---- the denoiser -------------------------------------------------------------------------------

    def denoiser_kwargs(self, conditioning: Conditioning) -> dict:
        """Keyword arguments of the denoiser's forward for a conditioning dict."""
        raise NotImplementedError

    def predict(self, denoiser: torch.nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """The denoiser's native output (fp32) for noisy latents at model times ``timesteps``.

        Inputs are cast to the denoiser's parameter dtype (a no-op under autocast with fp32 master weights;
        needed where a backend runs the model in bf16 without autocast, e.g. DeepSpeed)."""
        dtype = next(unwrap_model(denoiser).parameters()).dtype
        cast = {key: value.to(dtype) if value.is_floating_point() else value for key, value in conditioning.items()}
        return denoiser(x_t.to(dtype), timestep=timesteps, **self.denoiser_kwargs(cast), return_dict=False)[0].float()

    def prepare_denoiser(self, peft_config=None, weight_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        """Make the denoiser trainable: LoRA adapters (fp32) on frozen ``weight_dtype`` weights, or every weight in fp32."""
        from diffusers.training_utils import cast_training_params

        denoiser = self.denoiser
        denoiser._internal_dict = _ReportableConfig(denoiser.config)  # for transformers' logging integrations
        if peft_config is None:
            cast_module(denoiser, torch.float32).requires_grad_(True)
        else:
            cast_module(denoiser.requires_grad_(False), weight_dtype)
            denoiser.add_adapter(peft_config)
            cast_training_params(denoiser, dtype=torch.float32)
        return denoiser.train()

    def frozen_copy(self, denoiser: torch.nn.Module) -> torch.nn.Module:
        """A frozen copy of ``denoiser`` (the full fine-tune's default reference), same dtype."""
        reference = copy.deepcopy(unwrap_model(denoiser))
        return reference.requires_grad_(False).eval()

    def load_denoiser(self, name_or_path: str | os.PathLike) -> torch.nn.Module:
        """A denoiser of this family's class from a folder or hub id: a pipeline (``unet/`` subfolder) or a bare model."""
        model_class = type(unwrap_model(self.denoiser))
        if os.path.isdir(name_or_path):
            subfolder = self.denoiser_name if os.path.isdir(os.path.join(name_or_path, self.denoiser_name)) else None
            return model_class.from_pretrained(name_or_path, subfolder=subfolder)
        try:
            return model_class.from_pretrained(name_or_path, subfolder=self.denoiser_name)
        except OSError:
            return model_class.from_pretrained(name_or_path)

    # ---- weights ------------------------------------------------------------------------------------

    def save_lora(self, denoiser: torch.nn.Module, output_dir: str, state_dict: dict | None = None) -> None:
        """``pytorch_lora_weights.safetensors`` with the adapter config as metadata, as the pipeline's
        ``save_lora_weights`` writes it (so ``pipe.load_lora_weights(output_dir)`` loads it)."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import get_peft_model_state_dict

        denoiser = unwrap_model(denoiser)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser, state_dict=state_dict, adapter_name=ADAPTER_NAME))
        self.pipeline_class.save_lora_weights(
            output_dir,
            **{f"{self.denoiser_name}_lora_layers": layers,
               f"{self.denoiser_name}_lora_adapter_metadata": denoiser.peft_config[ADAPTER_NAME].to_dict()},
            safe_serialization=True,
        )

    def load_lora(self, denoiser: torch.nn.Module, folder: str) -> None:
        """Restore a LoRA file written by ``save_lora`` *into the existing adapter* (exact). Loading it as a new
        adapter (what diffusers' DPO script does on resume) would stack a second, untrained adapter."""
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft import set_peft_model_state_dict

        path = os.path.join(folder, LORA_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No LoRA weights at {path}; was this checkpoint written by a LoRA run?")
        prefix = f"{self.denoiser_name}."
        state_dict = {key.removeprefix(prefix): value for key, value in safetensors.torch.load_file(path).items()}
        result = set_peft_model_state_dict(unwrap_model(denoiser), convert_unet_state_dict_to_peft(state_dict), adapter_name=ADAPTER_NAME)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"LoRA checkpoint {path} has weights the adapter does not: {unexpected[:5]}...")

    def save_full(self, denoiser: torch.nn.Module, output_dir: str, state_dict: dict | None = None) -> None:
        """The whole denoiser as a diffusers model folder ``<output_dir>/<denoiser_name>/``. ``state_dict`` (the
        full state dict transformers gathers under FSDP, where the module holds one shard) is saved instead of
        reading the module when given."""
        from huggingface_hub import save_torch_state_dict

        denoiser, folder = unwrap_model(denoiser), os.path.join(output_dir, self.denoiser_name)
        if state_dict is None:
            denoiser.save_pretrained(folder, safe_serialization=True)
            return
        denoiser.save_config(folder)
        save_torch_state_dict(state_dict, folder, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                              max_shard_size="10GB")

    def load_full(self, denoiser: torch.nn.Module, folder: str) -> None:
        """Restore weights written by ``save_full`` into ``denoiser`` in place (strict)."""
        from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME

        denoiser, root = unwrap_model(denoiser), os.path.join(folder, self.denoiser_name)
        single, index = os.path.join(root, SAFETENSORS_WEIGHTS_NAME), os.path.join(root, SAFE_WEIGHTS_INDEX_NAME)
        if os.path.isfile(index):  # large models are saved in shards
            with open(index) as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
        elif os.path.isfile(single):
            shards = [SAFETENSORS_WEIGHTS_NAME]
        else:
            raise FileNotFoundError(f"No full {self.denoiser_name} weights in {root}; was this checkpoint written by a full fine-tune?")
        state_dict = {}
        for shard in shards:
            state_dict.update(safetensors.torch.load_file(os.path.join(root, shard), device=str(denoiser.device)))
        denoiser.load_state_dict(state_dict, strict=True)

    def kohya_state_dict(self, denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The LoRA in the kohya key format (AUTOMATIC1111, ComfyUI, sd-scripts): per adapted module
        ``lora_<denoiser>_<module path with _>.lora_down.weight`` (LoRA A), ``.lora_up.weight`` (LoRA B) and
        ``.alpha`` with ``alpha / rank`` equal to the adapter's scaling (so ``lora_alpha ≠ r`` survives)."""
        from peft.tuners.lora import LoraLayer

        weights = {}
        for name, module in unwrap_model(denoiser).named_modules():
            if not isinstance(module, LoraLayer) or ADAPTER_NAME not in module.lora_A:
                continue
            key = f"lora_{self.denoiser_name}_{name.replace('.', '_')}"
            down, up = module.lora_A[ADAPTER_NAME].weight, module.lora_B[ADAPTER_NAME].weight
            weights[f"{key}.lora_down.weight"] = down.detach().float().cpu().contiguous()
            weights[f"{key}.lora_up.weight"] = up.detach().float().cpu().contiguous()
            weights[f"{key}.alpha"] = torch.tensor(module.scaling[ADAPTER_NAME] * module.r[ADAPTER_NAME], dtype=torch.float32)
        if not weights:
            raise ValueError("The model has no LoRA adapter to export; kohya export is for LoRA training runs.")
        return weights

    def save_kohya(self, denoiser: torch.nn.Module, output_dir: str) -> str:
        """Write ``kohya_state_dict`` to ``<output_dir>/pytorch_lora_weights_kohya.safetensors``; returns the path."""
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, KOHYA_WEIGHTS_NAME)
        safetensors.torch.save_file(self.kohya_state_dict(denoiser), path, metadata={"format": "pt", "ss_network_module": "networks.lora"})
        return path
