"""SD3: prompt encoding as the pipeline's, LoRA and full training for every strategy through the unchanged trainer,
LoRA reloading with ``StableDiffusion3Pipeline.load_lora_weights``, exact resume, precompute, the no-T5 mode."""

import os

import pytest
import torch
from conftest import make_args
from datasets import load_from_disk
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from peft import LoraConfig

from trl_dde import DDEDiffusionTrainer
from trl_dde.families import StableDiffusion3Family, load_pipeline
from trl_dde.processes import FlowMatchingProcess
from trl_dde.tiny import tiny_preference_dataset, tiny_sd3_pipeline

STRATEGIES = ["uniform", "discounted", "dde-single", "dde-step", "dde"]


def sd3_lora(r=4):
    return LoraConfig(r=r, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd3")
    tiny_sd3_pipeline(seed=0).save_pretrained(folder)
    return str(folder)


def transformer_output(transformer, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample, text, pooled = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 109, 32, generator=g), torch.randn(2, 64, generator=g)
    with torch.no_grad():
        return transformer(sample, encoder_hidden_states=text, pooled_projections=pooled, timestep=torch.tensor([30.0, 900.0])).sample


@pytest.mark.parametrize("with_t5", [True, False], ids=["t5", "no-t5"])
def test_prompt_encoding_is_the_pipelines(tmp_path, with_t5):
    tiny_sd3_pipeline(text_encoder_3=with_t5).save_pretrained(tmp_path)
    family = load_pipeline(str(tmp_path))  # the no-T5 folder loads with text_encoder_3=None
    assert isinstance(family, StableDiffusion3Family) and (family.pipeline.text_encoder_3 is None) != with_t5
    conditioning = family.encode_prompts(family.tokenize(["a red disc"]))
    length = 32 if with_t5 else 256  # the tiny T5 tokenizer's model_max_length; the pipeline's zeros otherwise
    expected, _, pooled, _ = family.pipeline.encode_prompt("a red disc", None, None, do_classifier_free_guidance=False,
                                                           max_sequence_length=length)
    torch.testing.assert_close(conditioning["encoder_hidden_states"], expected)
    torch.testing.assert_close(conditioning["pooled_projections"], pooled)
    assert isinstance(family.noise_process(), FlowMatchingProcess)


@pytest.mark.parametrize("credit", STRATEGIES)
def test_sd3_lora_trains_and_reloads_with_load_lora_weights(tmp_path, sd3_folder, credit):
    args = make_args(tmp_path, credit=credit, resolution=32, weighting_scheme="logit_normal", random_flip=True)
    trainer = DDEDiffusionTrainer(sd3_folder, args=args, train_dataset=tiny_preference_dataset(8), peft_config=sd3_lora())
    assert trainer.family.name == "sd3" and isinstance(trainer.process, FlowMatchingProcess)
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    trainer.save_model()
    fresh = StableDiffusion3Pipeline.from_pretrained(sd3_folder)
    before = transformer_output(fresh.transformer)
    fresh.load_lora_weights(trainer.args.output_dir)
    trained = transformer_output(trainer.model.eval())
    assert not torch.allclose(before, trained, atol=1e-4)
    torch.testing.assert_close(transformer_output(fresh.transformer), trained, atol=1e-5, rtol=0)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "sd3" in card and "FlowMatchingProcess" in card and "StableDiffusion3Pipeline" in card


@pytest.mark.parametrize("credit", STRATEGIES)
def test_sd3_full_training_saves_a_transformer_folder(tmp_path, sd3_folder, credit):
    args = make_args(tmp_path, credit=credit, resolution=32, max_steps=2, gradient_checkpointing=True)
    trainer = DDEDiffusionTrainer(sd3_folder, args=args, train_dataset=tiny_preference_dataset(8))
    assert trainer.model.gradient_checkpointing
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    trainer.save_model()
    reloaded = SD3Transformer2DModel.from_pretrained(trainer.args.output_dir, subfolder="transformer")
    torch.testing.assert_close(transformer_output(reloaded), transformer_output(trainer.model.eval()), atol=1e-5, rtol=0)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "full transformer fine-tune" in card and 'subfolder="transformer"' in card


def run(tmp_path, folder, name, resume=None, stop_at=None):
    from test_saving import StopAt

    args = make_args(tmp_path, output_dir=str(tmp_path / name), max_steps=6, per_device_train_batch_size=2,
                     save_strategy="steps", save_steps=3, credit="dde", random_flip=True, resolution=32,
                     weighting_scheme="mode")
    trainer = DDEDiffusionTrainer(folder, args=args, train_dataset=tiny_preference_dataset(8, seed=1),
                                  peft_config=sd3_lora(), callbacks=[StopAt(stop_at)] if stop_at else None)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_sd3_resume_continues_exactly(tmp_path, sd3_folder):
    straight = run(tmp_path, sd3_folder, "straight")
    run(tmp_path, sd3_folder, "interrupted", stop_at=3)
    checkpoint = str(tmp_path / "interrupted" / "checkpoint-3")
    assert os.path.isfile(os.path.join(checkpoint, "credit_state.safetensors"))
    resumed = run(tmp_path, sd3_folder, "interrupted", resume=checkpoint)
    assert resumed.credit.ratios.abs().sum() > 0 and torch.equal(resumed.credit.ratios, straight.credit.ratios)
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    losses = lambda t: [e["loss"] for e in t.state.log_history if "loss" in e]  # noqa: E731
    assert losses(resumed)[-3:] == losses(straight)[-3:]


def test_sd3_precomputed_first_step_equals_on_the_fly(tmp_path):
    folder = tmp_path / "pairs"
    tiny_preference_dataset(8).save_to_disk(str(folder))

    def first_step(**overrides):
        args = make_args(tmp_path, max_steps=1, credit="dde", resolution=32, precompute_cache_dir=str(tmp_path / "cache"),
                         precompute_dtype="float32", **overrides)
        trainer = DDEDiffusionTrainer(tiny_sd3_pipeline(), ref_model=tiny_sd3_pipeline(seed=1).transformer, args=args,
                                      train_dataset=load_from_disk(str(folder)))
        trainer.train()
        return trainer, trainer.state.log_history[0]

    _, on_the_fly = first_step()
    trainer, cached = first_step(precompute_latents=True)
    assert trainer.precomputed is not None and abs(on_the_fly["margin"]) > 1e-6
    assert cached["margin"] == pytest.approx(on_the_fly["margin"], abs=5e-6)
    assert cached["timestep"] == on_the_fly["timestep"]


def test_resolution_must_be_a_multiple_of_vae_factor_times_patch_size(tmp_path, sd3_folder):
    with pytest.raises(ValueError, match="resolution=30 is not a multiple of 4"):
        DDEDiffusionTrainer(sd3_folder, args=make_args(tmp_path, resolution=30), train_dataset=tiny_preference_dataset(4))


def test_ddpm_time_sampling_options_are_refused_for_sd15(tmp_path):
    from trl_dde.tiny import tiny_sd15_pipeline

    with pytest.raises(ValueError, match="DDPM process takes no time-sampling options"):
        DDEDiffusionTrainer(tiny_sd15_pipeline(), args=make_args(tmp_path, weighting_scheme="logit_normal"),
                            train_dataset=tiny_preference_dataset(4))


def test_two_processes_train_sd3_identically_and_share_the_dde_arrays(tmp_path):
    from test_distributed import assert_ranks_identical, launch

    ranks = launch(tmp_path, "sd3")
    assert_ranks_identical(ranks)
    own = [set(r["timesteps"].tolist()) for r in ranks]
    assert own[0] != own[1]
    visited = set(torch.nonzero(ranks[0]["ratios"].abs().sum(dim=0)).flatten().tolist())
    assert visited == own[0] | own[1]


def test_cli_trains_sd3_from_the_example_yaml(tmp_path, sd3_folder):
    from trl_dde.cli import main

    data = tmp_path / "pairs"
    tiny_preference_dataset(8).save_to_disk(str(data))
    example = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "sd3_lora.yaml")
    main(["train", "--config", example, "--model_name_or_path", sd3_folder, "--dataset_name", str(data),
          "--output_dir", str(tmp_path / "run"), "--resolution", "32", "--max_steps", "2", "--gradient_accumulation_steps",
          "1", "--per_device_train_batch_size", "2", "--bf16", "false", "--use_cpu", "true", "--lora_r", "4",
          "--precompute_dtype", "float32", "--precompute_cache_dir", str(tmp_path / "cache"), "--save_strategy", "no",
          "--disable_tqdm", "true"])
    args = torch.load(tmp_path / "run" / "training_args.bin", weights_only=False)
    assert args.weighting_scheme == "logit_normal" and args.credit == "dde"
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_folder)
    pipe.load_lora_weights(str(tmp_path / "run"))
    image = pipe("a red square", num_inference_steps=2, height=32, width=32, output_type="pt", max_sequence_length=32,
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    assert "sd3" in (tmp_path / "run" / "README.md").read_text()


def test_validation_images_are_generated_with_the_trained_transformer(tmp_path):
    args = make_args(tmp_path, resolution=32, max_steps=2, validation_prompts=["a red disc"], validation_steps=2,
                     validation_num_inference_steps=2)
    trainer = DDEDiffusionTrainer(tiny_sd3_pipeline(), args=args, train_dataset=tiny_preference_dataset(8), peft_config=sd3_lora())
    trainer.train()
    assert (tmp_path / "out" / "validation" / "step-000002" / "000_00.png").is_file()
    assert trainer.model.training  # back to train mode after generating
