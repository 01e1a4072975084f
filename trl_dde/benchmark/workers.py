"""Running the benchmark's (method, seed) runs side by side in worker processes.

A run trains a 1M-parameter UNet on 16x16 latents: its tensors are too small for a second intra-op thread
to pay (a step takes 0.19 s on one core and 0.15 s on two), so ``workers`` single-threaded processes
training different runs use a multi-core CPU far better than one process with several threads. Each
worker loads the cached base and the pairs once; a run's result depends only on its (method, seed) —
never on which worker ran it or in what order, which the tests check by comparing 1 and 2 workers.

Workers write what they print (trainer logs, library notices) to ``<log_dir>/worker-<pid>.log`` instead
of the terminal, where only the parent's progress bars and final table appear.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Iterator

__all__ = ["run_parallel"]

_WORKER: dict = {}


def _initialise(base_path: str, pairs_dir: str, log_dir: str) -> None:
    import torch
    from datasets import load_from_disk

    log = open(Path(log_dir) / f"worker-{os.getpid()}.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives with the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    torch.set_num_threads(1)
    _WORKER["base"] = torch.load(base_path, map_location="cpu", weights_only=True)["unet"]
    _WORKER["pairs"] = load_from_disk(pairs_dir)


def _run(task: dict):
    from ..evaluation.loading import quiet_libraries
    from .experiment import train_method
    from .pipeline import benchmark_pipeline

    pipeline = benchmark_pipeline(seed=0)
    pipeline.unet.load_state_dict(_WORKER["base"])
    options = dict(task)
    with quiet_libraries():
        return train_method(pipeline, options.pop("method"), _WORKER["pairs"], seed=options.pop("seed"), **options)


def run_parallel(tasks: list[dict], workers: int, base_path: str | os.PathLike, pairs_dir: str | os.PathLike,
                 log_dir: str | os.PathLike) -> Iterator:
    """``RunResult``s of ``tasks`` in completion order, from ``workers`` spawned single-threaded processes. A task is
    ``train_method``'s keyword arguments with ``method`` and ``seed`` (the pipeline and pairs come from the worker).

    A failing run stops the others and raises its error, naming the run.
    """
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's threads and torch state
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_initialise,
                             initargs=(str(base_path), str(pairs_dir), str(log_dir))) as pool:
        pending = {pool.submit(_run, task): task for task in tasks}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    error = future.exception()
                    if error is not None:
                        raise RuntimeError(f"The run {task['method']} (seed {task['seed']}) failed: "
                                           f"{type(error).__name__}: {error}. Its output is in {log_dir}.") from error
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()
