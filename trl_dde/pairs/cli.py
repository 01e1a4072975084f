"""``trl-dde pairs`` (generate a preference dataset) and ``trl-dde data inspect | relabel``.

Everything that can be wrong with the options (a reward that does not import, a missing prompt file, fewer
than two images per prompt, weights that do not match the rewards) is reported before a pipeline loads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_data_arguments", "add_pairs_arguments", "run_data", "run_pairs"]


def add_pairs_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``trl-dde pairs`` (docs/data.md)."""
    parser.add_argument("--model", required=True, help="base pipeline: Hub id or folder (any family trl-dde trains)")
    parser.add_argument("--adapter", default=None, help="LoRA folder loaded on the pipeline (e.g. a trained policy)")
    parser.add_argument("--prompts", required=True,
                        help="text file (one prompt per line), data file/folder or Hub dataset (with --prompt_column), "
                             "or a shipped list: builtin, parti, drawbench, hpsv2, pickapic")
    parser.add_argument("--prompt_column", default=None, help="column holding the prompts in a dataset")
    parser.add_argument("--prompt_split", default=None, help="dataset split (default: train)")
    parser.add_argument("--max_prompts", type=int, default=None, help="use this many prompts, evenly spaced over the set")
    parser.add_argument("--reward", action="append", required=True, metavar="NAME_OR_module:function",
                        help="a registered scorer or an import string f(images, prompts); repeat for several")
    parser.add_argument("--reward_weights", type=float, nargs="+", default=None,
                        help="one weight per --reward (default 1 each); pairs follow the weighted sum")
    parser.add_argument("--images_per_prompt", type=int, default=4, help="K images per prompt (>= 2, default 4)")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="sampler steps (default 50)")
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="classifier-free guidance (default 7.5)")
    parser.add_argument("--resolution", type=int, default=None, help="image size (default: the pipeline's)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; image j of prompt i has its own derived seed")
    parser.add_argument("--batch_size", type=int, default=4, help="images per pipeline call (default 4)")
    parser.add_argument("--selection", default="best_worst", choices=["best_worst", "margin", "random"],
                        help="best vs worst per prompt, all pairs at least --margin apart, or random pairs (ties marked)")
    parser.add_argument("--margin", type=float, default=0.0, help="minimum score difference of a pair (default 0)")
    parser.add_argument("--prompts_per_shard", type=int, default=8,
                        help="prompts per Parquet shard: written at once, redone after a kill (default 8)")
    parser.add_argument("--output_dir", required=True, help="where data/*.parquet, README.md and pairs.json go")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: this process's GPU if any)")
    parser.add_argument("--torch_dtype", default=None, choices=["float32", "float16", "bfloat16"])


def run_pairs(options: argparse.Namespace):
    """``trl-dde pairs``: check the options, generate, and print the dataset's counts."""
    import torch

    from ..evaluation.reports import key_value_table

    from ..evaluation.generation import GenerationSettings
    from ..evaluation.prompts import load_prompts
    from ..evaluation.rewards import load_reward
    from ..families.registry import family_class_for
    from .generate import generate_pairs, process_rank
    from .selection import check_selection

    if options.reward_weights is not None and len(options.reward_weights) != len(options.reward):
        sys.exit(f"trl-dde pairs: {len(options.reward)} --reward but {len(options.reward_weights)} --reward_weights; "
                 "give one weight per reward.")
    try:
        settings = GenerationSettings(num_images_per_prompt=options.images_per_prompt, seed=options.seed,
                                      num_inference_steps=options.num_inference_steps,
                                      guidance_scale=options.guidance_scale, resolution=options.resolution,
                                      batch_size=options.batch_size)
        if options.images_per_prompt < 2:
            raise ValueError(f"--images_per_prompt must be at least 2 to form a pair, got {options.images_per_prompt}.")
        if options.prompts_per_shard < 1:
            raise ValueError(f"--prompts_per_shard must be at least 1, got {options.prompts_per_shard}.")
        check_selection(options.selection, options.margin)
        rewards = [load_reward(spec) for spec in options.reward]
        prompts = load_prompts(options.prompts, column=options.prompt_column, split=options.prompt_split,
                               max_prompts=options.max_prompts)
        family_class_for(options.model)  # reads model_index.json only: a wrong --model fails before any weight loads
    except (ValueError, OSError, ImportError, AttributeError, TypeError) as error:  # FileNotFoundError is an OSError
        sys.exit(f"trl-dde pairs: {error}")
    dtype = getattr(torch, options.torch_dtype) if options.torch_dtype else None
    try:
        dataset = generate_pairs(options.model, prompts, rewards, options.output_dir,
                                 reward_weights=options.reward_weights, settings=settings, selection=options.selection,
                                 margin=options.margin, prompts_per_shard=options.prompts_per_shard,
                                 adapter=options.adapter, device=options.device, torch_dtype=dtype)
    except ValueError as error:  # e.g. resuming into an output folder generated with other settings
        sys.exit(f"trl-dde pairs: {error}")
    rank, world_size = process_rank()
    if dataset is None:
        print(f"rank {rank}/{world_size}: shards written; the last process to finish writes the dataset card.")
    else:
        statistics = json.loads((Path(options.output_dir) / "pairs.json").read_text(encoding="utf-8"))["statistics"]
        print(key_value_table(statistics))
        print(f"Wrote {len(dataset)} pairs to {options.output_dir} (train with --dataset_name {options.output_dir}).")
    return dataset


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``inspect`` and ``relabel`` actions of ``trl-dde data`` and their options."""
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    inspect = actions.add_parser("inspect", help="schema, row counts, ties, undecodable images, example pairs")
    relabel = actions.add_parser("relabel", help="swap or keep each pair by a reward; agreement with the human labels")
    for sub in (inspect, relabel):
        sub.add_argument("dataset", metavar="DATASET", help="save_to_disk folder, data file or folder, or Hub id")
        sub.add_argument("--dataset_config", default=None)
        sub.add_argument("--split", default="train")
        sub.add_argument("--column_map", default=None, help="JSON role -> column, e.g. '{\"prompt\": \"caption\"}'")
        sub.add_argument("--image_root", default=None, help="local folder for relative image paths and mirrored URLs")
        sub.add_argument("--ranked_pairs", default="adjacent", choices=["adjacent", "all", "best_worst"])
    inspect.add_argument("--num_examples", type=int, default=3, help="example pairs to print (default 3)")
    relabel.add_argument("--reward", required=True, metavar="NAME_OR_module:function", help="reward that decides")
    relabel.add_argument("--margin", type=float, default=None, help="drop pairs whose scores differ by less")
    relabel.add_argument("--batch_size", type=int, default=16, help="pairs scored at once (default 16)")
    relabel.add_argument("--output_dir", required=True, help="where the relabeled dataset is saved (save_to_disk)")


def _data_args(options):
    """A ``DDEConfig`` carrying the data-layout options (column map, image root, ranked pairs) of the command."""
    from ..config import DDEConfig

    return DDEConfig(report_to="none", column_map=options.column_map, image_root=options.image_root,
                     ranked_pairs=options.ranked_pairs)


def run_data(options: argparse.Namespace):
    """``trl-dde data inspect | relabel``: a bad dataset, column map or reward is one line on stderr, exit 1."""
    from ..cli import load_preference_split

    try:
        args = _data_args(options)
        dataset = load_preference_split(options.dataset, options.dataset_config, options.split, option="--split",
                                        name_option="DATASET")
        if options.data_command == "inspect":
            return _inspect(dataset, args, options)
        from .relabel import relabel_dataset

        relabeled, report = relabel_dataset(dataset, options.reward, args, margin=options.margin,
                                            batch_size=options.batch_size)
    except (ValueError, FileNotFoundError, ImportError, AttributeError) as error:
        sys.exit(f"trl-dde data {options.data_command}: {error}")
    relabeled.save_to_disk(options.output_dir)
    print(report.table())
    print(f"Saved {len(relabeled)} relabeled pairs to {options.output_dir}.")
    return report


def _inspect(dataset, args, options) -> dict:
    """Print what training would see: layout, counts, ties, unusable rows and a few pairs; returns the counts."""
    from ..evaluation.reports import key_value_table
    from ..data.images import load_image
    from ..data.prepare import prepare_preference_dataset
    from ..data.schema import detect_schema, layouts_from_args

    layout = detect_schema(dataset.column_names, layouts_from_args(args))
    prepared = prepare_preference_dataset(dataset, args, options.split)
    schema, usable = prepared.schema, len(prepared.dataset)
    counts = {"layout": layout.kind, "columns": ", ".join(layout.columns), "rows": len(dataset),
              "pairs": usable + prepared.ties_dropped + prepared.corrupt_dropped, "ties": prepared.ties_dropped,
              "undecodable or invalid": prepared.corrupt_dropped, "usable pairs": usable}
    print(key_value_table(counts))
    for index in range(min(options.num_examples, usable)):
        row = prepared.dataset[index]
        winner, loser, preference = schema.orient(row)
        sizes = " vs ".join(f"{image.width}x{image.height}" for image in (load_image(winner), load_image(loser)))
        print(f"  example {index}: {row[schema.prompt]!r}: preferred vs other {sizes}"
              f"{' (tie)' if preference != 1 else ''}")
    return counts
