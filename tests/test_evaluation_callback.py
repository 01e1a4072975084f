"""Validation images during a short tiny run: written, logged, scored, and training left exactly as it was."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import lora_config, make_args

from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.evaluation.callback import ValidationCallback

REWARD = "import numpy as np\n\ndef redness(images, prompts):\n    return [float(np.asarray(i)[..., 0].mean()) for i in images]\n"


def lora_weights(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def test_validation_images_are_written_logged_and_training_is_unchanged(tmp_path, pipeline_folder, pickapic):
    (tmp_path / "reward.py").write_text(REWARD)
    validation = dict(validation_prompts=["a red square", "a blue disc"], validation_steps=2, validation_num_images=2,
                      validation_num_inference_steps=2, validation_scorer=f"{tmp_path}/reward.py:redness")
    args = make_args(tmp_path / "with", max_steps=4, report_to=["tensorboard"], **validation)
    trainer = DDEDiffusionTrainer(pipeline_folder, args=args, train_dataset=pickapic, peft_config=lora_config())
    assert [type(c) for c in trainer.callback_handler.callbacks].count(ValidationCallback) == 1  # enabled by the config
    trainer.train()  # with TensorBoard: transformers' callback alone would crash on the UNet's FrozenDict config

    folder = tmp_path / "with" / "out" / "validation"
    for step in (2, 4):
        names = sorted(os.listdir(folder / f"step-{step:06d}"))
        assert names == ["000_00.png", "000_01.png", "001_00.png", "001_01.png", "grid.png"]
    assert not (folder / "step-000001").exists() and not (folder / "step-000003").exists()
    lines = (folder / "scores.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"step": 2' in lines[0] and '"step": 4' in lines[1]
    assert trainer.model.training and all(not p.requires_grad for p in trainer.pipeline.vae.parameters())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "with" / "out" / "runs" / "validation"), size_guidance={"images": 0})
    events.Reload()
    assert [event.step for event in events.Images("validation/images")] == [2, 4]
    assert [event.step for event in events.Scalars("validation/redness")] == [2, 4]

    # the same run without the callback ends with bit-identical weights: generation touched no RNG stream
    plain = DDEDiffusionTrainer(pipeline_folder, args=make_args(tmp_path / "without", max_steps=4), train_dataset=pickapic,
                                peft_config=lora_config())
    plain.train()
    with_validation, without = lora_weights(trainer), lora_weights(plain)
    assert with_validation.keys() == without.keys()
    assert all(torch.equal(with_validation[name], without[name]) for name in without)


def test_validation_images_follow_the_weights_and_their_seeds(tmp_path, pipeline):
    callback = ValidationCallback(pipeline, ["a red square"], tmp_path, num_images_per_prompt=2, num_inference_steps=2)
    first, again = callback.generate(), callback.generate()
    assert list(first[0][0].getdata()) == list(again[0][0].getdata())  # fixed seeds: the same images
    assert list(first[0][0].getdata()) != list(first[0][1].getdata())  # each image has its own seed
    with torch.no_grad():
        pipeline.unet.conv_out.bias.add_(1.0)
    assert list(callback.generate()[0][0].getdata()) != list(first[0][0].getdata())  # new weights, new image


def test_validation_settings_are_checked_by_the_config(tmp_path):
    assert ValidationCallback.from_config(DDEConfig(output_dir=str(tmp_path)), pipeline=None) is None
    with pytest.raises(ValueError, match="validation_steps must be at least 1"):
        DDEConfig(output_dir=str(tmp_path), validation_prompts=["a cat"], validation_steps=0)
    with pytest.raises(ValueError, match="validation_prompts must be non-empty strings"):
        DDEConfig(output_dir=str(tmp_path), validation_prompts=["a cat", " "])
    with pytest.raises(ValueError, match="validation_scorer 'pickscor' is not a registered reward"):
        DDEConfig(output_dir=str(tmp_path), validation_prompts=["a cat"], validation_scorer="pickscor")
    with pytest.raises(ValueError, match="cannot be used with FSDP"):
        DDEConfig(output_dir=str(tmp_path), validation_prompts=["a cat"], fsdp="full_shard", use_cpu=True)


def test_two_processes_generate_once_and_stay_in_sync(tmp_path):
    """Under DDP only the main process generates and scores; both ranks end with the same weights."""
    worker = os.path.join(os.path.dirname(__file__), "evaluation_distributed_worker.py")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    # --standalone rendezvous on a free port: a fixed port collides with other runs on a shared machine
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker, str(tmp_path)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for name, weight in ranks[0].items():
        assert torch.equal(weight, ranks[1][name]), name
    assert (tmp_path / "validation_calls.txt").read_text().split() == ["0", "0"]  # scored twice, by rank 0 only
    assert sorted(os.listdir(tmp_path / "validation")) == ["scores.jsonl", "step-000001", "step-000002"]
