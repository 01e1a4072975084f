"""``trl-dde demo``: the offline credit-assignment benchmark, end to end.

Phases (each with a progress bar): pretrain or load the cached base, sample the base on the held-out
prompts and make preference pairs from it, train every method for every seed from the same base on the
same pairs (in ``--workers`` processes), then write to ``--output_dir``: ``results.md`` (table and the
paper's claims with computed verdicts), ``results.json``, plots (``reward_curves.png``,
``credit_profiles.png``, ``corrections.png``, ``segments.png``) and ``samples.png`` (base and every
method, same noise), and print one table. Training logs go to ``train_log.jsonl`` and ``logs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["add_demo_arguments", "run_demo"]

METHODS = ["sft", "uniform", "discounted", "dde", "dde:mean", "dde-single", "dde-step", "dde-step:mean",
           "uniform@200-700", "segments"]
DEFAULTS = {"pretrain_steps": 300, "steps": 20, "seeds": 3, "samples_per_prompt": 4, "pair_prompts": 83,
            "eval_images": 2, "learning_rate": 5e-3, "beta": 5000.0}
QUICK = {**DEFAULTS, "pretrain_steps": 10, "steps": 2, "seeds": 1, "samples_per_prompt": 2, "pair_prompts": 8,
         "eval_images": 1}


def _method(spec: str) -> str:
    from .experiment import method_config

    if spec != "segments":
        try:
            method_config(spec)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error
    return spec


def _number(kind: type, low: float, strict: bool = False):
    """An argparse type: a ``kind`` number ``>= low`` (``> low`` when ``strict``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '>='} {low}")
        return value
    return parse


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategies", nargs="+", default=METHODS, type=_method, metavar="METHOD",
                        help="methods to compare: sft, a credit strategy (registered name or package.module:ClassName), "
                             "dde:mean or dde-step:mean (correction_reduction=mean), uniform@LOW-HIGH (uniform credit on "
                             f"[LOW, HIGH) only), segments (uniform on each 10%% of τ) (default: {' '.join(METHODS)})")
    parser.add_argument("--quick", action="store_true", help="a < 1 min smoke run: tiny pretraining, 2 steps, 1 seed")
    parser.add_argument("--seeds", type=_number(int, 1), default=None, help=f"seeds per method (default: {DEFAULTS['seeds']})")
    parser.add_argument("--steps", type=_number(int, 1), default=None, help=f"training steps per run (default: {DEFAULTS['steps']})")
    parser.add_argument("--pretrain_steps", type=_number(int, 0), default=None,
                        help=f"SFT steps of the base (default: {DEFAULTS['pretrain_steps']}; cached)")
    parser.add_argument("--learning_rate", type=_number(float, 0.0, strict=True), default=None,
                        help=f"LoRA learning rate of every method (default: {DEFAULTS['learning_rate']})")
    parser.add_argument("--beta", type=_number(float, 0.0, strict=True), default=None, help=f"DPO β of every method (default: {DEFAULTS['beta']:g})")
    parser.add_argument("--workers", type=_number(int, 1), default=None,
                        help="processes training runs side by side, one thread each (default: the number of CPU cores)")
    parser.add_argument("--cache_dir", default=None, help="where pretrained bases are cached (default: ~/.cache/trl-dde)")
    parser.add_argument("--output_dir", default=None, help="where reports are written (default: a temporary folder)")


def _settings(options: argparse.Namespace) -> dict:
    base = QUICK if options.quick else DEFAULTS
    return {name: getattr(options, name, None) if getattr(options, name, None) is not None else value
            for name, value in base.items()}


def _refuse_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("trl-dde demo runs its methods side by side in its own worker processes; start it as one "
                         "process (`trl-dde demo --workers N`), not under torchrun or accelerate launch.")


def eval_seed(seed: int) -> int:
    """The sampling seed of the held-out evaluation of training seed ``seed`` (base and methods alike)."""
    return 10_000 * (seed + 1)


def run_demo(options: argparse.Namespace) -> dict:
    """Run every phase; returns what ``results.json`` holds."""
    from ..evaluation.loading import quiet_libraries
    from .experiment import expand_methods, make_pairs, sample
    from .pretrain import pretrained_base
    from .report import table
    from .workers import run_parallel
    from .world import split_scenes

    _refuse_distributed()
    settings = _settings(options)
    methods = expand_methods(options.strategies)
    workers = options.workers or os.cpu_count() or 1
    output = Path(options.output_dir or tempfile.mkdtemp(prefix="trl-dde-demo-"))
    output.mkdir(parents=True, exist_ok=True)
    train_scenes, held_out = split_scenes()
    captions = [scene.caption for scene in held_out]
    eval_captions = [caption for caption in captions for _ in range(settings["eval_images"])]
    seeds = list(range(settings["seeds"]))
    start = time.perf_counter()
    with quiet_libraries():
        base, base_path, cached = pretrained_base(train_scenes, settings["pretrain_steps"], str(output / "pretrain"),
                                                  Path(options.cache_dir) / "benchmark" if options.cache_dir else None)
        base_images = {seed: sample(base, captions, eval_seed(seed), settings["eval_images"])
                       for seed in tqdm(seeds, desc="base samples")}
        pairs = make_pairs(base, train_scenes[:settings["pair_prompts"]], settings["samples_per_prompt"], seed=0)
        pairs.save_to_disk(str(output / "pairs"))
    tasks = [{"method": method, "seed": seed, "steps": settings["steps"], "eval_captions": captions,
              "output_dir": str(output / "runs" / method.replace(":", "_") / f"seed-{seed}"),
              "eval_seed": eval_seed(seed), "images_per_prompt": settings["eval_images"],
              "learning_rate": settings["learning_rate"], "beta": settings["beta"]}
             for method in methods for seed in seeds]
    workers = min(workers, len(tasks))
    runs = {}
    for result in tqdm(run_parallel(tasks, workers, base_path, output / "pairs", output / "logs"), total=len(tasks),
                       desc=f"train + evaluate ({workers} workers)"):
        runs[result.method, result.seed] = result
    report = _report(settings, methods, runs, base_images, eval_captions, seeds, pairs, cached)
    report.update(held_out_prompts=len(captions), workers=workers, seconds=time.perf_counter() - start)
    _write(output, report, runs, base_images, base.scheduler.alphas_cumprod)
    print("\n" + table(report))
    print(f"\nreports in {output}: results.md (with the paper's claims), results.json, samples.png, reward_curves.png, "
          "credit_profiles.png, corrections.png, segments.png; logs in train_log.jsonl and logs/")
    return report


def _write(output: Path, report: dict, runs: dict, base_images: dict, alphas_cumprod) -> None:
    """Every file of ``--output_dir``: logs, results.json/.md, plots and the sample grid (seed 0, one image per prompt)."""
    from ..evaluation.reports import image_grid, write_json
    from .plots import write_plots
    from .report import markdown_report

    with (output / "train_log.jsonl").open("w", encoding="utf-8") as log:
        for (method, seed), run in sorted(runs.items()):
            log.write(json.dumps({"method": method, "seed": seed, "log_history": run.log_history}) + "\n")
    write_json(output / "results.json", report)
    (output / "results.md").write_text(markdown_report(report), encoding="utf-8")
    write_plots(report, alphas_cumprod, output)
    per_prompt, methods = report["settings"]["eval_images"], report["methods"]
    grid = [base_images[0][::per_prompt]] + [runs[method, 0].images[::per_prompt] for method in methods]
    image_grid(grid, row_labels=["base"] + methods).save(output / "samples.png")


def _report(settings, methods, runs, base_images, eval_captions, seeds, pairs, cached) -> dict:
    """``results.json``'s content: each method's statistics against the base, curves, corrections and claims."""
    from ..evaluation.statistics import mean_std
    from .experiment import evaluate
    from .report import claims, diversity, summarise

    all_captions = eval_captions * len(seeds)
    base_flat = [image for seed in seeds for image in base_images[seed]]
    base_scores = evaluate(base_flat, all_captions)
    results, curves, corrections = {}, {}, {}
    for method in methods:
        own = [runs[method, seed] for seed in seeds]
        scores = {name: [v for run in own for v in run.scores[name]] for name in ("preference", "fidelity")}
        images = [image for run in own for image in run.images]
        results[method] = summarise(scores, base_scores, images, base_flat, all_captions)
        results[method]["preference_per_seed"] = [sum(run.scores["preference"]) / len(run.scores["preference"]) for run in own]
        curves[method] = [run.curve for run in own]
        corrections[method] = [run.corrections for run in own if run.corrections is not None]
    return {"settings": settings, "methods": methods, "base_cached": cached, "pairs": len(pairs),
            "ties": int(sum(label == 0.5 for label in pairs["label_0"])),
            "base": {"preference": mean_std(base_scores["preference"]).to_dict(),
                     "fidelity": mean_std(base_scores["fidelity"]).to_dict(),
                     "diversity": diversity(base_flat, all_captions)},
            "results": results, "reward_curves": curves, "corrections": corrections,
            "claims": claims({"base": base_scores["preference"],
                              **{method: [v for seed in seeds for v in runs[method, seed].scores["preference"]]
                                 for method in methods}})}
