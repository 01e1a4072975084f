"""SDXL: two text encoders, pooled embeddings, micro-conditioning, fp32 VAE; LoRA export for the XL pipeline."""

import pytest
import torch
from conftest import lora_config, make_args
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

from trl_dde import DDEDiffusionTrainer
from trl_dde.families import StableDiffusionXLFamily
from trl_dde.tiny import tiny_preference_dataset, tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    tiny_sdxl_pipeline(seed=0).save_pretrained(folder)
    return str(folder)


def xl_unet_output(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 64, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 700]), encoder_hidden_states=text, added_cond_kwargs=added).sample


def test_prompt_embeddings_concatenate_penultimate_states_and_pool_encoder_2():
    pipe = tiny_sdxl_pipeline()
    family = StableDiffusionXLFamily(pipe)
    token_ids = family.tokenize(["a red disc"])
    ids = (token_ids["input_ids"], token_ids["input_ids_2"])
    embeddings = family.encode_prompts(token_ids)
    with torch.no_grad():
        one = pipe.text_encoder(ids[0], output_hidden_states=True).hidden_states[-2]
        two = pipe.text_encoder_2(ids[1], output_hidden_states=True)
    torch.testing.assert_close(embeddings["encoder_hidden_states"], torch.cat([one, two.hidden_states[-2]], dim=-1))
    torch.testing.assert_close(embeddings["text_embeds"], two.text_embeds)
    # the same as the pipeline's own prompt encoding
    reference, _, pooled, _ = pipe.encode_prompt("a red disc", do_classifier_free_guidance=False)
    torch.testing.assert_close(embeddings["encoder_hidden_states"], reference)
    torch.testing.assert_close(embeddings["text_embeds"], pooled)


@pytest.mark.parametrize("credit", ["uniform", "discounted", "dde-single", "dde-step", "dde"])
def test_sdxl_lora_trains_and_reloads_with_load_lora_weights(tmp_path, sdxl_folder, credit):
    data = tiny_preference_dataset(8)
    args = make_args(tmp_path, credit=credit, random_crop=True, random_flip=True, resolution=24)
    trainer = DDEDiffusionTrainer(sdxl_folder, args=args, train_dataset=data, peft_config=lora_config(r=4, alpha=8))
    assert trainer.family.name == "sdxl" and isinstance(trainer.pipeline, StableDiffusionXLPipeline)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["crop_info_w"].shape == (2, 6) and "input_ids_2" in batch
    assert torch.equal(trainer.family.image_conditioning(batch["crop_info_w"])["time_ids"], batch["crop_info_w"])
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    trainer.save_model()
    fresh = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    before = xl_unet_output(fresh.unet)
    fresh.load_lora_weights(trainer.args.output_dir)
    trained = xl_unet_output(trainer.model.eval())
    assert not torch.allclose(before, trained, atol=1e-4)
    torch.testing.assert_close(xl_unet_output(fresh.unet), trained, atol=1e-5, rtol=0)


def test_sdxl_full_training_and_unet_reload(tmp_path, sdxl_folder):
    trainer = DDEDiffusionTrainer(sdxl_folder, args=make_args(tmp_path, credit="dde"), train_dataset=tiny_preference_dataset(8))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    trainer.save_model()
    reloaded = UNet2DConditionModel.from_pretrained(trainer.args.output_dir, subfolder="unet")
    torch.testing.assert_close(xl_unet_output(reloaded), xl_unet_output(trainer.model.eval()), atol=1e-5, rtol=0)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "sdxl" in card and "StableDiffusionXLPipeline" in card


def test_sdxl_vae_stays_fp32_unless_an_fp16_safe_vae_is_given(tmp_path, sdxl_folder):
    data = tiny_preference_dataset(8)
    trainer = DDEDiffusionTrainer(sdxl_folder, args=make_args(tmp_path, bf16=True, max_steps=1), train_dataset=data, peft_config=lora_config())
    assert trainer.pipeline.vae.dtype == torch.float32
    assert trainer.pipeline.text_encoder_2.dtype == torch.bfloat16 and trainer.model.dtype == torch.bfloat16
    trainer.train()  # bf16 autocast with a fp32 VAE and fp32 LoRA weights
    custom = DDEDiffusionTrainer(sdxl_folder, args=make_args(tmp_path, bf16=True, vae=sdxl_folder), train_dataset=data, peft_config=lora_config())
    assert custom.pipeline.vae.dtype == torch.bfloat16
