"""A tiny LoRA training run that checkpoints every step, for the SIGKILL tests (run as a subprocess).

    python killable_training.py OUTPUT_DIR fresh|resume

Writes OUTPUT_DIR/final.pt (the LoRA weights and the dde arrays) when it finishes.
"""

import os
import sys

import torch
from peft import LoraConfig

from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline

output_dir, mode = sys.argv[1], sys.argv[2]
args = DDEConfig(output_dir=output_dir, credit="dde", max_steps=8, per_device_train_batch_size=2, learning_rate=1e-3,
                 save_strategy="steps", save_steps=1, save_total_limit=2, logging_steps=1, report_to="none",
                 use_cpu=True, seed=0, disable_tqdm=True)
lora = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), args=args, train_dataset=tiny_preference_dataset(8), peft_config=lora)
trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
weights = {n: p.detach().cpu() for n, p in trainer.model.named_parameters() if p.requires_grad}
torch.save({"weights": weights, "ratios": trainer.credit.ratios.cpu()}, os.path.join(output_dir, "final.pt"))
