"""The trl-dde command: demo, train from YAML and local data, eval's message, help texts, a quiet terminal."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import LORA_TARGETS
from datasets import Dataset, DatasetDict
from diffusers import StableDiffusionPipeline

from trl_dde.cli import load_preference_split, main, train
from trl_dde.credit import registry
from trl_dde.tiny import tiny_preference_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# subprocesses import this checkout's trl_dde, whatever is installed
ENVIRONMENT = {**os.environ, "PYTHONPATH": REPO}
FAST = ["--use_peft", "true", "--lora_target_modules", *LORA_TARGETS, "--per_device_train_batch_size", "2",
        "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true"]

USER_CREDIT = """
from trl_dde import CreditAssigner
from trl_dde.credit.uniform import epsilon_margin


class DoubledUniform(CreditAssigner):
    def __init__(self, alphas_cumprod, timestep_range=None, factor: float = 2.0):
        super().__init__(alphas_cumprod, timestep_range)
        self.factor = factor

    def margin(self, outputs):
        return self.factor * epsilon_margin(outputs)
"""


def run_cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "trl_dde.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env=ENVIRONMENT, cwd=REPO)


@pytest.fixture
def user_credit_folder(tmp_path, monkeypatch):
    """The current folder holds ``my_credits.py``; sys.path and the module cache are restored afterwards."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_credits.py").write_text(USER_CREDIT)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(registry.CREDITS, "_classes", dict(registry.CREDITS._classes))
    yield folder
    sys.modules.pop("my_credits", None)


def test_demo_takes_a_users_strategy_by_class_path(user_credit_folder, capsys):
    """Missing 7: `trl-dde demo --strategies package.module:Class`, found in the current folder."""
    from trl_dde.benchmark.experiment import method_config

    sys.path.insert(0, str(user_credit_folder))  # what `trl-dde demo` does for the current folder
    assert method_config("my_credits:DoubledUniform") == {"credit": "my_credits:DoubledUniform"}
    with pytest.raises(SystemExit):
        main(["demo", "--strategies", "my_credits:DoubledUnifrom"])
    assert "Did you mean 'DoubledUniform'" in capsys.readouterr().err


def test_train_takes_a_users_strategy_by_class_path(user_credit_folder, pipeline_folder):
    """Missing 7: `trl-dde train --credit package.module:Class` with the class's own options."""
    tiny_preference_dataset(4).save_to_disk("pairs")
    trainer = train(["--model_name_or_path", pipeline_folder, "--dataset_name", "pairs", "--max_steps", "1",
                     "--output_dir", "run", "--credit", "my_credits:DoubledUniform", "--credit_kwargs",
                     '{"factor": 3.0}', *FAST])
    assert type(trainer.credit).__name__ == "DoubledUniform" and trainer.credit.factor == 3.0
    assert trainer.credit.name == "my_credits:DoubledUniform" and trainer.state.global_step == 1


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
def test_help_texts_print_no_warning(argv):
    """Friction 9 and 12: nothing on stderr (no third-party notices); `train --help` lists --config too."""
    result = run_cli(*argv)
    assert result.returncode == 0
    expected = {"--help": ["train", "demo", "eval"],
                "train": ["--config FILE.yaml", "--credit", "--credit_kwargs", "--dataset_name", "--use_peft", "--beta",
                          "--learning_rate_per_pair", "package.module:ClassName"],
                "demo": ["--strategies", "--steps"]}[argv[0]]
    assert all(word in result.stdout for word in expected), result.stdout[-2000:]
    assert result.stderr == ""


def test_top_level_help_imports_no_heavy_library():
    """`trl-dde --help` stays fast by importing nothing it does not need (measured, not timed, here)."""
    code = ("import sys\nfrom trl_dde.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'datasets', 'peft') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENVIRONMENT, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_importing_trl_dde_and_its_trainer_is_silent():
    code = "import trl_dde\nfrom trl_dde import DDEConfig, DDEDiffusionTrainer, get_credit\nprint(DDEDiffusionTrainer.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENVIRONMENT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "DDEDiffusionTrainer" and result.stderr == "", result.stderr


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize(
    "logger_name, noise, real",
    [
        ("diffusers.models.modeling_utils",
         "There are modules in AutoencoderKL that should be kept in float32: []. Casting directly with `to()` ...",
         "There are modules in AutoencoderKL that should be kept in float32: ['norm']. Casting directly ..."),
        ("bitsandbytes.backends.cpu.ops",
         "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make sure",
         "Some other bitsandbytes warning"),
        ("transformers.utils.import_utils",
         "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` for ...",
         "`CLIPImageProcessor` is deprecated"),
    ],
)
def test_only_the_known_noise_is_silenced(logger_name, noise, real):
    import trl_dde  # noqa: F401  installs the filters

    logger, collect = logging.getLogger(logger_name), Collect()
    logger.addHandler(collect)
    try:
        logger.warning(noise)
        logger.warning(real)
    finally:
        logger.removeHandler(collect)
    assert collect.messages == [real]


def test_bf16_casts_print_no_empty_float32_warning(pipeline, capfd):
    """diffusers warns about an empty list of float32 modules on every `.to(bfloat16)`; the trainer casts that way."""
    pipeline.vae.to(torch.bfloat16)
    pipeline.unet.to(torch.bfloat16)
    assert "kept in float32" not in capfd.readouterr().err


EXAMPLES = ("sd15_lora.yaml", "sdxl_lora.yaml", "sd15_full_8bit.yaml", "sd3_lora.yaml")


def parse_example(name, *overrides):
    from trl import TrlParser

    from trl_dde import DDEConfig
    from trl_dde.cli import ScriptArguments

    return TrlParser((ScriptArguments, DDEConfig)).parse_args_and_config(
        ["--config", os.path.join(REPO, "examples", name), "--use_cpu", "true", "--bf16", "false",
         "--optim", "adamw_torch", *overrides])


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_configs_parse_into_ddeconfig(name):
    script, args = parse_example(name)
    assert script.model_name_or_path and script.dataset_name == "yuvalkirstain/pickapic_v2"
    assert args.credit == "dde" and args.activation_checkpointing


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_learning_rates_are_in_the_range_their_sources_use(name):
    """Bug 3: the full fine-tune trained at 2.05e-8, 1000x below the paper; every example's effective rate is checked."""
    processes = yaml.safe_load(open(os.path.join(REPO, "examples", "accelerate_configs", "multi_gpu.yaml")))["num_processes"]
    _, args = parse_example(name)
    rate = (args.learning_rate_per_pair * args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
            if args.learning_rate_per_pair else args.learning_rate)
    assert 1e-6 <= rate <= 1e-4, rate  # Diffusion-DPO/DDE full fine-tunes: 2.048e-5; diffusers' LoRA recipes: 1e-5


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_need_no_logging_package(name, monkeypatch):
    """Bug 11: the YAMLs set report_to: tensorboard, which stopped every run without tensorboard installed."""
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: [])
    _, args = parse_example(name)
    assert args.report_to in ([], ["none"], "none")


def test_the_full_fine_tune_example_is_the_papers_setting():
    """DDE Suppl. 8.1 / Diffusion-DPO launchers: batch 2048, 1e-8 per pair (`--scale_lr`) = 2.048e-5, 2000 steps."""
    config = yaml.safe_load(open(os.path.join(REPO, "examples", "sd15_full_8bit.yaml")))
    processes = yaml.safe_load(open(os.path.join(REPO, "examples", "accelerate_configs", "multi_gpu.yaml")))["num_processes"]
    pairs = config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] * processes
    assert pairs == 2048 and "learning_rate" not in config
    assert config["learning_rate_per_pair"] * pairs == pytest.approx(2.048e-5)
    assert (config["max_steps"], config["warmup_steps"], config["beta"]) == (2000, 500, 5000)


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
                            capture_output=True, text=True, timeout=600, env=ENVIRONMENT, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
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


# ---- data sources and splits (bugs 2 and 6) ------------------------------------------------------------------------


def test_a_wrong_split_of_a_saved_dataset_lists_the_splits(tmp_path):
    """Bug 2: a single saved Dataset holds one split; a DatasetDict's missing split is not a bare KeyError."""
    single, splits = tmp_path / "single", tmp_path / "splits"
    tiny_preference_dataset(4).save_to_disk(str(single))
    DatasetDict(train=tiny_preference_dataset(4), validation=tiny_preference_dataset(2)).save_to_disk(str(splits))
    assert load_preference_split(str(single), None, "train").num_rows == 4
    assert load_preference_split(str(splits), None, "validation", option="eval_split").num_rows == 2
    with pytest.raises(ValueError, match=r"dataset_split='nonexistent': .*single Dataset, split 'train'"):
        load_preference_split(str(single), None, "nonexistent")
    with pytest.raises(ValueError, match=r"eval_split='valid': .*DatasetDict\) has no split 'valid'. "
                                         r"Its splits: \['train', 'validation'\]"):
        load_preference_split(str(splits), None, "valid", option="eval_split")


def test_train_refuses_wrong_splits_before_loading_the_model(tmp_path):
    single = tmp_path / "single"
    tiny_preference_dataset(4).save_to_disk(str(single))
    common = ["--model_name_or_path", str(tmp_path / "no-model-here"), "--dataset_name", str(single),
              "--output_dir", str(tmp_path / "run"), "--report_to", "none", "--use_cpu", "true"]
    with pytest.raises(ValueError, match="dataset_split='nonexistent'"):
        train([*common, "--dataset_split", "nonexistent"])
    with pytest.raises(ValueError, match="eval_split='alsonothere'"):
        train([*common, "--eval_split", "alsonothere"])


@pytest.mark.parametrize("suffix", ["parquet", "jsonl", "csv"])
def test_a_single_local_file_loads_without_the_hub(tmp_path, suffix, monkeypatch):
    """Bug 6: `--dataset_name pairs.csv` used to try the Hub; every format datasets reads loads locally."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pairs = Dataset.from_dict({"prompt": ["a red square"] * 4, "chosen": [f"img{i}.jpg" for i in range(4)],
                               "rejected": [f"other{i}.jpg" for i in range(4)]})  # image paths, as a CSV holds them
    path = tmp_path / f"pairs.{suffix}"
    {"parquet": pairs.to_parquet, "jsonl": pairs.to_json, "csv": pairs.to_csv}[suffix](str(path))
    loaded = load_preference_split(str(path), None, "train")
    assert loaded.num_rows == 4 and loaded["chosen"][:2] == ["img0.jpg", "img1.jpg"]
    assert load_preference_split(str(path), None, "train", streaming=True).take(1).to_list()[0]["chosen"] == "img0.jpg"
    with pytest.raises(ValueError, match=r"eval_split='test' is not a split of .*\['train'\]"):
        load_preference_split(str(path), None, "test", option="eval_split")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_preference_split(str(tmp_path / f"missing.{suffix}"), None, "train")


def test_train_on_a_single_parquet_file(tmp_path, pipeline_folder):
    path = tmp_path / "pairs.parquet"
    tiny_preference_dataset(4).to_parquet(str(path))
    trainer = train(["--model_name_or_path", pipeline_folder, "--dataset_name", str(path), "--max_steps", "1",
                     "--output_dir", str(tmp_path / "run"), *FAST])
    assert trainer.state.global_step == 1 and (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_strategy_options_are_refused_before_loading_the_model(tmp_path):
    """Bug 4: the README's `--credit_kwargs '{"gamma": 0.9}'` under credit=dde, refused with dde's options."""
    with pytest.raises(ValueError, match=r"'dde' has no option 'gamma'. It accepts: alpha_bar_0='one', momentum=0.1"):
        train(["--model_name_or_path", str(tmp_path / "no-model-here"), "--dataset_name", str(tmp_path / "no-data"),
               "--credit_kwargs", '{"gamma": 0.9}', "--output_dir", str(tmp_path / "run")])


def test_resume_from_checkpoint_true_resumes_the_latest_checkpoint(tmp_path, pipeline_folder):
    """Bug 5: `--resume_from_checkpoint true` used to be read as a folder named 'true'."""
    data = tmp_path / "pairs"
    tiny_preference_dataset(8).save_to_disk(str(data))
    common = ["--model_name_or_path", pipeline_folder, "--dataset_name", str(data), "--output_dir", str(tmp_path / "run"),
              "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1", *FAST]
    first = train([*common, "--max_steps", "2"])
    assert (tmp_path / "run" / "checkpoint-2").is_dir() and first.state.global_step == 2
    resumed = train([*common, "--max_steps", "3", "--resume_from_checkpoint", "true"])
    assert resumed.state.global_step == 3
    steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert steps == [1, 2, 3]  # the first two entries come from checkpoint-2's trainer state
    assert [e["loss"] for e in resumed.state.log_history[:2]] == [e["loss"] for e in first.state.log_history[:2]]
