"""Diffusers-format outputs reload into fresh pipelines; checkpoints resume exactly."""

import os

import pytest
import torch
from conftest import lora_config, make_args
from diffusers import UNet2DConditionModel
from transformers import TrainerCallback

from trl_dde import DDEDiffusionTrainer
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline


def unet_output(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 700]), encoder_hidden_states=text).sample


def test_saved_lora_loads_with_load_lora_weights(tmp_path, pipeline, pickapic):
    trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path), train_dataset=pickapic, peft_config=lora_config(r=4, alpha=16))
    trainer.train()
    trainer.save_model()
    output_dir = trainer.args.output_dir
    assert os.path.isfile(os.path.join(output_dir, "pytorch_lora_weights.safetensors"))
    trained = unet_output(trainer.model.eval())

    fresh = tiny_sd15_pipeline(seed=0)
    assert not torch.allclose(unet_output(fresh.unet), trained, atol=1e-4)  # training did change the output
    fresh.load_lora_weights(output_dir)
    torch.testing.assert_close(unet_output(fresh.unet), trained, atol=1e-5, rtol=0)


def test_saved_full_unet_reloads(tmp_path, pipeline, pickapic):
    trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path), train_dataset=pickapic)
    trainer.train()
    trainer.save_model()
    reloaded = UNet2DConditionModel.from_pretrained(trainer.args.output_dir, subfolder="unet")
    torch.testing.assert_close(unet_output(reloaded), unet_output(trainer.model.eval()), atol=1e-5, rtol=0)
    fresh = tiny_sd15_pipeline(seed=0)
    assert not torch.allclose(unet_output(fresh.unet), unet_output(reloaded), atol=1e-4)


class StopAt(TrainerCallback):
    """Simulates an interruption: stop after `step` (with a checkpoint there) under an unchanged config."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def run(tmp_path, name, lora, max_steps=8, resume=None, stop_at=None):
    args = make_args(
        tmp_path, output_dir=str(tmp_path / name), max_steps=max_steps, per_device_train_batch_size=2,
        save_strategy="steps", save_steps=4, credit="dde", random_crop=True, random_flip=True, resolution=24,
    )
    data = tiny_preference_dataset(num_pairs=12, image_size=32, seed=1)
    callbacks = [StopAt(stop_at)] if stop_at else None
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), args=args, train_dataset=data,
                                  peft_config=lora_config() if lora else None, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resume_continues_exactly(tmp_path, lora):
    # 8 steps straight cross an epoch boundary (12 pairs / batch 2 = 6 steps per epoch)
    straight = run(tmp_path, "straight", lora)
    run(tmp_path, "interrupted", lora, stop_at=4)
    checkpoint = str(tmp_path / "interrupted" / "checkpoint-4")
    assert os.path.isfile(os.path.join(checkpoint, "credit_state.safetensors"))
    resumed = run(tmp_path, "interrupted", lora, resume=checkpoint)

    assert resumed.credit.ratios.abs().sum() > 0
    assert torch.equal(resumed.credit.ratios, straight.credit.ratios)
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    losses = lambda t: [e["loss"] for e in t.state.log_history if "loss" in e]  # noqa: E731
    assert losses(resumed)[-4:] == losses(straight)[-4:]


def test_resume_with_another_strategy_is_refused(tmp_path):
    run(tmp_path, "a", lora=True, stop_at=4)
    args = make_args(tmp_path, output_dir=str(tmp_path / "a"), max_steps=8, credit="uniform")
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=args, train_dataset=tiny_preference_dataset(8), peft_config=lora_config())
    with pytest.raises(ValueError, match="credit='dde'"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))


def test_push_to_hub_uploads_a_loadable_adapter_with_a_model_card(tmp_path, pipeline, pickapic, monkeypatch):
    """The Hub is replaced at the network boundary: create_repo answers, upload_folder copies to a local 'repo'."""
    import shutil

    import yaml
    from huggingface_hub import HfApi
    from huggingface_hub.repocard import RepoCard

    uploaded = tmp_path / "hub" / "alice" / "tiny-dde"

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, ignore_patterns=None, **kwargs):
        assert repo_id == "alice/tiny-dde"
        shutil.copytree(folder_path, uploaded, ignore=shutil.ignore_patterns(*(ignore_patterns or [])))
        return "https://huggingface.co/alice/tiny-dde"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    args = make_args(tmp_path, credit="dde", credit_kwargs={"correction_reduction": "mean"}, save_strategy="steps",
                     save_steps=2, push_to_hub=True, hub_model_id="alice/tiny-dde", hub_strategy="end")
    trainer = DDEDiffusionTrainer(pipeline, args=args, train_dataset=pickapic, peft_config=lora_config(r=4, alpha=4))
    trainer.train()
    trainer.push_to_hub(dataset_name="yuvalkirstain/pickapic_v2", base_model="stable-diffusion-v1-5/stable-diffusion-v1-5")

    assert not any(path.name.startswith("checkpoint-") for path in uploaded.iterdir())
    fresh = tiny_sd15_pipeline(seed=0)
    fresh.load_lora_weights(str(uploaded))
    torch.testing.assert_close(unet_output(fresh.unet), unet_output(trainer.model.eval()), atol=1e-5, rtol=0)

    card = RepoCard.load(uploaded / "README.md")
    metadata = card.data.to_dict()
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "text-to-image"
    assert metadata["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert metadata["datasets"] == ["yuvalkirstain/pickapic_v2"]
    assert {"trl", "trl-dde", "diffusers", "dpo", "lora", "dde", "sd-1.5"} <= set(metadata["tags"])
    body = card.text
    assert "correction_reduction='mean'" in body and "| `beta` | `5000.0` |" in body
    assert "pipe.load_lora_weights(\"alice/tiny-dde\")" in body
    assert "| `implicit_acc` |" in body and "arXiv:2411.14871" in body and "Diffusion Model Alignment Using Direct Preference" in body
    assert yaml.safe_load((uploaded / "README.md").read_text().split("---")[1])["library_name"] == "diffusers"


def test_resume_true_takes_the_last_checkpoint(tmp_path):
    run(tmp_path, "auto", lora=True, stop_at=4)
    resumed = run(tmp_path, "auto", lora=True, resume=True)
    assert resumed.state.global_step == 8
    assert [e["step"] for e in resumed.state.log_history if "loss" in e] == list(range(1, 9))  # 1-4 from the checkpoint


def test_save_uses_a_given_full_state_dict(tmp_path, pipeline):
    """Under FSDP transformers hands _save the gathered state dict; it must be what is written."""
    from trl_dde.families import StableDiffusionFamily

    state_dict = {k: torch.full_like(v, 0.5) for k, v in pipeline.unet.state_dict().items()}
    StableDiffusionFamily(pipeline).save_full(pipeline.unet, str(tmp_path / "full"), state_dict)
    reloaded = UNet2DConditionModel.from_pretrained(str(tmp_path / "full"), subfolder="unet")
    assert all(torch.all(v == 0.5) for v in reloaded.state_dict().values())
