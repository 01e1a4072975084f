"""Two CPU processes (gloo) train with credit="dde": ranks must end identical, dde arrays must see both ranks."""

import os
import subprocess
import sys

import torch

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def test_two_processes_keep_unet_and_dde_arrays_identical(tmp_path):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", WORKER, str(tmp_path)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    assert ranks[0]["lora"].keys() == ranks[1]["lora"].keys()
    for name, weight in ranks[0]["lora"].items():
        assert torch.equal(weight, ranks[1]["lora"][name]), name
    assert torch.equal(ranks[0]["ratios"], ranks[1]["ratios"])

    own = [set(r["timesteps"].tolist()) for r in ranks]
    assert own[0] != own[1]  # the ranks drew different timesteps...
    visited = set(torch.nonzero(ranks[0]["ratios"].abs().sum(dim=0)).flatten().tolist())
    assert visited == own[0] | own[1]  # ...and each rank's arrays were updated at both ranks' timesteps
