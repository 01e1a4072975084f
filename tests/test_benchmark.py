"""The benchmark world: the renderer and the checker agree on every scene; the preference prefers what it says."""

import json
from dataclasses import asdict, replace

import pytest

from trl_dde.benchmark.preference import preference_label, preference_score
from trl_dde.benchmark.world import ATTRIBUTES, all_scenes, check, fidelity, parse_caption, render, split_scenes
from trl_dde.evaluation.rewards import load_reward


@pytest.mark.parametrize("noise", [0.0, 8.0])
def test_checker_reads_back_every_attribute_of_every_scene(noise):
    for scene in all_scenes():
        assert check(render(scene, noise=noise, seed=3)) == asdict(scene), scene.caption


def test_rendering_is_deterministic_and_captions_round_trip():
    scene = all_scenes()[17]
    assert render(scene, noise=10, seed=1).tobytes() == render(scene, noise=10, seed=1).tobytes()
    assert render(scene, noise=10, seed=1).tobytes() != render(scene, noise=10, seed=2).tobytes()
    assert parse_caption(scene.caption) == scene
    train, held_out = split_scenes()
    assert not set(train) & set(held_out) and len(train) + len(held_out) == 96
    for name in ATTRIBUTES:  # held-out prompts cover every value of every attribute
        assert {getattr(s, name) for s in held_out} == {getattr(s, name) for s in all_scenes()}


def test_checker_tells_a_wrong_attribute_apart():
    scene = all_scenes()[0]
    for name in ATTRIBUTES:
        values = {getattr(s, name) for s in all_scenes()} - {getattr(scene, name)}
        wrong = replace(scene, **{name: sorted(values)[0]})
        assert fidelity(render(wrong), scene.caption) == pytest.approx(0.8), name


def test_a_caption_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="not a caption of the benchmark world"):
        parse_caption("a purple circle")


def test_preference_prefers_fidelity_then_a_clean_background():
    scene = all_scenes()[5]
    clean, speckled = render(scene), render(scene, noise=16, seed=0)
    wrong = render(replace(scene, color="blue" if scene.color != "blue" else "red"))
    assert preference_label(clean, speckled, scene.caption) == 1.0
    assert preference_label(speckled, clean, scene.caption) == 0.0
    assert preference_label(wrong, speckled, scene.caption) == 0.0  # fidelity outweighs style
    assert preference_label(clean, render(scene, noise=0.5, seed=1), scene.caption) == 0.5  # a tie
    reward = load_reward("benchmark-preference")
    scores = reward([clean, speckled], [scene.caption] * 2)
    assert scores[0] == pytest.approx(preference_score(clean, scene.caption)) == pytest.approx(1.15)
    assert scores[0] > scores[1]


def test_pixel_autoencoder_is_lossless_and_the_pipeline_generates_32px_images():
    import torch

    from trl_dde.benchmark.pipeline import LATENT_CHANNELS, benchmark_pipeline

    pipeline = benchmark_pipeline(seed=0)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = pipeline.vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, LATENT_CHANNELS, 16, 16)
    torch.testing.assert_close(pipeline.vae.decode(latents).sample, pixels, atol=1e-5, rtol=0)
    images = pipeline([all_scenes()[0].caption], num_inference_steps=2, guidance_scale=1.0, output_type="pil",
                      generator=torch.Generator().manual_seed(0)).images
    assert images[0].size == (32, 32)


def test_pretraining_runs_through_the_trainer_and_is_cached_by_its_settings(tmp_path):
    import torch

    from trl_dde.benchmark.pretrain import pretrained_base

    scenes = all_scenes()[:4]
    untouched, _ = pretrained_base(scenes, steps=0, output_dir=str(tmp_path / "run0"), cache_dir=tmp_path / "c0")
    trained, cached = pretrained_base(scenes, steps=2, output_dir=str(tmp_path / "run"), cache_dir=tmp_path / "cache",
                                      batch_size=4)
    assert not cached
    changed = [not torch.equal(a, b) for a, b in zip(trained.unet.parameters(), untouched.unet.parameters())]
    assert any(changed)  # the trainer updated the pipeline's own UNet
    again, cached = pretrained_base(scenes, steps=2, output_dir=str(tmp_path / "run"), cache_dir=tmp_path / "cache",
                                    batch_size=4)
    assert cached and len(list((tmp_path / "cache").glob("base-*.pt"))) == 1
    for a, b in zip(again.unet.parameters(), trained.unet.parameters()):
        assert torch.equal(a, b)
    _, cached = pretrained_base(scenes, steps=3, output_dir=str(tmp_path / "run"), cache_dir=tmp_path / "cache",
                                batch_size=4)
    assert not cached  # other settings, another base


def test_method_names_map_to_trainer_settings():
    from trl_dde.benchmark.experiment import method_config

    assert method_config("sft") == {"loss_type": "sft", "credit": "uniform"}
    assert method_config("dde-step:mean") == {"credit": "dde-step", "credit_kwargs": {"correction_reduction": "mean"}}
    assert method_config("uniform@200-700") == {"credit": "uniform", "timestep_range": [200, 700]}
    for wrong in ("ddee", "dde-single:mean"):  # dde-single has no correction to reduce
        with pytest.raises(ValueError, match=f"Unknown benchmark method '{wrong}'"):
            method_config(wrong)


def test_quick_demo_writes_every_report(tmp_path, capsys):
    """`trl-dde demo --quick` end to end with a 2-step base (about 7 s)."""
    from trl_dde.cli import main

    main(["demo", "--quick", "--pretrain_steps", "2", "--strategies", "sft", "dde:mean",
          "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "| dde:mean |" in out and "| base |" in out and "{'loss'" not in out
    for name in ("results.md", "results.json", "samples.png", "train_log.jsonl"):
        assert (tmp_path / "out" / name).is_file(), name
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(report["results"]) == {"sft", "dde:mean"}
    assert 0.0 <= report["results"]["sft"]["beat_ratio"]["ratio"] <= 1.0
