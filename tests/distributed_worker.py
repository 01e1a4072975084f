"""One rank of the multi-process tests (run by torch.distributed.run from test_distributed.py).

Modes:
* ``map``: a map-style dataset, LoRA, credit="dde"; records the timesteps this rank drew.
* ``uneven-stream``: a stream whose shard on rank 0 holds corrupt rows and ties that rank 1's lacks.
* ``full-zero-lr``: full fine-tuning with learning_rate=0 (reference parity under DDP).
* ``sd3``: ``map`` on a tiny SD3 pipeline (flow matching, logit-normal time sampling).

Writes what the test compares: trained weights, the dde arrays, the drawn timesteps and the log history.
"""

import os
import sys

import torch
from datasets import Dataset
from peft import LoraConfig

from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.tiny import tiny_preference_dataset, tiny_sd3_pipeline, tiny_sd15_pipeline

output_dir, mode = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])
lora = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
options = dict(output_dir=output_dir, credit="dde", max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
               logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
pipeline = tiny_sd15_pipeline(seed=0)
if mode == "map":
    data, peft_config = tiny_preference_dataset(16), lora
elif mode == "sd3":
    data, peft_config, pipeline = tiny_preference_dataset(16), lora, tiny_sd3_pipeline(seed=0)
    options.update(weighting_scheme="logit_normal", resolution=32)
elif mode == "uneven-stream":
    rows = tiny_preference_dataset(24).to_dict()
    for i in (0, 3, 5):  # in the first shard (rows 0-11) only: rank 0 reads it
        rows["jpg_0"][i] = b"corrupt"
    for i in (1, 6):
        rows["label_0"][i] = 0.5
    data = Dataset.from_dict(rows, features=tiny_preference_dataset(1).features).to_iterable_dataset(num_shards=2)
    peft_config = lora
else:
    data, peft_config = tiny_preference_dataset(16), None
    options.update(learning_rate=0.0, max_steps=2)
trainer = DDEDiffusionTrainer(pipeline, args=DDEConfig(**options), train_dataset=data, peft_config=peft_config)
assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes

drawn = []
sample_timesteps = trainer.credit.sample_timesteps


def recording_sample_timesteps(*a, **kw):
    timesteps = sample_timesteps(*a, **kw)
    drawn.append(timesteps.cpu())
    return timesteps


trainer.credit.sample_timesteps = recording_sample_timesteps
trainer.train()
weights = {n: p.detach().cpu() for n, p in trainer.model.named_parameters() if p.requires_grad}
torch.save({"weights": weights, "ratios": trainer.credit.ratios.cpu(), "timesteps": torch.cat(drawn),
            "log_history": trainer.state.log_history, "steps": trainer.state.global_step},
           os.path.join(output_dir, f"rank{rank}.pt"))
