"""Diffusers-format export of the trained UNet and its restoration from a checkpoint.

* LoRA: ``pytorch_lora_weights.safetensors`` written by the pipeline class's ``save_lora_weights`` (with
  the adapter config as metadata, so ``lora_alpha != r`` loads right): ``pipe.load_lora_weights(folder)``
  reads it.
* Full fine-tune: a ``unet/`` folder (``UNet2DConditionModel.from_pretrained(folder, subfolder="unet")``).

Restoring a LoRA checkpoint loads the weights *into the existing adapter* with
``set_peft_model_state_dict``; loading it as a new adapter (what diffusers' DPO script does on resume)
would stack a second, untrained adapter on the first.
"""

from __future__ import annotations

import json
import os

import safetensors.torch
from huggingface_hub import save_torch_state_dict
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFETENSORS_WEIGHTS_NAME as SAFE_WEIGHTS_NAME,
    convert_state_dict_to_diffusers,
    convert_unet_state_dict_to_peft,
)
from peft import get_peft_model_state_dict, set_peft_model_state_dict

__all__ = ["LORA_WEIGHTS_NAME", "UNET_FOLDER", "has_lora", "load_unet_weights", "save_unet_weights"]

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
UNET_FOLDER = "unet"
ADAPTER_NAME = "default"


def has_lora(unet: UNet2DConditionModel) -> bool:
    return bool(getattr(unet, "peft_config", None))


def save_unet_weights(
    unet: UNet2DConditionModel, output_dir: str, pipeline_class: type[DiffusionPipeline], state_dict: dict | None = None
) -> None:
    """Write the trained weights in the format diffusers loads: LoRA file or ``unet/`` folder.

    ``state_dict`` (the UNet's full state dict) is used instead of reading ``unet`` when given: under FSDP
    the module holds only this rank's shard and transformers gathers the full state dict for saving.
    """
    os.makedirs(output_dir, exist_ok=True)
    if has_lora(unet):
        peft_state = get_peft_model_state_dict(unet, state_dict=state_dict, adapter_name=ADAPTER_NAME)
        lora_layers = convert_state_dict_to_diffusers(peft_state)
        pipeline_class.save_lora_weights(
            output_dir,
            unet_lora_layers=lora_layers,
            unet_lora_adapter_metadata=unet.peft_config[ADAPTER_NAME].to_dict(),
            safe_serialization=True,
        )
    elif state_dict is None:
        unet.save_pretrained(os.path.join(output_dir, UNET_FOLDER), safe_serialization=True)
    else:
        folder = os.path.join(output_dir, UNET_FOLDER)
        unet.save_config(folder)
        save_torch_state_dict(state_dict, folder, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                              max_shard_size="10GB")


def load_unet_weights(unet: UNet2DConditionModel, checkpoint_dir: str) -> None:
    """Restore weights written by ``save_unet_weights`` into ``unet`` in place (exact, strict)."""
    if has_lora(unet):
        path = os.path.join(checkpoint_dir, LORA_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No LoRA weights at {path}; was this checkpoint written by a LoRA run?")
        state_dict = safetensors.torch.load_file(path)
        state_dict = {key.removeprefix("unet."): value for key, value in state_dict.items()}
        result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state_dict), adapter_name=ADAPTER_NAME)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"LoRA checkpoint {path} has weights the adapter does not: {unexpected[:5]}...")
        return
    folder = os.path.join(checkpoint_dir, UNET_FOLDER)
    single, index = os.path.join(folder, SAFE_WEIGHTS_NAME), os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):  # large UNets (SDXL in fp32) are saved in shards
        with open(index) as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
    elif os.path.isfile(single):
        shards = [SAFE_WEIGHTS_NAME]
    else:
        raise FileNotFoundError(f"No full UNet weights in {folder}; was this checkpoint written by a full fine-tune?")
    state_dict = {}
    for shard in shards:
        state_dict.update(safetensors.torch.load_file(os.path.join(folder, shard), device=str(unet.device)))
    unet.load_state_dict(state_dict, strict=True)
