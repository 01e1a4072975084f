"""Training steps on a tiny SD1.5-architecture pipeline: what changes, what is logged, what is refused."""

import sys

import pytest
import torch
from conftest import lora_config, make_args

from trl_dde import CreditAssigner, DDEDiffusionTrainer, register_credit
from trl_dde.credit import UniformCredit
from trl_dde.tiny import tiny_preference_dataset

STRATEGIES = ["uniform", "discounted", "dde-single", "dde-step", "dde"]


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before, module):
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())}


@pytest.mark.parametrize("credit", STRATEGIES)
def test_lora_training_changes_only_lora_weights(tmp_path, pipeline, pickapic, credit):
    trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path, credit=credit), train_dataset=pickapic, peft_config=lora_config())
    before = snapshot(trainer.model)
    trainer.train()
    moved = changed(before, trainer.model)
    assert moved and all("lora" in name for name in moved)
    assert all(p.dtype == torch.float32 for n, p in trainer.model.named_parameters() if "lora" in n)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logs)
    for key in ("implicit_acc", "margin", "beta_margin", "mse/policy_chosen", "mse/policy_rejected",
                "mse/ref_chosen", "mse/ref_rejected", "timestep", "data/ties_dropped", "data/corrupt_skipped"):
        assert key in logs[0], key
    assert logs[0]["implicit_acc"] == 0.5  # the untouched adapter equals the reference: z == 0 counts one half
    assert logs[0]["data/ties_dropped"] == 4
    if credit in ("dde-step", "dde"):
        assert "credit/correction" in logs[0]
        assert trainer.credit.ratios.abs().sum() > 0
    assert trainer.credit.name == credit


def test_full_training_changes_unet_and_never_the_reference(tmp_path, pipeline, pickapic):
    trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path, credit="dde"), train_dataset=pickapic)
    before, reference_before = snapshot(trainer.model), snapshot(trainer.ref_model)
    trainer.train()
    assert len(changed(before, trainer.model)) > 0.5 * len(before)
    assert not changed(reference_before, trainer.ref_model)
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    assert not any(p.requires_grad for p in trainer.pipeline.vae.parameters())
    assert not any(p.requires_grad for p in trainer.pipeline.text_encoder.parameters())


def test_user_reference_model_is_used(tmp_path, pickapic):
    from trl_dde.tiny import tiny_sd15_pipeline

    reference = tiny_sd15_pipeline(seed=1).unet
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), ref_model=reference, args=make_args(tmp_path, max_steps=1), train_dataset=pickapic)
    assert trainer.ref_model is reference
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["mse/policy_chosen"] != first["mse/ref_chosen"]  # a different reference gives a non-zero margin


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "sft"])
def test_every_loss_type_trains(tmp_path, pipeline, pickapic, loss_type):
    trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path, loss_type=loss_type, credit="uniform"), train_dataset=pickapic, peft_config=lora_config())
    trainer.train()
    first = trainer.state.log_history[0]
    assert torch.isfinite(torch.tensor(first["loss"]))
    if loss_type == "sigmoid":
        assert first["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)  # z = 0 at the start
    if loss_type == "hinge":
        assert first["loss"] == pytest.approx(1.0, abs=1e-3)
    if loss_type == "sft":
        assert first["loss"] == pytest.approx(first["mse/policy_chosen"], rel=1e-5) and "margin" not in first


def test_preference_loss_formulas():
    from trl_dde.losses import preference_loss

    z = torch.tensor([0.3, -0.1, 0.0])
    decided, tie = torch.ones(3), torch.full((3,), 0.5)
    torch.testing.assert_close(preference_loss(z, decided, 10.0, "sigmoid"), -torch.nn.functional.logsigmoid(10 * z))
    # a tie is the average of both orderings
    both = 0.5 * (-torch.nn.functional.logsigmoid(10 * z) - torch.nn.functional.logsigmoid(-10 * z))
    torch.testing.assert_close(preference_loss(z, tie, 10.0, "sigmoid"), both)
    torch.testing.assert_close(preference_loss(z, decided, 10.0, "hinge"), torch.relu(1 - 10 * z))
    torch.testing.assert_close(preference_loss(z, decided, 10.0, "ipo"), (z - 1 / 20) ** 2)


def test_gradient_checkpointing_and_8bit_adam(tmp_path, pipeline, pickapic):
    args = make_args(tmp_path, gradient_checkpointing=True, optim="adamw_bnb_8bit")
    trainer = DDEDiffusionTrainer(pipeline, args=args, train_dataset=pickapic)
    assert trainer.model.is_gradient_checkpointing
    before = snapshot(trainer.model)
    trainer.train()
    optimizer = trainer.optimizer.optimizer
    assert type(optimizer).__module__.startswith("bitsandbytes")
    quantized = [s for state in optimizer.state.values() for s in state.values() if torch.is_tensor(s) and s.dtype == torch.uint8]
    assert quantized  # moments of the large weights are stored in 8 bits
    assert changed(before, trainer.model)


def test_missing_bitsandbytes_is_a_clear_error_before_training(tmp_path, pipeline, pickapic, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match=r"pip install 'trl-dde\[bnb\]'"):
        DDEDiffusionTrainer(pipeline, args=make_args(tmp_path, optim="adamw_bnb_8bit"), train_dataset=pickapic)


def test_model_from_local_folder_and_credit_override(tmp_path, pipeline_folder, pickapic):
    trainer = DDEDiffusionTrainer(pipeline_folder, args=make_args(tmp_path, credit="dde"), train_dataset=pickapic,
                                  peft_config=lora_config(), credit="discounted")
    assert trainer.credit.name == "discounted"
    instance = UniformCredit(trainer.process, timestep_range=[100, 200])
    trainer = DDEDiffusionTrainer(pipeline_folder, args=make_args(tmp_path), train_dataset=pickapic, credit=instance)
    assert trainer.credit is instance
    trainer.train()
    assert all(100 <= entry["timestep"] < 200 for entry in trainer.state.log_history if "timestep" in entry)


def test_lora_with_ref_model_is_refused(tmp_path, pipeline, pickapic):
    with pytest.raises(ValueError, match="mutually exclusive"):
        DDEDiffusionTrainer(pipeline, ref_model=pipeline.unet, args=make_args(tmp_path), train_dataset=pickapic, peft_config=lora_config())


@register_credit("test-nan")
class NaNCredit(CreditAssigner):
    """A user strategy that breaks: its margin is NaN."""

    def margin(self, outputs):
        return outputs.eps_w.sum(dim=(1, 2, 3)) * float("nan")


def test_nan_loss_stops_training_with_step_and_fix(tmp_path, pipeline, pickapic):
    trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path, credit="test-nan"), train_dataset=pickapic, peft_config=lora_config())
    with pytest.raises(FloatingPointError, match=r"margin became non-finite at step 1 .*credit strategy 'test-nan'"):
        trainer.train()


@pytest.mark.parametrize("credit", STRATEGIES)
def test_a_small_gradient_step_lowers_the_loss_on_the_same_inputs(tmp_path, pipeline, credit):
    """Guards the sign of the whole chain (margin, loss, backward): same batch, noise and τ before and after."""
    data = tiny_preference_dataset(8)
    trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path, credit=credit), train_dataset=data, peft_config=lora_config())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    model = trainer.model.eval()  # eval: the strategy's state is not updated between the two evaluations
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # leave the z = 0 saddle of a fresh adapter
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)

    def loss():
        torch.manual_seed(0)
        return trainer.compute_loss(model, batch)

    before = loss()
    before.backward()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
    with torch.no_grad():
        for p in params:
            p.sub_(1e-3 * p.grad / norm)
    assert loss() < before


@pytest.mark.parametrize("form", ["pipeline_folder", "unet_folder"])
def test_reference_model_from_a_folder(tmp_path, pickapic, form):
    from trl_dde.tiny import tiny_sd15_pipeline

    other = tiny_sd15_pipeline(seed=3)
    folder = tmp_path / form
    if form == "pipeline_folder":
        other.save_pretrained(folder)
    else:
        other.unet.save_pretrained(folder)
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), ref_model=str(folder), args=make_args(tmp_path), train_dataset=pickapic)
    for (name, a), (_, b) in zip(trainer.ref_model.named_parameters(), other.unet.named_parameters()):
        assert torch.equal(a, b), name


def test_torch_dtype_and_variant_reach_from_pretrained(tmp_path, pickapic):
    from trl_dde.tiny import tiny_sd15_pipeline

    folder = tmp_path / "fp16-variant"
    tiny_sd15_pipeline().save_pretrained(folder, variant="fp16")
    args = make_args(tmp_path, torch_dtype="bfloat16", model_variant="fp16", bf16=True)
    trainer = DDEDiffusionTrainer(str(folder), args=args, train_dataset=pickapic, peft_config=lora_config())
    assert trainer.pipeline.text_encoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in trainer.model.named_parameters() if p.requires_grad)
    full = DDEDiffusionTrainer(str(folder), args=args, train_dataset=pickapic)
    # the reference runs at the policy's precision (fp32 master weights under the same autocast): parity
    assert all(p.dtype == torch.float32 for p in full.model.parameters()) and full.ref_model.dtype == torch.float32
