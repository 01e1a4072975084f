"""The reference cache: the reference's per-pair terms for every epoch, computed once before training.

Every built-in strategy reads the reference only through a few numbers per pair (``reference_terms``: its
squared errors in the strategy's error space, and for ``dde``/``dde-step`` its rows of the step values).
With per-pair draws (``draws.py``) a pair's noisy inputs in an epoch are fixed in advance, so these numbers
can be computed by an inference-only pass — large batches, no gradients, sharded across processes — and the
training step then reads them instead of running the reference (``precompute_ref=True``): full fine-tuning
keeps no second denoiser in memory.

On disk, a folder named by a hash of everything the numbers depend on (``cache_key``) holds, per epoch,
shard files of ``SHARD_PAIRS`` consecutive pairs (safetensors: ``pair_index`` and one column per term), each
written to a temporary file and renamed when complete, and a ``epoch-XXXX.complete`` marker once every shard
of the epoch is there. Processes take shards round-robin; an interrupted pass resumes at the first missing
shard; a later run with the same model, data, seed, strategy and process reuses the epochs already there.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from typing import Callable

import safetensors.torch
import torch

from .credit import CreditAssigner, DenoisingOutputs
from .credit.base import squared_error

__all__ = ["CACHE_VERSION", "SHARD_PAIRS", "ReferenceCache", "build_reference_cache", "cache_key", "reference_scalars"]

CACHE_VERSION = "1"
SHARD_PAIRS = 1024
TRAINER_TERMS = ("mse/ref_chosen", "mse/ref_rejected")  # ε-space errors the trainer logs


def reference_scalars(credit: CreditAssigner, outputs: DenoisingOutputs) -> dict[str, torch.Tensor]:
    """Everything a training step reads from the reference, per pair: the trainer's logged ε-space errors
    (``mse/ref_chosen``, ``mse/ref_rejected``) and, for a ``reference_inputs="scalars"`` strategy, its
    ``reference_terms``. Computed here from the live reference online and by the pre-computation pass alike."""
    terms = {TRAINER_TERMS[0]: squared_error(outputs.eps_ref_w, outputs.noise),
             TRAINER_TERMS[1]: squared_error(outputs.eps_ref_l, outputs.noise)}
    if credit.reference_inputs == "scalars":
        terms.update({key: value.float() for key, value in credit.reference_terms(outputs).items()})
    return terms


def cache_key(*parts) -> str:
    """A short digest of ``parts`` (their ``repr``) and the cache version."""
    return hashlib.blake2b(repr((CACHE_VERSION, *parts)).encode(), digest_size=12).hexdigest()


class ReferenceCache:
    """The terms of every pair in every cached epoch, in host memory: ``table[epoch, pair, term]`` (fp32)."""

    def __init__(self, folder: str, keys: list[str], table: torch.Tensor):
        self.folder, self.keys, self.table = folder, keys, table

    @property
    def num_epochs(self) -> int:
        return self.table.shape[0]

    def lookup(self, indices: list[int], epochs: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        """The terms of pairs ``indices`` in ``epochs`` (host lists), ``Tensor[B]`` each on ``device``."""
        last = max(epochs)
        if last >= self.num_epochs:
            raise ValueError(f"The reference cache {self.folder} holds {self.num_epochs} epoch(s) but the training step "
                             f"reached epoch {last}: the run trains longer than the pass planned. Report this with "
                             "your max_steps/num_train_epochs; precompute_ref=False trains without the cache.")
        rows = self.table[epochs, indices].to(device, non_blocking=True)
        return {key: rows[:, column] for column, key in enumerate(self.keys)}


def _shard_path(folder: str, epoch: int, shard: int) -> str:
    return os.path.join(folder, f"epoch-{epoch:04d}-shard-{shard:05d}.safetensors")


def _marker_path(folder: str, epoch: int) -> str:
    return os.path.join(folder, f"epoch-{epoch:04d}.complete")


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(temporary)``, then rename it to ``path``: readers see the whole file or none."""
    temporary = f"{path}.tmp-{os.getpid()}"
    write(temporary)
    os.replace(temporary, path)


def _write_text(text: str) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return write


def build_reference_cache(
    folder: str,
    num_pairs: int,
    num_epochs: int,
    batch_size: int,
    compute: Callable[[list[int], int], dict[str, torch.Tensor]],
    *,
    process_index: int = 0,
    num_processes: int = 1,
    wait_for_everyone: Callable[[], None] = lambda: None,
    description: dict | None = None,
    progress: bool = True,
) -> ReferenceCache:
    """Fill ``folder`` with the terms of pairs ``0..num_pairs-1`` for epochs ``0..num_epochs-1`` (what is missing
    only) and load them all.

    ``compute(indices, epoch)`` returns the terms of a batch of pairs (``Tensor[len(indices)]`` each). This
    process computes shards ``process_index, process_index + num_processes, ...``; every process then reads
    every shard (the folder must be shared, as the latent cache's is). ``description`` is written to
    ``cache.json`` for people reading the folder.
    """
    from tqdm.auto import tqdm

    os.makedirs(folder, exist_ok=True)
    if process_index == 0 and description is not None and not os.path.isfile(os.path.join(folder, "cache.json")):
        _write_atomically(os.path.join(folder, "cache.json"), _write_text(json.dumps(description, indent=1)))
    num_shards = math.ceil(num_pairs / SHARD_PAIRS)
    todo = [(epoch, shard) for epoch in range(num_epochs) if not os.path.isfile(_marker_path(folder, epoch))
            for shard in range(process_index, num_shards, num_processes)
            if not os.path.isfile(_shard_path(folder, epoch, shard))]
    total = sum(len(_batches(shard, num_pairs, batch_size)) for _, shard in todo)
    with tqdm(total=total, desc="precomputing the reference", unit="batch", disable=not (progress and todo)) as bar:
        for epoch, shard in todo:
            columns: dict[str, list[torch.Tensor]] = {}
            for indices in _batches(shard, num_pairs, batch_size):
                for key, value in compute(indices, epoch).items():
                    columns.setdefault(key, []).append(value.detach().float().cpu())
                bar.update(1)
            first = shard * SHARD_PAIRS
            tensors = {key: torch.cat(values) for key, values in columns.items()}
            tensors["pair_index"] = torch.arange(first, min(first + SHARD_PAIRS, num_pairs))
            _write_atomically(_shard_path(folder, epoch, shard),
                              lambda path: safetensors.torch.save_file(tensors, path, metadata={"epoch": str(epoch)}))
    wait_for_everyone()
    cache = _load(folder, num_pairs, num_epochs, num_shards)
    if process_index == 0:
        for epoch in (epoch for epoch in range(num_epochs) if not os.path.isfile(_marker_path(folder, epoch))):
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat()
            _write_atomically(_marker_path(folder, epoch), _write_text(stamp))
    return cache


def _batches(shard: int, num_pairs: int, batch_size: int) -> list[list[int]]:
    first, end = shard * SHARD_PAIRS, min((shard + 1) * SHARD_PAIRS, num_pairs)
    return [list(range(start, min(start + batch_size, end))) for start in range(first, end, batch_size)]


def _load(folder: str, num_pairs: int, num_epochs: int, num_shards: int) -> ReferenceCache:
    """Every shard of every epoch, assembled into one table; a missing or inconsistent shard is an error."""
    keys: list[str] | None = None
    table: torch.Tensor | None = None
    for epoch in range(num_epochs):
        for shard in range(num_shards):
            path = _shard_path(folder, epoch, shard)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"The reference cache {folder} lacks {os.path.basename(path)} after the pass; "
                                        "is the folder shared by every process (precompute_ref_cache_dir)?")
            tensors = safetensors.torch.load_file(path)
            index = tensors.pop("pair_index")
            if keys is None:
                keys = sorted(tensors)
                table = torch.empty(num_epochs, num_pairs, len(keys))
            if sorted(tensors) != keys:
                raise ValueError(f"{path} holds the terms {sorted(tensors)}, other shards {keys}; delete {folder} "
                                 "and run again.")
            table[epoch, index] = torch.stack([tensors[key] for key in keys], dim=1)
    return ReferenceCache(folder, keys, table)
