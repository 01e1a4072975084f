"""The LoRA reference: AdaptersOff runs exactly the base weights and restores the trainable adapter on exit."""

import pytest
import torch
from peft import LoraConfig

from trl_dde.reference import AdaptersOff
from trl_dde.tiny import tiny_sd15_pipeline


def test_adapters_off_gives_the_base_model_and_restores_the_adapter():
    unet = tiny_sd15_pipeline().unet
    x, t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    context = torch.randn(2, 8, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = unet(x, t, context).sample
    unet.add_adapter(LoraConfig(r=4, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_("lora_" in name)
        if "lora_B" in name:  # PEFT starts B at zero (adapter = identity); make it change the output
            torch.nn.init.normal_(parameter.data, std=0.5, generator=torch.Generator().manual_seed(2))
    switch = AdaptersOff(unet)
    with torch.no_grad():
        adapted = unet(x, t, context).sample
        with switch():
            reference = unet(x, t, context).sample
        after = unet(x, t, context).sample
    assert not torch.allclose(adapted, base)  # the adapter changes the output, so the check below can fail
    torch.testing.assert_close(reference, base, rtol=0, atol=0)
    torch.testing.assert_close(after, adapted, rtol=0, atol=0)
    assert all(p.requires_grad for n, p in unet.named_parameters() if "lora_" in n)


def test_adapters_off_refuses_a_model_without_adapters():
    with pytest.raises(ValueError, match="no"):
        AdaptersOff(torch.nn.Linear(2, 2))
