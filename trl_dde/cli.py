"""The ``trl-dde`` command: ``train`` (YAML or flags), ``demo`` (offline comparison), ``eval``."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

__all__ = ["ScriptArguments", "main"]


@dataclass
class ScriptArguments:
    """What to train and on which data (the rest is ``DDEConfig``)."""

    model_name_or_path: str = field(
        default=None, metadata={"help": "Hub id or local folder of a diffusers Stable Diffusion pipeline."}
    )
    ref_model: str | None = field(
        default=None, metadata={"help": "Full fine-tuning only: reference UNet folder (default: a frozen copy)."}
    )
    dataset_name: str = field(
        default=None,
        metadata={"help": "Hub id (e.g. yuvalkirstain/pickapic_v2), a folder saved with Dataset.save_to_disk, "
                          "or a folder/file datasets.load_dataset reads."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_streaming: bool = field(
        default=False, metadata={"help": "Stream the training split (datasets IterableDataset; needs max_steps)."}
    )
    eval_split: str | None = field(default=None, metadata={"help": "Split to evaluate on (optional)."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full UNet."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"], metadata={"help": "UNet modules that get LoRA."}
    )


def load_preference_split(name: str, config: str | None, split: str, streaming: bool = False):
    """A split from a ``save_to_disk`` folder or anything ``datasets.load_dataset`` reads, optionally streamed."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if os.path.isdir(name) and any(os.path.isfile(os.path.join(name, f)) for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        dataset = load_from_disk(name)
        dataset = dataset[split] if isinstance(dataset, DatasetDict) else dataset
        return dataset.to_iterable_dataset(num_shards=max(1, dataset.num_rows // 1000)) if streaming else dataset
    return load_dataset(name, config, split=split, streaming=streaming)


def train(argv: list[str]):
    """Parse ``trl-dde train`` arguments (YAML via ``--config``, flags override), train, save; returns the trainer."""
    from peft import LoraConfig
    from trl import TrlParser

    from .config import DDEConfig
    from .trainer import DDEDiffusionTrainer

    parser = TrlParser((ScriptArguments, DDEConfig), prog="trl-dde train")
    script, args = parser.parse_args_and_config(argv)
    if not script.model_name_or_path or not script.dataset_name:
        parser.error("--model_name_or_path and --dataset_name are required (flags or YAML keys).")
    if script.dataset_streaming and args.max_steps <= 0:
        parser.error("--dataset_streaming needs --max_steps: a stream has no length.")
    peft_config = None
    if script.use_peft:
        peft_config = LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha, lora_dropout=script.lora_dropout,
                                 init_lora_weights="gaussian", target_modules=script.lora_target_modules)
    train_dataset = load_preference_split(script.dataset_name, script.dataset_config, script.dataset_split,
                                          script.dataset_streaming)
    eval_dataset = (load_preference_split(script.dataset_name, script.dataset_config, script.eval_split)
                    if script.eval_split else None)
    trainer = DDEDiffusionTrainer(script.model_name_or_path, ref_model=script.ref_model, args=args,
                                  train_dataset=train_dataset, eval_dataset=eval_dataset, peft_config=peft_config)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    card = {"dataset_name": script.dataset_name, "base_model": script.model_name_or_path}
    trainer.create_model_card(**card)
    print(f"Saved the trained {'LoRA adapter' if trainer.is_lora else 'UNet'} and its model card to {args.output_dir}")
    if args.push_to_hub:
        trainer.push_to_hub(**card)
    return trainer


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="trl-dde",
        description="Diffusion DPO for Stable Diffusion with pluggable per-timestep credit assignment.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("train", add_help=False,
                        help="train on a preference dataset (flags or --config cfg.yaml; `trl-dde train --help`)")
    demo = commands.add_parser("demo", help="compare all credit strategies on a tiny offline pipeline (no download)")
    from .demo import add_demo_arguments, run_demo

    add_demo_arguments(demo)
    evaluate = commands.add_parser("eval", help="compare tuned models with their base (paired images, scorers, beat "
                                                "ratios), or draw credit diagnostics of a run (--diagnostics RUN_DIR)")
    from .evaluation.cli import add_eval_arguments, run_eval

    add_eval_arguments(evaluate)
    if argv[:1] == ["train"]:
        train(argv[1:])
        return
    options = parser.parse_args(argv)
    if options.command == "demo":
        run_demo(options)
    elif options.command == "eval":
        run_eval(options)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
