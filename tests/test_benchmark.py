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
    untouched, _, _ = pretrained_base(scenes, steps=0, output_dir=str(tmp_path / "run0"), cache_dir=tmp_path / "c0")
    trained, path, cached = pretrained_base(scenes, steps=2, output_dir=str(tmp_path / "run"), cache_dir=tmp_path / "cache",
                                      batch_size=4)
    assert not cached and path.is_file() and path.parent == tmp_path / "cache"
    changed = [not torch.equal(a, b) for a, b in zip(trained.unet.parameters(), untouched.unet.parameters())]
    assert any(changed)  # the trainer updated the pipeline's own UNet
    again, _, cached = pretrained_base(scenes, steps=2, output_dir=str(tmp_path / "run"), cache_dir=tmp_path / "cache",
                                    batch_size=4)
    assert cached and len(list((tmp_path / "cache").glob("base-*.pt"))) == 1
    for a, b in zip(again.unet.parameters(), trained.unet.parameters()):
        assert torch.equal(a, b)
    _, _, cached = pretrained_base(scenes, steps=3, output_dir=str(tmp_path / "run"), cache_dir=tmp_path / "cache",
                                batch_size=4)
    assert not cached  # other settings, another base


def test_method_names_map_to_trainer_settings():
    from trl_dde.benchmark.experiment import expand_methods, method_config, segment_methods

    assert method_config("sft") == {"loss_type": "sft", "credit": "uniform"}
    assert method_config("dde-step:mean") == {"credit": "dde-step", "credit_kwargs": {"correction_reduction": "mean"}}
    assert method_config("uniform@200-700") == {"credit": "uniform", "timestep_range": [200, 700]}
    for wrong in ("ddee", "dde-single:mean"):  # dde-single has no correction to reduce
        with pytest.raises(ValueError, match=f"Unknown benchmark method '{wrong}'"):
            method_config(wrong)
    for wrong in ("uniform@700-200", "uniform@0-1001", "uniform@a-b", "uniform@100"):
        with pytest.raises(ValueError, match="uniform@LOW-HIGH"):
            method_config(wrong)
    segments = segment_methods()
    assert segments[0] == "uniform@0-100" and segments[-1] == "uniform@900-1000" and len(segments) == 10
    assert expand_methods(["uniform", "segments", "uniform@0-100"]) == ["uniform"] + segments


def test_claims_get_their_verdicts_from_the_paired_intervals():
    import numpy as np

    from trl_dde.benchmark.report import claims, diversity

    rng = np.random.default_rng(0)
    base = rng.normal(0.6, 0.1, 200)
    per_image = {"base": base, "dde": base + 0.05, "dde-single": base + 0.02 + rng.normal(0, 0.01, 200),
                 "uniform": base + rng.normal(0, 0.05, 200), "dde-step": base - 0.03}
    for low in range(0, 1000, 100):  # middle segments help, outer ones do nothing
        per_image[f"uniform@{low}-{low + 100}"] = base + (0.04 if 200 <= low < 700 else 0.0)
    found = {c["claim"]: c for c in claims(per_image)}
    assert found["dde > dde-single"]["verdict"] == "supported"
    assert found["dde > dde-single"]["difference"] == pytest.approx(0.03, abs=0.003)
    assert found["base > dde-step"]["verdict"] == "supported"
    assert found["uniform > base"]["verdict"] == "not resolved"
    assert found["dde-single > uniform"]["difference"] == pytest.approx(np.mean(per_image["dde-single"] - per_image["uniform"]))
    assert found["middle segments > outer segments"]["difference"] == pytest.approx(0.04)
    assert "sft > base" not in found  # a method that did not run is not judged
    worse = claims({"base": base, "sft": base - 0.1})
    assert worse[0]["verdict"] == "contradicted"
    image = render(all_scenes()[0])
    assert diversity([image, image, render(all_scenes()[1])], ["a", "a", "b"]) == 0.0
    assert diversity([image, render(all_scenes()[1])], ["a", "a"]) > 0.1
    assert diversity([image], ["a"]) is None  # one image per caption: nothing to compare


def test_bad_demo_options_are_refused_by_the_parser(capsys):
    from trl_dde.cli import main

    for argv, message in ((["--seeds", "0"], "--seeds: 0 must be >= 1"), (["--beta", "-1"], "--beta: -1 must be > 0.0"),
                          (["--steps", "x"], "--steps: 'x' is not an integer"),
                          (["--strategies", "uniform@9-3"], "write uniform@LOW-HIGH")):
        with pytest.raises(SystemExit):
            main(["demo", *argv])
        assert message in capsys.readouterr().err


def test_the_demo_refuses_to_run_under_a_distributed_launcher(monkeypatch, tmp_path):
    from trl_dde.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="worker processes"):
        main(["demo", "--quick", "--output_dir", str(tmp_path)])


def test_pretrained_base_beats_an_untrained_one_on_the_checker(tmp_path):
    """150 SFT steps already put the base's held-out samples closer to their captions than an untrained model's
    (paired over the same prompts and noise); the default base (300 steps) is checked in the slow test below."""
    _assert_base_beats_untrained(tmp_path, steps=150)


@pytest.mark.slow
def test_default_base_beats_an_untrained_one_on_the_checker(tmp_path):
    from trl_dde.benchmark.run import DEFAULTS

    _assert_base_beats_untrained(tmp_path, steps=DEFAULTS["pretrain_steps"])


def _assert_base_beats_untrained(tmp_path, steps):
    import numpy as np

    from trl_dde.benchmark.experiment import evaluate, sample
    from trl_dde.benchmark.pretrain import pretrained_base
    from trl_dde.evaluation.statistics import paired_bootstrap_ci

    train, held_out = split_scenes()
    captions = [scene.caption for scene in held_out]
    base, _, _ = pretrained_base(train, steps=steps, output_dir=str(tmp_path / "run"), cache_dir=tmp_path / "cache")
    untrained, _, _ = pretrained_base(train, steps=0, output_dir=str(tmp_path / "run0"), cache_dir=tmp_path / "cache")
    repeated = [caption for caption in captions for _ in range(4)]  # sample() is prompt-major
    trained_fidelity = evaluate(sample(base, captions, 7, 4), repeated)["fidelity"]
    untrained_fidelity = evaluate(sample(untrained, captions, 7, 4), repeated)["fidelity"]
    low, _ = paired_bootstrap_ci(trained_fidelity, untrained_fidelity)
    assert low > 0, (np.mean(trained_fidelity), np.mean(untrained_fidelity))
    assert np.mean(trained_fidelity) < 0.95  # on-prompt but imperfect: something left to align


def test_quick_demo_writes_every_report(tmp_path, capsys, monkeypatch):
    """`trl-dde demo --quick` end to end with a 2-step base and two workers, a strategy of the user's own included
    (a module in the current folder, imported by the worker processes)."""
    from trl_dde.cli import main

    (tmp_path / "my_credit.py").write_text("from trl_dde.credit.uniform import UniformCredit\n\n\n"
                                           "class HalfUniform(UniformCredit):\n"
                                           "    def margin(self, outputs):\n"
                                           "        return 0.5 * super().margin(outputs)\n")
    monkeypatch.chdir(tmp_path)
    main(["demo", "--quick", "--pretrain_steps", "2", "--strategies", "sft", "dde:mean", "uniform@200-300",
          "my_credit:HalfUniform", "--workers", "2", "--cache_dir", str(tmp_path / "cache"),
          "--output_dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "| dde:mean |" in out and "| base |" in out and "{'loss'" not in out
    for name in ("results.md", "results.json", "samples.png", "train_log.jsonl", "reward_curves.png",
                 "credit_profiles.png", "corrections.png", "segments.png"):
        assert (tmp_path / "out" / name).is_file(), name
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(report["results"]) == ["sft", "dde:mean", "uniform@200-300", "my_credit:HalfUniform"]
    assert 0.0 <= report["results"]["sft"]["beat_ratio"]["ratio"] <= 1.0
    assert [step for step, _ in report["reward_curves"]["sft"][0]] == [1, 2]  # --quick trains 2 steps
    assert len(report["corrections"]["dde:mean"][0]) == 1000 and report["corrections"]["sft"] == []
    assert report["base"]["diversity"] is None and "| - |" in out  # --quick: one image per prompt
    assert "| sft > base |" in (tmp_path / "out" / "results.md").read_text()  # its verdict computed from the interval


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_workers(tmp_path):
    """Each run depends only on its (method, seed): one worker and two give the same numbers."""
    from trl_dde.cli import main

    reports = []
    for workers in (1, 2):
        main(["demo", "--quick", "--pretrain_steps", "2", "--seeds", "2", "--strategies", "uniform", "dde",
              "--workers", str(workers), "--cache_dir", str(tmp_path / "cache"),
              "--output_dir", str(tmp_path / f"out{workers}")])
        reports.append(json.loads((tmp_path / f"out{workers}" / "results.json").read_text()))
    assert reports[0]["results"] == reports[1]["results"]
    assert reports[0]["reward_curves"] == reports[1]["reward_curves"]
