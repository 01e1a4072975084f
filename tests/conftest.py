"""Shared fixtures: tiny pipelines and preference datasets built in code (no download)."""

import pytest
from peft import LoraConfig

from trl_dde import DDEConfig
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


@pytest.fixture
def pipeline():
    return tiny_sd15_pipeline(seed=0)


@pytest.fixture(scope="session")
def pipeline_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd15")
    tiny_sd15_pipeline(seed=0).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def pickapic():
    return tiny_preference_dataset(num_pairs=16, seed=0, tie_every=4)


def lora_config(r=4, alpha=8):
    return LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=LORA_TARGETS)


def make_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return DDEConfig(**values)
