"""Two CPU processes (gloo) train with credit="dde": ranks must end identical, dde arrays must see both ranks."""

import os
import subprocess
import sys

import torch

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def launch(tmp_path, *worker_args, port):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", WORKER,
               str(tmp_path), *worker_args]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]


def test_two_processes_keep_unet_and_dde_arrays_identical(tmp_path):
    ranks = launch(tmp_path, port=29533)

    assert ranks[0]["lora"].keys() == ranks[1]["lora"].keys()
    for name, weight in ranks[0]["lora"].items():
        assert torch.equal(weight, ranks[1]["lora"][name]), name
    assert torch.equal(ranks[0]["ratios"], ranks[1]["ratios"])

    own = [set(r["timesteps"].tolist()) for r in ranks]
    assert own[0] != own[1]  # the ranks drew different timesteps...
    visited = set(torch.nonzero(ranks[0]["ratios"].abs().sum(dim=0)).flatten().tolist())
    assert visited == own[0] | own[1]  # ...and each rank's arrays were updated at both ranks' timesteps


def test_an_empty_batch_on_one_process_does_not_hang_the_others(tmp_path):
    """Rank 0's first batch holds no decodable pair: both ranks skip that step together and stay in sync."""
    ranks = launch(tmp_path, "empty-on-rank0", port=29534)
    assert [r["steps"] for r in ranks] == [3, 3]
    assert ranks[0]["corrupt_skipped"] == ranks[1]["corrupt_skipped"] == 2  # counted over both processes
    for name, weight in ranks[0]["lora"].items():
        assert torch.equal(weight, ranks[1]["lora"][name]), name
    assert torch.equal(ranks[0]["ratios"], ranks[1]["ratios"])
