"""`trl-dde eval` end to end on a saved tiny base pipeline, tiny adapters (trained and untouched) and a full
UNet, scored by tiny scorers saved in the real layouts and by a user reward file."""

import json

import numpy as np
import pytest
import torch
from conftest import lora_config, make_args
from PIL import Image

from trl_dde import DDEDiffusionTrainer
from trl_dde.cli import main
from trl_dde.evaluation.generation import GenerationSettings, ModelSpec, PairedImages, image_seed, parse_model_spec
from trl_dde.evaluation.tiny import save_tiny_scorers
from trl_dde.tiny import tiny_preference_dataset

USER_REWARD = """
import numpy as np

def redness(images, prompts):
    return [float(np.asarray(image)[..., 0].mean()) for image in images]
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory, pipeline_folder):
    """Adapters written by the trainer: untouched (LoRA B = 0, saved before training) and trained for 2 steps;
    and a full UNet with a changed output bias, in a full fine-tune's output layout."""
    root = tmp_path_factory.mktemp("models")
    trainer = DDEDiffusionTrainer(pipeline_folder, args=make_args(root / "run", max_steps=2, learning_rate=1e-2),
                                  train_dataset=tiny_preference_dataset(8), peft_config=lora_config())
    trainer.save_model(str(root / "untouched"))
    trainer.train()
    trainer.save_model(str(root / "trained"))
    unet = trainer.pipeline.unet
    unet.unload_lora()
    with torch.no_grad():
        unet.conv_out.bias.add_(0.5)
    unet.save_pretrained(root / "full" / "unet")
    return root


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, pipeline_folder, models):
    root = tmp_path_factory.mktemp("eval")
    scorers = save_tiny_scorers(root / "scorers")
    (root / "user_reward.py").write_text(USER_REWARD)
    output = root / "out"
    argv = ["eval", "--model", pipeline_folder, "--adapter", f"{models}/untouched", f"tuned={models}/trained",
            "--unet", f"full={models}/full", "--prompts", "builtin", "--max_prompts", "2", "--num_images_per_prompt", "2",
            "--num_inference_steps", "2", "--batch_size", "4", "--device", "cpu", "--output_dir", str(output),
            "--scorers", "pickscore", "hpsv2", f"{root}/user_reward.py:redness",
            "--scorer_kwargs", json.dumps({name: scorers[name] for name in ("pickscore", "hpsv2")})]
    return output, argv


def pixels(path):
    return np.asarray(Image.open(path))


def test_eval_writes_the_report_and_pairs_images_by_seed(evaluation, capsys):
    output, argv = evaluation
    main(argv)
    printed = capsys.readouterr().out
    assert "| model | pickscore | pickscore beat % | hpsv2.1 |" in printed and "Report:" in printed

    images = PairedImages.load(output)
    assert images.labels == ["base", "untouched", "tuned", "full"] and len(images.items) == 4
    for p, j, _ in images.items:
        base = pixels(images.path("base", p, j))
        assert np.array_equal(base, pixels(images.path("untouched", p, j)))  # zero adapter: the same model
        assert not np.array_equal(base, pixels(images.path("tuned", p, j)))  # trained adapter: different images
        assert not np.array_equal(base, pixels(images.path("full", p, j)))

    report = (output / "report.md").read_text()
    assert "| base |" in report and "| tuned |" in report and "HPS v2.1" in report and "redness" in report
    rows = (output / "scores.csv").read_text().splitlines()
    assert rows[0] == "model,prompt_index,image_index,seed,prompt,image,pickscore,hpsv2.1,redness"
    assert len(rows) == 1 + 4 * 4
    data = json.loads((output / "scores.json").read_text())
    untouched = data["summary"]["comparisons"]["untouched"]
    assert all(c["ratio"] == 0.5 and c["ties"] == 4 and c["mean_difference"] == 0.0 for c in untouched.values())
    assert data["scorers"]["hpsv2.1"].startswith("HPS v2.1")
    base_redness = [row["redness"] for row in data["images"] if row["model"] == "base"]
    expected = [pixels(images.path("base", p, j))[..., 0].mean() for p, j, _ in images.items]
    np.testing.assert_allclose(base_redness, expected, rtol=1e-6)
    grid = Image.open(output / "grid.png")
    assert grid.width > 4 * 64 and grid.height > 4 * 64  # 4 rows (prompt, image), 4 model columns

    # score again, with another reward, from the images on disk: nothing is generated
    before = {path: path.stat().st_mtime_ns for path in (output / "images").rglob("*.png")}
    main(["eval", "--rescore", "--output_dir", str(output), "--scorers", argv[argv.index("--scorers") + 3]])
    assert {path: path.stat().st_mtime_ns for path in (output / "images").rglob("*.png")} == before
    assert list(json.loads((output / "scores.json").read_text())["scorers"]) == ["redness"]


def test_eval_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for option in ("--model", "--adapter", "--unet", "--prompts", "--scorers", "--num_images_per_prompt", "--seed",
                   "--num_inference_steps", "--guidance_scale", "--output_dir", "--rescore", "--diagnostics"):
        assert option in out, option


def test_seeds_belong_to_the_prompt_and_image_index():
    assert image_seed(0, 3, 1) == image_seed(0, 3, 1)
    assert len({image_seed(0, p, j) for p in range(10) for j in range(4)}) == 40
    assert image_seed(1, 0, 0) != image_seed(0, 0, 0)


def test_bad_eval_requests_fail_before_anything_is_loaded(tmp_path, capsys, pipeline_folder):
    with pytest.raises(SystemExit, match="--model .* is required"):
        main(["eval", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"unknown scorer\(s\) \['pickscor'\]"):
        main(["eval", "--model", "x", "--scorers", "pickscor"])
    with pytest.raises(SystemExit, match="options for \\['hpsv2'\\]"):
        main(["eval", "--model", "x", "--scorers", "clip", "--scorer_kwargs", '{"hpsv2": {}}'])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no LoRA weights"):
        main(["eval", "--model", pipeline_folder, "--adapter", str(tmp_path / "empty"), "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="missing is not a pipeline folder: it has no model_index.json"):
        main(["eval", "--model", str(tmp_path / "missing"), "--output_dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="has no generation.json"):
        main(["eval", "--rescore", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="exactly one of adapter"):
        ModelSpec("x")
    assert parse_model_spec("runs/dde-lora/", "adapter") == ModelSpec("dde-lora", adapter="runs/dde-lora/")
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        GenerationSettings(guidance_scale=-1)


def test_a_flow_matching_full_fine_tune_is_compared_from_its_transformer_folder(tmp_path):
    """SD3/Flux full fine-tunes are saved as ``transformer/``: ``--unet RUN`` takes that folder like ``unet/``."""
    from trl_dde.evaluation.generation import generate_paired
    from trl_dde.tiny import tiny_sd3_pipeline

    tuned = tiny_sd3_pipeline(seed=0).transformer
    with torch.no_grad():
        tuned.proj_out.bias.add_(0.5)
    tuned.save_pretrained(tmp_path / "full" / "transformer")
    spec = parse_model_spec(f"full={tmp_path / 'full'}", "unet")
    spec.check()
    paired = generate_paired(tiny_sd3_pipeline(seed=0), [spec], ["a red square"], tmp_path / "eval",
                             GenerationSettings(num_images_per_prompt=1, num_inference_steps=2, resolution=32),
                             device="cpu", progress=False)
    base, full = (pixels(paired.path(label, 0, 0)) for label in ("base", "full"))
    assert base.shape == full.shape == (32, 32, 3) and not np.array_equal(base, full)
    with pytest.raises(FileNotFoundError, match="transformer/"):
        parse_model_spec(f"empty={tmp_path / 'eval'}", "unet").check()
