"""precompute_latents: the cached path reproduces the on-the-fly loss, reuses its cache, keeps flips."""

import pytest
import torch
from conftest import lora_config, make_args
from datasets import Dataset, load_from_disk

from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline, tiny_sdxl_pipeline


@pytest.fixture
def saved_pairs(tmp_path):
    """A dataset loaded from disk: its fingerprint is stable across runs, like a Hub dataset's."""
    folder = tmp_path / "pairs"
    tiny_preference_dataset(12, tie_every=4).save_to_disk(str(folder))
    return str(folder)


def first_step_loss(tmp_path, pipeline, data, ref_model=None, **overrides):
    args = make_args(tmp_path, max_steps=1, credit="dde", precompute_cache_dir=str(tmp_path / "cache"),
                     precompute_dtype="float32", **overrides)
    peft_config = None if ref_model is not None else lora_config()
    trainer = DDEDiffusionTrainer(pipeline, ref_model=ref_model, args=args, train_dataset=data, peft_config=peft_config)
    trainer.train()
    return trainer, trainer.state.log_history[0]


@pytest.mark.parametrize("make_pipeline", [tiny_sd15_pipeline, tiny_sdxl_pipeline], ids=["sd15", "sdxl"])
def test_first_step_loss_from_the_cache_equals_the_on_the_fly_loss(tmp_path, saved_pairs, make_pipeline):
    # full fine-tuning against another UNet: a non-zero margin, so the loss depends on the latents
    _, on_the_fly = first_step_loss(tmp_path, make_pipeline(), load_from_disk(saved_pairs), ref_model=make_pipeline(seed=1).unet)
    trainer, cached = first_step_loss(tmp_path, make_pipeline(), load_from_disk(saved_pairs), ref_model=make_pipeline(seed=1).unet,
                                      precompute_latents=True)
    assert trainer.precomputed is not None and "posterior_w" in trainer.train_dataset[0]
    assert abs(on_the_fly["margin"]) > 1e-6 and on_the_fly["loss"] != pytest.approx(0.693147, abs=1e-4)
    # equal up to float rounding: the encoders see other batch compositions when caching (~1e-5 relative); the
    # margin is a difference of O(1) errors, so its rounding is absolute (~1e-6), far below its size (~1e-3), and
    # the loss sees it multiplied by beta = 5000
    for key in ("mse/policy_chosen", "mse/ref_rejected", "timestep"):
        assert cached[key] == pytest.approx(on_the_fly[key], rel=1e-4, abs=1e-9), key
    assert cached["margin"] == pytest.approx(on_the_fly["margin"], abs=5e-6)
    assert cached["loss"] == pytest.approx(on_the_fly["loss"], abs=5000 * 5e-6)


def test_a_second_run_reuses_the_cache(tmp_path, saved_pairs):
    first, _ = first_step_loss(tmp_path, tiny_sd15_pipeline(), load_from_disk(saved_pairs), precompute_latents=True)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(name.startswith("pairs-") for name in files) and any(name.startswith("prompts-") for name in files)

    pipeline = tiny_sd15_pipeline()  # same weights, so the same cache key

    def no_encoding(*args, **kwargs):
        raise AssertionError("the VAE was called although the cache exists")

    pipeline.vae.encode = no_encoding
    pipeline.text_encoder.forward = no_encoding
    second, _ = first_step_loss(tmp_path, pipeline, load_from_disk(saved_pairs), precompute_latents=True)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == files
    assert torch.equal(second.train_dataset[3]["posterior_w"], first.train_dataset[3]["posterior_w"])
    # other weights are another model: a new cache
    first_step_loss(tmp_path, tiny_sd15_pipeline(seed=5), load_from_disk(saved_pairs), precompute_latents=True)
    assert len(list((tmp_path / "cache").iterdir())) > len(files)


def test_cached_flip_variant_is_the_mirrored_image(tmp_path, saved_pairs):
    trainer, _ = first_step_loss(tmp_path, tiny_sd15_pipeline(), load_from_disk(saved_pairs), precompute_latents=True,
                                 precompute_flip=True, random_flip=True, precompute_vae="mean")
    row = trainer.train_dataset[0]
    vae = trainer.pipeline.vae
    assert row["posterior_w"].shape[0] == 4  # the mean only
    assert not torch.allclose(row["posterior_w"], row["posterior_w_flip"])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    flips = [torch.equal(batch["posterior_w"][i], trainer.train_dataset[i]["posterior_w_flip"]) for i in range(6)]
    assert any(flips) and not all(flips)  # each pair takes the mirrored variant with probability 1/2
    # the flipped variant is the VAE mean of the mirrored picture
    from trl_dde.data import load_image, paired_transform

    data = load_from_disk(saved_pairs).filter(lambda r: r["label_0"] != 0.5)
    winner = "jpg_0" if data[0]["label_0"] == 1 else "jpg_1"
    image = load_image(data[0][winner])
    mirrored, _ = paired_transform((image, image), 32, flip=True)
    with torch.no_grad():
        expected = vae.encode(mirrored[:1]).latent_dist.mean[0]
    torch.testing.assert_close(row["posterior_w_flip"].float(), expected, atol=1e-5, rtol=1e-4)


def test_corrupt_images_are_dropped_before_precompute(tmp_path):
    rows = tiny_preference_dataset(8).to_dict()
    rows["jpg_1"][2] = b"broken"
    data = Dataset.from_dict(rows, features=tiny_preference_dataset(1).features)
    trainer, _ = first_step_loss(tmp_path, tiny_sd15_pipeline(), data, precompute_latents=True)
    assert len(trainer.train_dataset) == 7 and trainer.corrupt_skipped == 1


@pytest.mark.parametrize("overrides, message", [
    ({"random_crop": True}, "random_crop cannot be applied"),
    ({"random_flip": True}, "precompute_flip=True"),
])
def test_augmentations_that_cannot_be_cached_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DDEConfig(output_dir=str(tmp_path), precompute_latents=True, **overrides)


def test_streams_cannot_be_precomputed(tmp_path):
    stream = tiny_preference_dataset(4).to_iterable_dataset()
    with pytest.raises(ValueError, match="stream cannot be encoded ahead"):
        DDEDiffusionTrainer(tiny_sd15_pipeline(), args=make_args(tmp_path, precompute_latents=True), train_dataset=stream,
                            peft_config=lora_config())
