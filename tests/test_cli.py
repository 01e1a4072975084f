"""The trl-dde command: demo, train from YAML on local folders, eval's message, help texts."""

import subprocess
import sys

import pytest
import torch
import yaml
from conftest import LORA_TARGETS
from diffusers import StableDiffusionPipeline

from trl_dde.cli import main, train
from trl_dde.tiny import tiny_preference_dataset


def test_demo_compares_strategies(tmp_path, capsys):
    main(["demo", "--steps", "2", "--pairs", "8", "--batch_size", "4", "--strategies", "uniform", "dde",
          "--output_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "impl.acc" in out and "\nuniform " in out and "\ndde " in out
    assert (tmp_path / "dde" / "pytorch_lora_weights.safetensors").is_file()


def test_train_from_yaml_on_local_folders_and_load_result(tmp_path, pipeline_folder):
    data_folder = tmp_path / "pickapic"
    tiny_preference_dataset(12, tie_every=3).save_to_disk(str(data_folder))
    config = {
        "model_name_or_path": pipeline_folder,
        "dataset_name": str(data_folder),
        "use_peft": True,
        "lora_r": 4,
        "lora_alpha": 4,
        "lora_target_modules": LORA_TARGETS,
        "output_dir": str(tmp_path / "run"),
        "credit": "discounted",
        "credit_kwargs": '{"gamma": 0.95, "mode": "weight"}',
        "timestep_range": [100, 900],
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    main(["train", "--config", str(tmp_path / "cfg.yaml"), "--beta", "2000"])  # flags override the YAML
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_folder, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path / "run"))
    image = pipe("a red square", num_inference_steps=2, height=32, width=32, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    args = torch.load(tmp_path / "run" / "training_args.bin", weights_only=False)
    assert args.beta == 2000 and args.credit_kwargs == {"gamma": 0.95, "mode": "weight"} and args.timestep_range == [100, 900]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["demo", "--help"]])
def test_help_texts(argv):
    result = subprocess.run([sys.executable, "-m", "trl_dde.cli", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    expected = {"--help": ["train", "demo", "eval"], "train": ["--credit", "--credit_kwargs", "--dataset_name", "--use_peft", "--beta"],
                "demo": ["--strategies", "--steps"]}[argv[0]]
    assert all(word in result.stdout for word in expected), result.stdout[-2000:]


def test_example_configs_parse_into_ddeconfig():
    from trl import TrlParser

    from trl_dde import DDEConfig
    from trl_dde.cli import ScriptArguments

    for name in ("sd15_lora.yaml", "sdxl_lora.yaml", "sd15_full_8bit.yaml"):
        script, args = TrlParser((ScriptArguments, DDEConfig)).parse_args_and_config(
            ["--config", f"examples/{name}", "--use_cpu", "true", "--bf16", "false", "--optim", "adamw_torch"])
        assert script.model_name_or_path and script.dataset_name == "yuvalkirstain/pickapic_v2"
        assert args.credit == "dde" and args.activation_checkpointing


def test_compare_script_runs_strategies_on_equal_terms(tmp_path, pipeline_folder):
    data_folder = tmp_path / "data"
    tiny_preference_dataset(8).save_to_disk(str(data_folder))
    config = {"model_name_or_path": pipeline_folder, "dataset_name": str(data_folder), "use_peft": True,
              "lora_target_modules": LORA_TARGETS, "max_steps": 2, "per_device_train_batch_size": 4,
              "report_to": "none", "use_cpu": True, "save_strategy": "no", "logging_steps": 1,
              "output_dir": str(tmp_path / "unused")}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "examples/compare_credit_strategies.py", "--config", str(tmp_path / "cfg.yaml"),
                             "--strategies", "uniform", "dde-single", "--output_dir", str(tmp_path / "cmp")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    table = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(table) == {"uniform", "dde-single"} and all("implicit_acc" in row for row in table.values())


def test_train_cli_streams_a_local_dataset(tmp_path, pipeline_folder):
    data_folder = tmp_path / "pairs"
    tiny_preference_dataset(8).save_to_disk(str(data_folder))
    trainer = train([
        "--model_name_or_path", pipeline_folder, "--dataset_name", str(data_folder), "--dataset_streaming", "true",
        "--use_peft", "true", "--max_steps", "2", "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "run"),
        "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no"])
    assert trainer.state.global_step == 2 and (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()
