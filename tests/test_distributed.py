"""Two CPU processes (gloo): ranks end identical, the dde arrays see both ranks, uneven data never desynchronises."""

import os
import socket
import subprocess
import sys

import torch

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
TIMING = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(tmp_path, mode):
    port = free_port()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", WORKER,
               str(tmp_path), mode]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]


def assert_ranks_identical(ranks, ignore=()):
    assert ranks[0]["weights"].keys() == ranks[1]["weights"].keys()
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
    assert torch.equal(ranks[0]["ratios"], ranks[1]["ratios"])
    logs = [[{k: v for k, v in entry.items() if k not in TIMING + ignore} for entry in r["log_history"]] for r in ranks]
    assert logs[0] == logs[1]  # every logged metric is reduced over both processes


def test_two_processes_keep_weights_dde_arrays_and_metrics_identical(tmp_path):
    ranks = launch(tmp_path, "map")
    assert_ranks_identical(ranks)
    own = [set(r["timesteps"].tolist()) for r in ranks]
    assert own[0] != own[1]  # the ranks drew different timesteps...
    visited = set(torch.nonzero(ranks[0]["ratios"].abs().sum(dim=0)).flatten().tolist())
    assert visited == own[0] | own[1]  # ...and each rank's arrays were updated at both ranks' timesteps


def test_corrupt_rows_and_ties_on_one_rank_only(tmp_path):
    """Rank 0's shard of the stream holds 3 corrupt rows and 2 ties, rank 1's none: both train full batches in step."""
    ranks = launch(tmp_path, "uneven-stream")
    assert [r["steps"] for r in ranks] == [3, 3]
    assert [len(r["timesteps"]) for r in ranks] == [6, 6]  # 3 steps of 2 pairs on each rank
    assert_ranks_identical(ranks, ignore=("epoch",))  # a stream's epoch is each rank's own count of passes
    last = [entry for entry in ranks[0]["log_history"] if "loss" in entry][-1]
    assert last["data/corrupt_skipped"] == 3 and last["data/ties_dropped"] == 2  # counted on rank 0, seen by both


def test_full_fine_tune_reference_parity_under_ddp(tmp_path):
    ranks = launch(tmp_path, "full-zero-lr")
    for entry in (e for e in ranks[0]["log_history"] if "loss" in e):
        assert entry["margin"] == 0.0 and entry["implicit_acc"] == 0.5
