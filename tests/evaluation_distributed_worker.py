"""One rank of the two-process validation test (run by torch.distributed.run from test_evaluation_callback.py).

Trains a tiny LoRA for 2 steps with validation images every step and a scorer that records which rank
called it; writes this rank's trained LoRA weights for the test to compare.
"""

import os
import sys

import torch
from peft import LoraConfig

from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.evaluation.callback import ValidationCallback
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline

output_dir = sys.argv[1]


def rank_recording_reward(images, prompts):
    with open(os.path.join(output_dir, "validation_calls.txt"), "a") as handle:
        handle.write(os.environ["RANK"] + "\n")
    return [0.0] * len(images)


args = DDEConfig(output_dir=output_dir, credit="dde", max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                 logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
lora = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), args=args, train_dataset=tiny_preference_dataset(8), peft_config=lora)
assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
trainer.add_callback(ValidationCallback(trainer.pipeline, ["a red square"], os.path.join(output_dir, "validation"),
                                        every_n_steps=1, num_inference_steps=2, scorer=rank_recording_reward))
trainer.train()
weights = {n: p.detach().cpu() for n, p in trainer.model.named_parameters() if p.requires_grad}
torch.save(weights, os.path.join(output_dir, f"rank{os.environ['RANK']}.pt"))
