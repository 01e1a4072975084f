"""The ``trl-dde`` command: ``train`` (YAML or flags), ``demo`` (offline comparison), ``eval``, ``pairs`` (generate
preference data), ``data inspect | relabel``.

Each subcommand imports only what it needs, when it runs: ``trl-dde --help`` loads no torch,
transformers or diffusers.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

__all__ = ["ScriptArguments", "load_preference_split", "main", "train"]


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
        metadata={"help": "Hub id (e.g. yuvalkirstain/pickapic_v2), a folder saved with Dataset.save_to_disk or "
                          "DatasetDict.save_to_disk, a local data file (Parquet, CSV, JSON Lines, ... any format "
                          "datasets reads) or a folder of such files."},
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


DATA_FILE_SUFFIXES = (".parquet", ".arrow", ".csv", ".tsv", ".json", ".jsonl", ".txt", ".gz", ".zst", ".tar")


def _looks_like_local_path(name: str) -> bool:
    """A relative/absolute path or a data file name, never a Hub id (``owner/name``)."""
    return name.startswith((".", "/")) or name.count("/") > 1 or name.lower().endswith(DATA_FILE_SUFFIXES)


def _saved_with_save_to_disk(folder: str) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (state.json) or ``DatasetDict.save_to_disk`` (dataset_dict.json)."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in ("state.json", "dataset_dict.json"))


def _saved_split(saved, folder: str, split: str, option: str):
    """The split of a ``load_from_disk`` result, or a ``ValueError`` listing the splits the folder holds.

    A ``Dataset`` folder holds one split: the one it was saved from (``dataset.split``), else ``train``.
    """
    from datasets import DatasetDict

    if isinstance(saved, DatasetDict):
        if split in saved:
            return saved[split]
        raise ValueError(f"{option}={split!r}: {folder} (a DatasetDict) has no split {split!r}. Its splits: "
                         f"{list(saved)}.")
    own_split = str(saved.split) if saved.split is not None else "train"
    if split == own_split:
        return saved
    raise ValueError(
        f"{option}={split!r}: {folder} holds a single Dataset, split {own_split!r}, and no split {split!r}. Use "
        f"{option}={own_split!r}, or save a DatasetDict with the splits you need "
        "(DatasetDict(train=..., validation=...).save_to_disk(folder))."
    )


def load_preference_split(name: str, config: str | None, split: str, streaming: bool = False,
                          option: str = "dataset_split", name_option: str = "dataset_name"):
    """One split of a preference dataset, from wherever ``--dataset_name`` points, optionally streamed.

    ``name`` is a folder written by ``trl-dde pairs``, a ``save_to_disk`` folder, a local data file (its format follows its extension, as in
    ``datasets``), a local folder of data files, or a Hub id. A split that does not exist is a ``ValueError``
    naming ``option`` and listing the splits that do; a local path that does not exist names ``name_option``.
    """
    from datasets import load_dataset, load_from_disk

    from .pairs.writer import is_generated_dataset, load_generated_pairs

    name = os.path.expanduser(name)
    if os.path.isdir(name) and is_generated_dataset(name):  # trl-dde pairs output: its shards, past the datasets cache
        if split != "train":
            raise ValueError(f"{option}={split!r}: {name} (written by trl-dde pairs) holds one split, 'train'.")
        dataset = load_generated_pairs(name)
        return dataset.to_iterable_dataset(num_shards=max(1, dataset.num_rows // 1000)) if streaming else dataset
    if os.path.isdir(name) and _saved_with_save_to_disk(name):
        dataset = _saved_split(load_from_disk(name), name, split, option)
        return dataset.to_iterable_dataset(num_shards=max(1, dataset.num_rows // 1000)) if streaming else dataset
    if os.path.isfile(name):  # datasets infers the builder (parquet, csv, json, ...) from the file's extension
        folder, file = os.path.split(os.path.abspath(name))
        source = {"path": folder, "data_files": file}
    elif _looks_like_local_path(name) and not os.path.exists(name):  # fail here, not after a Hub round-trip
        raise FileNotFoundError(f"{name_option}={name!r}: no such file or folder (a Hub id looks like 'owner/name').")
    else:  # a local folder of data files, or a Hub id
        source = {"path": name, "name": config}
    try:
        return load_dataset(**source, split=split, streaming=streaming)
    except ValueError as error:
        if str(error).startswith(("Unknown split", "Bad split")):  # datasets' messages list the existing splits
            raise ValueError(f"{option}={split!r} is not a split of {name}: {error}") from error
        raise


def _add_config_option(parser) -> None:
    """List ``--config`` in ``trl-dde train --help``; ``TrlParser`` reads it before parsing the rest."""
    parser.add_argument(
        "--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
        help="YAML file whose keys are any of the options listed here (e.g. examples/sd15_lora.yaml); options "
             "given on the command line override it.",
    )


def train(argv: list[str]):
    """Parse ``trl-dde train`` arguments (YAML via ``--config``, flags override), train, save; returns the trainer
    (with ``--online_rounds``: the per-round records of ``pairs.online.run_online_rounds``)."""
    from trl import TrlParser

    from .config import DDEConfig
    from .pairs.online import OnlineArguments

    _search_current_folder()  # for --credit my_module:MyCredit, --online_reward my_module:my_reward
    parser = TrlParser((ScriptArguments, DDEConfig, OnlineArguments), prog="trl-dde train",
                       description="Train a Stable Diffusion pipeline on preference pairs. Options come from flags "
                                   "and/or a YAML file given with --config FILE.yaml (flags override the file).")
    _add_config_option(parser)
    script, args, online = parser.parse_args_and_config(argv)  # DDEConfig validates itself here, before anything loads
    if online.online_rounds:
        return _train_online(parser, script, args, online)
    if not script.model_name_or_path or not script.dataset_name:
        parser.error("--model_name_or_path and --dataset_name are required (flags or YAML keys).")
    if script.dataset_streaming and args.max_steps <= 0:
        parser.error("--dataset_streaming needs --max_steps: a stream has no length.")
    train_dataset = load_preference_split(script.dataset_name, script.dataset_config, script.dataset_split,
                                          script.dataset_streaming, option="dataset_split")
    eval_dataset = (load_preference_split(script.dataset_name, script.dataset_config, script.eval_split,
                                          option="eval_split") if script.eval_split else None)
    peft_config = _peft_config(script)

    from .trainer import DDEDiffusionTrainer

    trainer = DDEDiffusionTrainer(script.model_name_or_path, ref_model=script.ref_model, args=args,
                                  train_dataset=train_dataset, eval_dataset=eval_dataset, peft_config=peft_config)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    from .card import is_hub_id

    # a local data path says less than the name the dataset object knows itself by
    card = {"dataset_name": script.dataset_name if is_hub_id(script.dataset_name) else None,
            "base_model": script.model_name_or_path}
    trainer.create_model_card(**card)
    print(f"Saved the trained {'LoRA adapter' if trainer.is_lora else 'UNet'} and its model card to {args.output_dir}")
    if args.push_to_hub:
        trainer.push_to_hub(**card)
    return trainer


def _peft_config(script: ScriptArguments):
    """The LoRA configuration of ``--use_peft`` (``None`` without it)."""
    if not script.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha, lora_dropout=script.lora_dropout,
                      init_lora_weights="gaussian", target_modules=script.lora_target_modules)


def _train_online(parser, script: ScriptArguments, args, online) -> list[dict]:
    """``--online_rounds R``: generate → score → train per round (``pairs.online``); no --dataset_name."""
    from .pairs.online import run_online_rounds

    if not script.model_name_or_path:
        parser.error("--model_name_or_path is required (flag or YAML key).")
    if script.dataset_name:
        parser.error("--online_rounds generates each round's pairs; do not give --dataset_name too.")
    try:
        online.check(script.use_peft)
    except ValueError as error:
        parser.error(str(error))
    return run_online_rounds(script.model_name_or_path, args, online, _peft_config(script))


def _search_current_folder() -> None:
    """Let ``--credit my_module:MyCredit`` find ``my_module.py`` in the current folder, as ``python -m`` would.

    The folder is searched last, so a file there never shadows an installed library.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="trl-dde",
        description="Diffusion DPO for Stable Diffusion with pluggable per-timestep credit assignment.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("train", add_help=False,
                        help="train on a preference dataset (flags or --config cfg.yaml; `trl-dde train --help`)")
    demo = commands.add_parser("demo", help="offline credit-assignment benchmark: pretrain a base on a small world, train every method, compare (no download)")
    evaluate = commands.add_parser("eval", help="compare tuned models with their base (paired images, scorers, beat "
                                                "ratios), or draw credit diagnostics of a run (--diagnostics RUN_DIR)")
    pairs = commands.add_parser("pairs", help="generate a preference dataset from a model and rewards (AI feedback)")
    data = commands.add_parser("data", help="inspect a preference dataset, or relabel it with a reward")
    command = argv[0] if argv else None
    if command == "train":
        train(argv[1:])
        return
    if command == "demo":
        from .benchmark.run import add_demo_arguments, run_demo

        _search_current_folder()  # for --strategies my_module:MyCredit
        add_demo_arguments(demo)
    if command == "eval":
        from .evaluation.cli import add_eval_arguments, run_eval

        _search_current_folder()  # for --scorers my_module:my_reward
        add_eval_arguments(evaluate)
    if command == "pairs":
        from .pairs.cli import add_pairs_arguments, run_pairs

        _search_current_folder()  # for --reward my_module:my_reward
        add_pairs_arguments(pairs)
    if command == "data":
        from .pairs.cli import add_data_arguments, run_data

        _search_current_folder()
        add_data_arguments(data)
    options = parser.parse_args(argv)
    if options.command == "demo":
        run_demo(options)
    elif options.command == "eval":
        run_eval(options)
    elif options.command == "pairs":
        run_pairs(options)
    elif options.command == "data":
        run_data(options)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
