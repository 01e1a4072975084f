"""One rank of the two-process test that the reference pass plans the epochs the run trains (run by
torch.distributed.run from test_precompute_ref.py).

7 pairs, 2 per batch, ``dataloader_drop_last``: accelerate gives each of 2 processes 3 // 2 = 1 batch an epoch,
so ``max_steps=3`` runs 3 epochs (a count from ``ceil(7 / 2) // 2 = 2`` batches per process would plan 2).
Writes the epochs the steps saw, the epochs the cache holds and the process's torch seed.
"""

import os
import sys

import torch

from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.data import PAIR_EPOCH
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline

output_dir = sys.argv[1]


class EpochRecordingTrainer(DDEDiffusionTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.epochs_seen.update(inputs[PAIR_EPOCH])
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


args = DDEConfig(output_dir=os.path.join(output_dir, "out"), credit="uniform", max_steps=3, per_device_train_batch_size=2,
                 dataloader_drop_last=True, learning_rate=1e-3, save_strategy="no", report_to="none", use_cpu=True,
                 seed=0, disable_tqdm=True, precompute_ref=True, precompute_ref_cache_dir=os.path.join(output_dir, "cache"))
trainer = EpochRecordingTrainer(tiny_sd15_pipeline(seed=0), args=args, train_dataset=tiny_preference_dataset(7))
assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
trainer.epochs_seen = set()
trainer.train()
torch.save({"epochs_seen": sorted(trainer.epochs_seen), "cached_epochs": trainer.reference_cache.num_epochs,
            "seed": torch.initial_seed()},
           os.path.join(output_dir, f"rank{os.environ['RANK']}.pt"))
