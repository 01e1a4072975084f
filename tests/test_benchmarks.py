"""The benchmark entry point runs its smallest configuration end to end and writes well-formed tables."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smallest_configuration_writes_markdown_and_json(tmp_path):
    command = [sys.executable, "benchmarks/run.py", "--sizes", "tiny", "--tuning", "lora", "--credits", "dde,uniform",
               "--precompute", "on", "--checkpointing", "off", "--steps", "3", "--warmup", "1", "--pairs", "8",
               "--memory", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                                    "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert [(r["credit"], r["tuning"], r["size"]) for r in report["results"]] == [("dde", "lora", "tiny"), ("uniform", "lora", "tiny")]
    for row in report["results"]:
        assert row["steps_timed"] == 2 and row["batch_pairs"] == 4
        assert row["step_ms"] > 0 and row["floor_ms"] > 0 and row["peak_mib"] > 0
        assert abs(row["step_over_floor"] - row["step_ms"] / row["floor_ms"]) < 1e-9
        assert abs(row["pairs_per_s"] - 4000 / row["step_ms"]) < 1e-9
    assert list(report["dde_over_uniform"]) == ["tiny/lora/True/False/adamw_torch/fp32"]
    sd15, sdxl = report["memory"]
    assert sd15["parameters"] == 859_520_964 and sd15["trainable"] == sd15["parameters"]  # the real SD1.5 UNet
    assert sdxl["parameters"] == 2_567_463_684 and 0 < sdxl["trainable"] < sdxl["parameters"] // 100  # SDXL base, LoRA r=8
    assert "8-bit AdamW" in report["not_run"]
    table = (tmp_path / "results.md").read_text()
    assert table.count("| tiny | lora |") == 2 and "step/floor" in table and "dde / uniform" in table
