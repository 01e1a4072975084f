"""benchmarks/run.py end to end at its smallest configuration: the report's structure, never its timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_smallest_configuration_writes_markdown_and_json(tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--sizes", "tiny", "--tunings", "lora", "--precompute", "on",
               "--strategies", "uniform,dde", "--batch_size", "1", "--steps", "1", "--warmup", "1", "--rounds", "2", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    assert set(report) == {"machine", "results", "not_swept"}
    [result] = report["results"]
    assert result["group"]["size"] == "tiny" and result["group"]["tuning"] == "lora" and result["group"]["precompute"]
    assert set(result["strategies"]) == {"uniform", "dde"}
    for timing in result["strategies"].values():
        assert timing["steps_timed"] == 2 and timing["median_step_s"] > 0
        assert timing["pairs_per_s"] == 1 / timing["median_step_s"]
        assert timing["step_over_floor"] == timing["median_step_s"] / result["floor_s"]
    assert result["dde_over_uniform"] == result["strategies"]["dde"]["median_step_s"] / result["strategies"]["uniform"]["median_step_s"]
    assert result["peak_rss_mib"] > 0
    memory = result["memory"]
    assert 0 < memory["baseline_rss_mib"] <= memory["after_setup_rss_mib"] <= memory["peak_rss_mib"] <= result["peak_rss_mib"]
    assert memory["gradients_mib"] == memory["trainable_parameters"] * 4 / 2**20  # fp32 LoRA weights
    assert 0 < memory["gradients_mib"] < memory["optimizer_state_mib"] < memory["weights_mib"]  # AdamW: 2 states, LoRA only
    table = (tmp_path / "benchmarks.md").read_text()
    assert table in done.stdout
    rows = [line for line in table.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 3  # one timing row per strategy, one memory row per group
    assert [row.split("|")[7].strip() for row in rows[:2]] == ["uniform", "dde"]
    assert all(axis in table for axis in report["not_swept"])
    assert report["machine"]["trl_dde"] == str(REPO / "trl_dde")  # this checkout's code is timed, wherever run from
    assert "torchvision" not in done.stderr and "bitsandbytes" not in done.stderr


def test_unknown_size_is_refused_before_any_work(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--sizes", "sdxxl", "--out", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2 and "sdxxl" in done.stderr and "choose from" in done.stderr
    assert not (tmp_path / "benchmarks.json").exists()


def test_sdxl_size_is_sdxl_base_architecture_built_on_meta():
    """The ``sdxl`` size's configs, built on the meta device (no weights allocated): the UNet has SDXL base 1.0's
    2,567,463,684 parameters and the VAE its 83,653,863; the cross-attention width is both encoders' hidden
    sizes together and the added-conditioning input is the pooled projection plus 6 micro-conditioning embeddings."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import run

    with torch.device("meta"):
        pipeline = run.sdxl_pipeline()
    unet, encoder, encoder_2 = pipeline.unet, pipeline.text_encoder, pipeline.text_encoder_2
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert sum(p.numel() for p in pipeline.vae.parameters()) == 83_653_863
    assert unet.config.cross_attention_dim == encoder.config.hidden_size + encoder_2.config.hidden_size == 2048
    assert unet.config.projection_class_embeddings_input_dim == 6 * unet.config.addition_time_embed_dim + encoder_2.config.projection_dim
    assert (encoder.config.num_hidden_layers, encoder_2.config.num_hidden_layers, encoder_2.config.hidden_act) == (12, 32, "gelu")
    assert run.SIZES["sdxl"][0] is run.sdxl_pipeline
