"""One rank of the multi-process test (run by torch.distributed.run from test_distributed.py).

Trains a tiny LoRA with credit="dde" for a few steps and writes what the test compares: the trained
LoRA weights, the dde arrays, and the timesteps this rank drew.
"""

import os
import sys

import torch
from peft import LoraConfig

from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline

output_dir = sys.argv[1]
empty_first_batch_on_rank_0 = sys.argv[2:] == ["empty-on-rank0"]
rank = int(os.environ["RANK"])
args = DDEConfig(output_dir=output_dir, credit="dde", max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
                 logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
lora = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), args=args, train_dataset=tiny_preference_dataset(16), peft_config=lora)
assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes

drawn = []
sample_timesteps = trainer.credit.sample_timesteps


def recording_sample_timesteps(*a, **kw):
    timesteps = sample_timesteps(*a, **kw)
    drawn.append(timesteps.cpu())
    return timesteps


trainer.credit.sample_timesteps = recording_sample_timesteps
if empty_first_batch_on_rank_0 and rank == 0:  # rank 0's first batch has no decodable pair; rank 1's is fine
    collate, calls = trainer.data_collator, []

    def corrupting_collate(rows):
        calls.append(1)
        return collate([{**row, "jpg_0": b"corrupt", "jpg_1": b"corrupt"} for row in rows] if len(calls) == 1 else rows)

    trainer.data_collator = corrupting_collate
trainer.train()
lora_weights = {n: p.detach().cpu() for n, p in trainer.model.named_parameters() if p.requires_grad}
torch.save({"lora": lora_weights, "ratios": trainer.credit.ratios.cpu(), "timesteps": torch.cat(drawn),
            "corrupt_skipped": trainer.corrupt_skipped, "steps": trainer.state.global_step},
           os.path.join(output_dir, f"rank{rank}.pt"))
