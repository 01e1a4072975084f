"""Guarantees of docs/reliability.md: interrupted writes, unsafe files, configuration errors before loading."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import lora_config, make_args
from datasets import load_from_disk

from trl_dde import DDEDiffusionTrainer
from trl_dde.checkpoints import COMPLETE_MARKER, checkpoint_problem, last_complete_checkpoint
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("killable_training.py")


def start(output_dir, mode):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(output_dir), mode], env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process):
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]


def kill_while_checkpointing(output_dir, mode, rng):
    """Start a run, wait until it has written a complete checkpoint, then SIGKILL it at a random moment."""
    process = start(output_dir, mode)
    deadline = time.time() + 300
    while last_complete_checkpoint(str(output_dir)) is None or (mode == "resume" and not any(output_dir.glob("checkpoint-*"))):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.0))  # every step writes a checkpoint: the kill often lands inside one
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_runs_killed_at_random_points_resume_to_the_uninterrupted_result(tmp_path):
    straight = tmp_path / "straight"
    finish(start(straight, "fresh"))
    rng = random.Random(os.getpid())
    interrupted = tmp_path / "interrupted"
    kill_while_checkpointing(interrupted, "fresh", rng)
    kill_while_checkpointing(interrupted, "resume", rng)
    finish(start(interrupted, "resume"))
    expected, resumed = torch.load(straight / "final.pt"), torch.load(interrupted / "final.pt")
    assert torch.equal(expected["ratios"], resumed["ratios"])
    for name, weight in expected["weights"].items():
        assert torch.equal(weight, resumed["weights"][name]), name
    assert all(checkpoint_problem(str(folder)) is None for folder in interrupted.glob("checkpoint-*"))


def test_an_incomplete_checkpoint_is_never_resumed_from(tmp_path):
    args = make_args(tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=args, train_dataset=tiny_preference_dataset(8), peft_config=lora_config())
    trainer.train()
    output = Path(args.output_dir)
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert all((folder / COMPLETE_MARKER).is_file() for folder in output.glob("checkpoint-*"))
    (output / "checkpoint-3" / COMPLETE_MARKER).unlink()  # as if killed before the marker
    weights = output / "checkpoint-2" / "pytorch_lora_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # as if the disk filled up
    assert last_complete_checkpoint(str(output)) == str(output / "checkpoint-1")
    resumed = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=args, train_dataset=tiny_preference_dataset(8), peft_config=lora_config())
    with pytest.raises(ValueError, match=r"checkpoint-3: it has no trl_dde_complete.json.*last complete checkpoint is .*checkpoint-1"):
        resumed.train(resume_from_checkpoint=str(output / "checkpoint-3"))
    with pytest.raises(ValueError, match=r"checkpoint-2: pytorch_lora_weights.safetensors has 100 bytes instead of"):
        resumed.train(resume_from_checkpoint=str(output / "checkpoint-2"))
    resumed.train(resume_from_checkpoint=True)  # takes checkpoint-1 and retrains steps 2 and 3
    assert resumed.state.global_step == 3
    # the new checkpoints replaced the damaged ones
    assert all(checkpoint_problem(str(folder)) is None for folder in output.glob("checkpoint-*"))


def test_a_damaged_latent_cache_is_rebuilt(tmp_path, caplog):
    folder = tmp_path / "pairs"
    tiny_preference_dataset(8).save_to_disk(str(folder))
    args = make_args(tmp_path, max_steps=1, precompute_latents=True, precompute_cache_dir=str(tmp_path / "cache"))
    first = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=args, train_dataset=load_from_disk(str(folder)), peft_config=lora_config())
    expected = [first.train_dataset[i]["posterior_w"].clone() for i in range(len(first.train_dataset))]
    del first  # its rows are memory-mapped from the file damaged below
    cache = next((tmp_path / "cache").glob("pairs-*.arrow"))
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        second = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=args, train_dataset=load_from_disk(str(folder)), peft_config=lora_config())
    assert "is damaged" in caplog.text and "encoding again" in caplog.text
    assert [torch.equal(want, second.train_dataset[i]["posterior_w"]) for i, want in enumerate(expected)] == [True] * len(expected)


def test_no_hub_token_reaches_any_output_file(tmp_path, monkeypatch, caplog, capsys):
    token = "hf_PlantedSecretTokenForTrlDde0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    args = make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1, hub_token=token,
                     hub_model_id="someone/planted", report_to=["tensorboard"])
    with caplog.at_level("DEBUG"):
        trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=args, train_dataset=tiny_preference_dataset(8),
                                      peft_config=lora_config())
        trainer.train()
        trainer.save_model()
        trainer.save_model(str(tmp_path / "out" / "kohya"), format="kohya")
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in files) and any("events.out" in path.name for path in files)
    leaking = [str(path) for path in files if token.encode() in path.read_bytes()]
    assert leaking == []
    assert token not in caplog.text and token not in capsys.readouterr().out
    assert trainer.args.hub_token == token  # redacted in what is written, not in the live arguments


def test_weights_are_read_safely():
    """Weights come from safetensors; any other checkpoint through torch.load(weights_only=True); no remote code."""
    unsafe = []
    for path in (ROOT / "trl_dde").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(([^)]*)\)", source):
            if "weights_only=True" not in match.group(1):
                unsafe.append(f"{path.name}: torch.load({match.group(1)})")
        if re.search(r"trust_remote_code\s*=\s*True", source):
            unsafe.append(f"{path.name}: trust_remote_code=True")
    assert unsafe == []


def never_load(monkeypatch):
    from diffusers import StableDiffusionPipeline

    def fail(*args, **kwargs):
        raise AssertionError("the pipeline's weights were loaded before the configuration was checked")

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", fail)


def test_lora_targets_absent_from_the_model_are_refused_before_loading(tmp_path, pipeline_folder, monkeypatch):
    never_load(monkeypatch)
    from peft import LoraConfig

    typo = LoraConfig(r=4, target_modules=["to_k", "to_qq", "attn_out"])
    with pytest.raises(ValueError, match=r"\['attn_out', 'to_qq'\] name no module of the unet .*'to_qq' \(close: to_q"):
        DDEDiffusionTrainer(pipeline_folder, args=make_args(tmp_path), train_dataset=tiny_preference_dataset(4), peft_config=typo)
    regex = LoraConfig(r=4, target_modules=r".*\.nothing_like_this")
    with pytest.raises(ValueError, match="matches no module of the unet"):
        DDEDiffusionTrainer(pipeline_folder, args=make_args(tmp_path), train_dataset=tiny_preference_dataset(4), peft_config=regex)


@pytest.mark.parametrize("overrides, message", [
    ({"resolution": 33}, r"resolution=33 is not a multiple of 2 .*Use 32 or 34"),
    ({"timestep_range": [100, 1200]}, r"timestep_range must satisfy 0 <= lo < hi <= 1000"),
    ({"credit": "dde", "credit_kwargs": {"momentun": 0.5}}, r"no option 'momentun'\. Did you mean 'momentum'"),
])
def test_configuration_errors_come_before_loading(tmp_path, pipeline_folder, monkeypatch, overrides, message):
    never_load(monkeypatch)
    with pytest.raises(ValueError, match=message):
        DDEDiffusionTrainer(pipeline_folder, args=make_args(tmp_path, **overrides), train_dataset=tiny_preference_dataset(4),
                            peft_config=lora_config())
