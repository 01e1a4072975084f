"""Online (iterative) rounds: generate → score → train, R times, each round's pairs drawn from the current policy.

Round ``r`` generates pairs with the base pipeline plus the LoRA adapter trained in round ``r - 1`` (the base
alone in round 0), scores them with the rewards, and trains on them, continuing from that adapter (the DPO
reference stays the base model, adapters disabled). Everything is kept: ``output_dir/round-R/pairs`` (the
dataset and its card) and ``output_dir/round-R/adapter`` (the adapter after the round); ``rounds.json`` and
the table at the end give, per round, the mean reward of the images the policy generated at its start, the
number of pairs and the training loss. Round ``r`` draws image seeds from ``seed + r``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

__all__ = ["OnlineArguments", "run_online_rounds"]

PROMPTS_PER_SHARD = 8


@dataclass
class OnlineArguments:
    """``trl-dde train --online_rounds R``: where the pairs of every round come from."""

    online_rounds: int = field(default=0, metadata={"help": "Rounds of generate → score → train (0: train offline on "
                                                            "--dataset_name). Needs --use_peft and --online_reward."})
    online_prompts: str = field(default="builtin", metadata={"help": "Prompts of every round: a text file, a dataset "
                                                                     "(with --online_prompt_column) or a shipped list."})
    online_prompt_column: str | None = field(default=None, metadata={"help": "Column of the prompts in a dataset."})
    online_max_prompts: int | None = field(default=None, metadata={"help": "Use this many prompts, evenly spaced."})
    online_reward: list[str] = field(default_factory=list, metadata={"help": "Reward(s): a registered scorer or "
                                                                             "module:function f(images, prompts)."})
    online_reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward."})
    online_images_per_prompt: int = field(default=4, metadata={"help": "Images per prompt (>= 2)."})
    online_num_inference_steps: int = field(default=50, metadata={"help": "Sampler steps of the generation."})
    online_guidance_scale: float = field(default=7.5, metadata={"help": "Guidance scale of the generation."})
    online_resolution: int | None = field(default=None, metadata={"help": "Generated image size (default: the "
                                                                          "pipeline's)."})
    online_batch_size: int = field(default=4, metadata={"help": "Images per pipeline call."})
    online_selection: str = field(default="best_worst", metadata={"help": "Pair selection.",
                                                                  "choices": ["best_worst", "margin", "random"]})
    online_margin: float = field(default=0.0, metadata={"help": "Minimum score difference of a pair."})

    def check(self, use_peft: bool) -> None:
        """Refuse options that cannot run, before anything loads."""
        if self.online_rounds < 1:
            raise ValueError(f"online_rounds must be at least 1 for online training, got {self.online_rounds}.")
        if not use_peft:
            raise ValueError("online_rounds trains and generates with a LoRA adapter per round: add --use_peft.")
        if not self.online_reward:
            raise ValueError("online_rounds needs --online_reward (a scorer name or module:function).")
        if self.online_reward_weights is not None and len(self.online_reward_weights) != len(self.online_reward):
            raise ValueError(f"{len(self.online_reward)} --online_reward but {len(self.online_reward_weights)} "
                             "--online_reward_weights; give one weight per reward.")
        if self.online_images_per_prompt < 2:
            raise ValueError(f"online_images_per_prompt must be at least 2, got {self.online_images_per_prompt}.")
        if self.online_margin < 0:
            raise ValueError(f"online_margin must be >= 0 (a score difference), got {self.online_margin}.")


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run_online_rounds(model: str, args, online: OnlineArguments, peft_config, progress: bool = True) -> list[dict]:
    """Run the rounds; returns one record per round (also written to ``args.output_dir/rounds.json``)."""
    from ..evaluation.generation import GenerationSettings
    from ..evaluation.prompts import load_prompts
    from ..evaluation.reports import write_json
    from ..evaluation.rewards import load_reward
    from ..trainer import DDEDiffusionTrainer
    from .generate import generate_pairs
    from .writer import PairShards

    rewards = [load_reward(spec) for spec in online.online_reward]
    prompts = load_prompts(online.online_prompts, column=online.online_prompt_column, max_prompts=online.online_max_prompts)
    records, adapter = [], None
    for round_index in range(online.online_rounds):
        folder = os.path.join(args.output_dir, f"round-{round_index}")
        settings = GenerationSettings(num_images_per_prompt=online.online_images_per_prompt, seed=args.seed + round_index,
                                      num_inference_steps=online.online_num_inference_steps,
                                      guidance_scale=online.online_guidance_scale, resolution=online.online_resolution,
                                      batch_size=online.online_batch_size)
        pairs_dir = os.path.join(folder, "pairs")
        generate_pairs(model, prompts, rewards, pairs_dir, reward_weights=online.online_reward_weights, settings=settings,
                       selection=online.online_selection, margin=online.online_margin,
                       prompts_per_shard=PROMPTS_PER_SHARD, adapter=adapter,
                       device="cpu" if args.use_cpu else None, progress=progress)
        _barrier()  # every process's shards are written
        shards = PairShards(pairs_dir, len(prompts), PROMPTS_PER_SHARD)  # this round's shards, as written
        dataset, scores = shards.load(), shards.image_scores()
        round_args = dataclasses.replace(args, output_dir=os.path.join(folder, "adapter"))
        trainer = DDEDiffusionTrainer(model, args=round_args, train_dataset=dataset, peft_config=peft_config)
        if adapter is not None:
            trainer.family.load_lora(trainer.model, adapter)  # continue the policy, not a fresh adapter
        trainer.train()
        trainer.save_model(round_args.output_dir)
        losses = [entry["train_loss"] for entry in trainer.state.log_history if "train_loss" in entry]
        records.append({"round": round_index, "generated_with": adapter or "base model", "pairs": len(dataset),
                        "mean_reward": sum(scores) / len(scores), "train_loss": losses[-1] if losses else None,
                        "adapter": round_args.output_dir})
        adapter = round_args.output_dir
        _barrier()  # the adapter is saved before any process generates with it
    if args.should_save:
        write_json(os.path.join(args.output_dir, "rounds.json"), records)
        print(_rounds_table(records))
    return records


def _rounds_table(records: list[dict]) -> str:
    """The per-round Markdown table printed at the end."""
    from ..evaluation.reports import markdown_table

    rows = [(r["round"], r["generated_with"], r["pairs"], r["mean_reward"],
             "n/a" if r["train_loss"] is None else f"{r['train_loss']:.4f}") for r in records]
    return markdown_table(["round", "generated with", "pairs", "mean reward of its images", "train loss"], rows)
