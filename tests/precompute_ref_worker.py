"""One rank of the two-process ``precompute_ref`` test (run by torch.distributed.run from test_precompute_ref.py).

Trains full fine-tuning with credit="dde" twice on the same data and seeds: with the live reference
(``pair_seeded_draws``) and with ``precompute_ref``, the cache split into shards of 4 pairs so both ranks
compute some. Writes each run's per-step losses and trained weights, and the shard files this rank wrote.
"""

import os
import sys

import torch

import trl_dde.reference_cache as reference_cache
from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline

output_dir = sys.argv[1]
rank = int(os.environ["RANK"])
reference_cache.SHARD_PAIRS = 4
written = []
write_atomically = reference_cache._write_atomically


def recording_write(path, write):
    written.append(os.path.basename(path))
    write_atomically(path, write)


reference_cache._write_atomically = recording_write


class RecordingTrainer(DDEDiffusionTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.losses.append(loss.detach().clone())
        return loss


results = {}
for precompute in (False, True):
    options = dict(output_dir=os.path.join(output_dir, str(precompute)), credit="dde", max_steps=5,
                   per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1, save_strategy="no",
                   report_to="none", use_cpu=True, seed=0, disable_tqdm=True, pair_seeded_draws=True,
                   precompute_ref=precompute, precompute_ref_cache_dir=os.path.join(output_dir, "cache"))
    trainer = RecordingTrainer(tiny_sd15_pipeline(seed=0), args=DDEConfig(**options), train_dataset=tiny_preference_dataset(16))
    assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
    trainer.losses = []
    trainer.train()
    results[precompute] = {"losses": torch.stack(trainer.losses),
                           "weights": {n: p.detach().cpu() for n, p in trainer.model.named_parameters()},
                           "ratios": trainer.credit.ratios.cpu()}
results["written"] = [name for name in written if name.endswith(".safetensors")]
torch.save(results, os.path.join(output_dir, f"rank{rank}.pt"))
