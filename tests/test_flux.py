"""Flux.1: prompt encoding and the packed transformer call as the pipeline's; LoRA and full training through the
unchanged trainer, LoRA reloading with ``FluxPipeline.load_lora_weights``."""

import pytest
import torch
from conftest import make_args
from diffusers import FluxPipeline, FluxTransformer2DModel
from test_sd3 import STRATEGIES, sd3_lora

from trl_dde import DDEDiffusionTrainer
from trl_dde.families import FluxFamily, load_pipeline
from trl_dde.tiny import tiny_flux_pipeline, tiny_preference_dataset


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-flux")
    tiny_flux_pipeline(seed=0).save_pretrained(folder)
    return str(folder)


def transformer_output(family, transformer, seed=0):
    """Velocity on fixed latents, prompt and σ, through the family's packing (checked against the pipeline's below)."""
    g = torch.Generator().manual_seed(seed)
    conditioning = {"encoder_hidden_states": torch.randn(2, 32, 32, generator=g), "pooled_projections": torch.randn(2, 32, generator=g)}
    with torch.no_grad():
        return family.predict(transformer, torch.randn(2, 4, 16, 16, generator=g), torch.tensor([30.0, 900.0]), conditioning)


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_conditioning_and_packed_call_are_the_pipelines(tmp_path, guidance):
    tiny_flux_pipeline(guidance_embeds=guidance).save_pretrained(tmp_path)
    family = load_pipeline(str(tmp_path))
    pipe = family.pipeline
    assert isinstance(family, FluxFamily)
    conditioning = family.encode_prompts(family.tokenize(["a red disc"]))
    prompt_embeds, pooled, text_ids = pipe.encode_prompt("a red disc", None, max_sequence_length=32)
    torch.testing.assert_close(conditioning["encoder_hidden_states"], prompt_embeds)
    torch.testing.assert_close(conditioning["pooled_projections"], pooled)
    # the pipeline's own latent preparation gives the packed latents and position ids
    packed, image_ids = pipe.prepare_latents(1, 4, 32, 32, torch.float32, "cpu", torch.Generator().manual_seed(0))
    x_t = FluxPipeline._unpack_latents(packed, 32, 32, pipe.vae_scale_factor)
    guidance_value = torch.full([1], 3.5) if guidance else None
    with torch.no_grad():
        expected = pipe.transformer(hidden_states=packed, timestep=torch.tensor([0.7]), guidance=guidance_value,
                                    pooled_projections=pooled, encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
                                    img_ids=image_ids, return_dict=False)[0]
        velocity = family.predict(pipe.transformer, x_t, torch.tensor([700.0]), conditioning)
    torch.testing.assert_close(velocity, FluxPipeline._unpack_latents(expected, 32, 32, pipe.vae_scale_factor))
    # the model time is σ·num_train_timesteps of the scheduler (FlowMatchingProcess.model_timesteps), not σ·1000
    pipe.scheduler.register_to_config(num_train_timesteps=500)
    with torch.no_grad():
        velocity = family.predict(pipe.transformer, x_t, torch.tensor([350.0]), conditioning)
    torch.testing.assert_close(velocity, FluxPipeline._unpack_latents(expected, 32, 32, pipe.vae_scale_factor))


@pytest.mark.parametrize("credit", STRATEGIES)
def test_flux_lora_trains_and_reloads_with_load_lora_weights(tmp_path, flux_folder, credit):
    args = make_args(tmp_path, credit=credit, resolution=32, weighting_scheme="logit_normal", random_flip=True)
    trainer = DDEDiffusionTrainer(flux_folder, args=args, train_dataset=tiny_preference_dataset(8), peft_config=sd3_lora())
    assert trainer.family.name == "flux"
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    trainer.save_model()
    fresh = FluxPipeline.from_pretrained(flux_folder)
    family = FluxFamily(fresh)
    before = transformer_output(family, fresh.transformer)
    fresh.load_lora_weights(trainer.args.output_dir)
    trained = transformer_output(family, trainer.model.eval())
    assert not torch.allclose(before, trained, atol=1e-4)
    torch.testing.assert_close(transformer_output(family, fresh.transformer), trained, atol=1e-5, rtol=0)
    assert "flux" in (tmp_path / "out" / "README.md").read_text()


def test_flux_full_training_saves_a_transformer_folder(tmp_path, flux_folder):
    trainer = DDEDiffusionTrainer(flux_folder, args=make_args(tmp_path, credit="dde", resolution=32, max_steps=2),
                                  train_dataset=tiny_preference_dataset(8))
    trainer.train()
    trainer.save_model()
    reloaded = FluxTransformer2DModel.from_pretrained(trainer.args.output_dir, subfolder="transformer")
    torch.testing.assert_close(transformer_output(trainer.family, reloaded),
                               transformer_output(trainer.family, trainer.model.eval()), atol=1e-5, rtol=0)


def test_flux_resolution_must_be_a_multiple_of_vae_factor_times_packing(tmp_path, flux_folder):
    with pytest.raises(ValueError, match="resolution=30 is not a multiple of 4"):
        DDEDiffusionTrainer(flux_folder, args=make_args(tmp_path, resolution=30), train_dataset=tiny_preference_dataset(4))
