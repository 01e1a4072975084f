"""``trl-dde eval``: tuned models against their base on the measures the field reports.

    trl-dde eval --model BASE --adapter RUN [RUN ...] [--unet RUN ...] --prompts parti \\
                 --scorers pickscore hpsv2 clip aesthetic --num_images_per_prompt 8 --output_dir eval-out
    trl-dde eval --output_dir eval-out --rescore --scorers my_rewards.py:sharpness   # no generation
    trl-dde eval --diagnostics RUN_DIR                                               # credit plots

Generates paired images (same seed per prompt and image index), scores them one scorer at a time, and
writes ``report.md`` (Table-2-style), ``scores.csv``, ``scores.json`` and ``grid.png`` into
``--output_dir``; the table is printed at the end. This module imports only the standard library at
import time, so ``trl-dde --help`` stays fast; the work happens in ``run_eval``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["add_eval_arguments", "run_eval"]

BUILTIN_SCORERS = ("pickscore", "hpsv2", "clip", "aesthetic", "imagereward")  # kept equal to available_rewards() by a test
DEFAULT_SCORERS = ["pickscore", "hpsv2", "clip", "aesthetic"]
DEFAULT_OUTPUT_DIR = "trl-dde-eval"


def _json_object(text: str) -> dict:
    """A JSON object given inline or as the path of a ``.json`` file."""
    if text.endswith(".json") and os.path.isfile(text):
        with open(text, encoding="utf-8") as handle:
            text = handle.read()
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"hpsv2\": {{\"version\": \"v2.0\"}}}}', got {text!r}")
    return value


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``trl-dde eval``."""
    models = parser.add_argument_group("models")
    models.add_argument("--model", help="base pipeline: Hub id or folder of a diffusers Stable Diffusion 1.5/XL pipeline")
    models.add_argument("--adapter", nargs="+", default=[], metavar="[LABEL=]LOCATION",
                        help="tuned LoRA adapter(s): a trl-dde output folder or Hub id; several are compared side by side")
    models.add_argument("--unet", nargs="+", default=[], metavar="[LABEL=]LOCATION",
                        help="tuned full denoiser(s): a full fine-tune's output folder (with unet/, or transformer/ for "
                             "SD3/Flux), a denoiser folder or Hub id")
    models.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    models.add_argument("--torch_dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="dtype the pipeline is loaded in (default: as stored)")
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompts", default="builtin",
                         help="builtin (48, offline), parti, drawbench, hpsv2[:style], pickapic, a text file (one per "
                              "line), a data file/folder or a Hub dataset id (default: builtin)")
    prompts.add_argument("--prompt_column", default=None, help="column holding the prompts in a dataset")
    prompts.add_argument("--prompt_split", default=None, help="dataset split (default: train)")
    prompts.add_argument("--max_prompts", type=int, default=None, help="use this many prompts, evenly spaced over the set")
    generation = parser.add_argument_group("generation (shared by every model)")
    generation.add_argument("--num_images_per_prompt", type=int, default=1, help="images per prompt (paper: 8; default 1)")
    generation.add_argument("--seed", type=int, default=0, help="base seed; image j of prompt i has its own derived seed")
    generation.add_argument("--num_inference_steps", type=int, default=50, help="sampler steps (default 50)")
    generation.add_argument("--guidance_scale", type=float, default=7.5, help="classifier-free guidance (default 7.5)")
    generation.add_argument("--resolution", type=int, default=None, help="image size (default: the pipeline's)")
    generation.add_argument("--batch_size", type=int, default=4, help="images per pipeline call (default 4)")
    scoring = parser.add_argument_group("scoring and report")
    scoring.add_argument("--scorers", nargs="+", default=DEFAULT_SCORERS, metavar="SCORER",
                         help=f"registered ({', '.join(BUILTIN_SCORERS)}) or 'module:function' / 'file.py:function' "
                              f"rewards (default: {' '.join(DEFAULT_SCORERS)})")
    scoring.add_argument("--scorer_kwargs", type=_json_object, default={},
                         help='options per scorer as JSON (inline or a .json file), e.g. \'{"hpsv2": {"version": '
                              '"v2.0"}, "clip": {"scale": "x100"}, "pickscore": {"model": "/local/PickScore_v1"}}\'')
    scoring.add_argument("--scorer_batch_size", type=int, default=16, help="images per scorer forward pass (default 16)")
    scoring.add_argument("--output_dir", default=None,
                         help="where images and reports go (default: trl-dde-eval; with --diagnostics: RUN_DIR/diagnostics)")
    scoring.add_argument("--rescore", action="store_true",
                         help="score the images already in --output_dir (written by an earlier run) without generating")
    scoring.add_argument("--grid_rows", type=int, default=8, help="rows of the side-by-side grid (default 8)")
    parser.add_argument("--diagnostics", metavar="RUN_DIR", default=None,
                        help="instead: draw credit diagnostics (paper Fig. 2a, Fig. 7, weights per timestep) of a "
                             "training output folder into --output_dir (default RUN_DIR/diagnostics); --model gives "
                             "its noise schedule")


def _fail(message: str):
    raise SystemExit(f"trl-dde eval: error: {message}")


def _run_diagnostics(options) -> dict:
    from .diagnostics import run_diagnostics

    written = run_diagnostics(options.diagnostics, output_dir=options.output_dir, model=options.model)
    if "correction_terms" not in written:
        print("No stepwise correction terms in this run (only dde and dde-step have them): Fig. 7 skipped.")
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


def _load_scorer(spec: str, options):
    from .rewards import available_rewards, load_reward

    kwargs = dict(options.scorer_kwargs.get(spec, {}))
    if spec in available_rewards():  # every built-in scorer takes these
        kwargs.setdefault("batch_size", options.scorer_batch_size)
        if options.device:
            kwargs.setdefault("device", options.device)
    return load_reward(spec, **kwargs)


def _free_memory() -> None:
    """Release a finished phase's models before the next one loads (one large model at a time on the device)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_eval(options: argparse.Namespace) -> dict:
    """Run ``trl-dde eval`` with parsed ``options``; returns the summary (or the diagnostics' paths)."""
    if options.diagnostics:
        return _run_diagnostics(options)
    options.output_dir = options.output_dir or DEFAULT_OUTPUT_DIR
    from .rewards import available_rewards

    unknown = [spec for spec in options.scorers if spec not in available_rewards() and ":" not in spec]
    if unknown:
        _fail(f"unknown scorer(s) {unknown}; registered: {', '.join(available_rewards())}, or 'module:function'.")
    if len(set(options.scorers)) != len(options.scorers):
        _fail(f"--scorers names a scorer twice: {options.scorers}.")
    stray = sorted(set(options.scorer_kwargs) - set(options.scorers))
    if stray:
        _fail(f"--scorer_kwargs has options for {stray}, which are not in --scorers {options.scorers}.")
    if options.rescore and (options.model or options.adapter or options.unet):
        _fail("--rescore scores existing images; it takes no --model, --adapter or --unet.")
    if not options.rescore and not options.model:
        _fail("--model (the base pipeline) is required, unless --rescore scores images already generated.")

    import torch

    from .generation import GenerationSettings, PairedImages, generate_paired, parse_model_spec
    from .prompts import load_prompts
    from .scoring import results_table, score_images, summarize, write_report

    if options.rescore:
        images = PairedImages.load(options.output_dir)
    else:
        from ..families.registry import family_class_for

        try:
            models = [parse_model_spec(text, "adapter") for text in options.adapter]
            models += [parse_model_spec(text, "unet") for text in options.unet]
            settings = GenerationSettings(options.num_images_per_prompt, options.seed, options.num_inference_steps,
                                          options.guidance_scale, options.resolution, options.batch_size)
        except ValueError as error:
            _fail(str(error))
        try:
            family_class_for(options.model)  # reads model_index.json only: a wrong --model fails before any weight loads
        except (ValueError, OSError) as error:  # FileNotFoundError is an OSError
            _fail(str(error))
        prompts = load_prompts(options.prompts, column=options.prompt_column, split=options.prompt_split,
                               max_prompts=options.max_prompts)
        dtype = getattr(torch, options.torch_dtype) if options.torch_dtype else None
        images = generate_paired(options.model, models, prompts, options.output_dir, settings, options.device, dtype)
        _free_memory()
    scores, scorers = {label: {} for label in images.labels}, {}
    for spec in options.scorers:  # one scorer in memory at a time
        try:
            reward = _load_scorer(spec, options)
        except Exception:
            print(f"trl-dde eval: the images are saved in {options.output_dir}; once the scorer loads, `trl-dde eval "
                  f"--rescore --output_dir {options.output_dir} --scorers ...` scores them without generating again.",
                  file=sys.stderr)
            raise
        if reward.name in scorers:
            _fail(f"two scorers are both named {reward.name!r}; the report needs distinct names.")
        for label, values in score_images(images, [reward]).items():
            scores[label].update(values)
        scorers[reward.name] = reward.description
        del reward
        _free_memory()
    summary = summarize(scores)
    paths = write_report(options.output_dir, images, scores, summary, scorers, options.grid_rows)
    print("\n" + results_table(summary) + "\n")
    for name, description in scorers.items():
        print(f"  {name}: {description}")
    print(f"\nReport: {paths['report.md']}  (per-image scores: {paths['scores.csv']}, grid: {paths['grid.png']})")
    return summary
