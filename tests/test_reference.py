"""The LoRA reference: AdapterSwitch runs the base model exactly and restores the adapters afterwards."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from trl_dde.reference import AdapterSwitch
from trl_dde.tiny import tiny_sd15_pipeline


def _forward(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


def test_switch_runs_the_base_model_and_restores_the_adapters():
    unet = tiny_sd15_pipeline().unet.eval()
    generator = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, 4, 16, 16, generator=generator), torch.tensor([10, 500]),
              torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator))
    base = _forward(unet, inputs)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora = [p for name, p in unet.named_parameters() if "lora_" in name]
    with torch.no_grad():
        for parameter in lora:
            parameter.normal_(0, 0.5, generator=generator)  # non-zero adapters, so the policy differs from the base
    adapted = _forward(unet, inputs)
    assert not torch.allclose(adapted, base, atol=1e-4)
    switch = AdapterSwitch(unet)
    assert len(switch.layers) == 4 * sum(1 for name, _ in unet.named_modules() if name.endswith(("attn1", "attn2")))  # q, k, v, out per attention
    with switch.disabled():
        assert torch.equal(_forward(unet, inputs), base)
    assert torch.equal(_forward(unet, inputs), adapted) and all(p.requires_grad for p in lora)
    with pytest.raises(RuntimeError, match="inside"), switch.disabled():
        raise RuntimeError("inside")
    assert torch.equal(_forward(unet, inputs), adapted) and all(p.requires_grad for p in lora)


def test_switch_refuses_a_model_without_adapters():
    with pytest.raises(ValueError, match="no"):
        AdapterSwitch(tiny_sd15_pipeline().unet)
