"""Scoring paired images and reporting the comparison the way the DDE paper does (Table 2, Fig. 5).

* ``score_images``: every reward on every model's images, read from disk in chunks (a 4000-image
  evaluation never sits in memory at once);
* ``summarize``: per model and reward the mean ± sample std; per tuned model and reward the beat ratio
  against the base (ties count ½, binomial standard error) and a paired bootstrap interval of the mean
  difference;
* ``results_table``: the Table-2-style Markdown table (rows: models; columns: each reward's mean ± std
  and beat ratio);
* ``write_report``: ``report.md``, ``scores.csv`` and ``scores.json`` (every per-image score) and
  ``grid.png`` (base | tuned, same seed, side by side).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .generation import BASE_LABEL, PairedImages
from .reports import image_grid, markdown_table, write_csv, write_json
from .rewards import Reward
from .statistics import beat_ratio, mean_std, paired_bootstrap_ci

__all__ = ["comparison_grid", "results_table", "score_images", "summarize", "write_report"]

Scores = dict[str, dict[str, torch.Tensor]]  # model label -> reward name -> Tensor[N], item order


def score_images(images: PairedImages, rewards: Sequence[Reward], chunk_size: int = 64, progress: bool = True) -> Scores:
    """``{model label: {reward name: Tensor[N]}}`` for every model of ``images`` and every reward."""
    from tqdm.auto import tqdm

    names = [reward.name for reward in rewards]
    if len(set(names)) != len(names):
        raise ValueError(f"Reward names must be distinct to label the report's columns; got {names}.")
    prompts = images.item_prompts
    scores: Scores = {label: {} for label in images.labels}
    starts = range(0, len(prompts), chunk_size)
    for reward in rewards:
        with tqdm(total=len(images.labels) * len(prompts), desc=f"scoring with {reward.name}", unit="image",
                  disable=not progress) as bar:
            for label in images.labels:
                paths, values = images.paths(label), []
                for start in starts:
                    batch = [Image.open(path).convert("RGB") for path in paths[start:start + chunk_size]]
                    values.append(reward(batch, prompts[start:start + chunk_size]))
                    bar.update(len(batch))
                scores[label][reward.name] = torch.cat(values)
    return scores


def summarize(scores: Scores, base: str = BASE_LABEL, confidence: float = 0.95, seed: int = 0) -> dict:
    """Means, standard deviations, beat ratios and paired bootstrap intervals, as plain JSON-ready data.

    Returns ``{"models": {label: {reward: {mean, std, n}}}, "comparisons": {label: {reward: {ratio, stderr,
    wins, ties, losses, n, mean_difference, ci_low, ci_high, confidence}}}}``; comparisons exclude ``base``.
    """
    if base not in scores:
        raise ValueError(f"No scores for the base model {base!r}; models scored: {list(scores)}.")
    summary = {"models": {}, "comparisons": {}}
    for label, by_reward in scores.items():
        summary["models"][label] = {name: mean_std(values).to_dict() for name, values in by_reward.items()}
        if label == base:
            continue
        summary["comparisons"][label] = {}
        for name, values in by_reward.items():
            reference = scores[base][name]
            low, high = paired_bootstrap_ci(values, reference, confidence=confidence, seed=seed)
            summary["comparisons"][label][name] = {
                **beat_ratio(values, reference).to_dict(),
                "mean_difference": float((values.double() - reference.double()).mean()),
                "ci_low": low, "ci_high": high, "confidence": confidence,
            }
    return summary


def results_table(summary: dict) -> str:
    """Table 2 of the paper, per model: each reward's ``mean ± std`` and the beat ratio against the base."""
    models = summary["models"]
    rewards = list(next(iter(models.values())))
    headers = ["model"] + [title for name in rewards for title in (name, f"{name} beat %")]
    rows = []
    for label, by_reward in models.items():
        row = [label]
        for name in rewards:
            statistic = by_reward[name]
            row.append(f"{statistic['mean']:.4g} ± {statistic['std']:.2g}")
            comparison = summary["comparisons"].get(label, {}).get(name)
            row.append(f"{100 * comparison['ratio']:.1f} ± {100 * comparison['stderr']:.1f}" if comparison else "—")
        rows.append(row)
    return markdown_table(headers, rows)


def comparison_grid(images: PairedImages, rows: int = 8, cell_size: int | None = None) -> Image.Image:
    """The first ``rows`` items, one row each: base | tuned model(s), same prompt and seed."""
    items = images.items[:rows]
    grid = [[Image.open(images.path(label, p, j)) for label in images.labels] for p, j, _ in items]
    labels = [f"{_shorten(images.prompts[p], 40)} #{j}" for p, j, _ in items]
    return image_grid(grid, row_labels=labels, column_labels=images.labels, cell_size=cell_size)


def _shorten(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length - 1] + "…"


def write_report(output_dir: str | os.PathLike, images: PairedImages, scores: Scores, summary: dict,
                 scorers: dict[str, str], grid_rows: int = 8) -> dict[str, Path]:
    """Write ``report.md``, ``scores.csv``, ``scores.json`` and ``grid.png``; return their paths.

    ``scorers`` maps each reward's name to its description (model, version, scale), printed with the table.
    """
    output_dir = Path(output_dir)
    paths = {name: output_dir / name for name in ("report.md", "scores.csv", "scores.json", "grid.png")}
    settings = images.settings
    per_image = []
    for label in images.labels:
        for index, ((p, j, seed), path) in enumerate(zip(images.items, images.paths(label))):
            row = {"model": label, "prompt_index": p, "image_index": j, "seed": seed, "prompt": images.prompts[p],
                   "image": os.path.relpath(path, output_dir)}
            row.update({name: float(values[index]) for name, values in scores[label].items()})
            per_image.append(row)
    write_csv(paths["scores.csv"], per_image)
    write_json(paths["scores.json"], {"base_model": images.manifest["base_model"], "models": images.models,
                                      "settings": images.manifest["settings"], "scorers": scorers,
                                      "summary": summary, "images": per_image})
    comparison_grid(images, grid_rows).save(paths["grid.png"])
    sources = [f"- `{label}`: " + (", ".join(f"{kind} `{where}`" for kind, where in source.items()) or
                                   f"base pipeline `{images.manifest['base_model']}`")
               for label, source in images.models.items()]
    intervals = [f"- `{label}` − base, {name}: {c['mean_difference']:+.4g} "
                 f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}] ({100 * c['confidence']:.0f}% paired bootstrap)"
                 for label, by_reward in summary["comparisons"].items() for name, c in by_reward.items()]
    lines = [
        "# Evaluation report", "",
        f"{len(images.prompts)} prompts × {settings.num_images_per_prompt} images per model, seed {settings.seed}, "
        f"{settings.num_inference_steps} steps of {images.manifest['scheduler']}, guidance {settings.guidance_scale:g}"
        + (f", {settings.resolution} px" if settings.resolution else "") + ". Every model starts from the same noise "
        "for the same (prompt, image) pair.", "",
        results_table(summary), "",
        "Cells: mean ± sample standard deviation; beat %: share of pairs where the model scores higher than the "
        "base with the same seed (ties count ½) ± binomial standard error.", "",
        "## Scorers", "", *[f"- `{name}`: {description}" for name, description in scorers.items()], "",
        "## Models", "", *sources, "",
        "## Mean differences", "", *(intervals or ["(only the base model was evaluated)"]), "",
        "Per-image scores: `scores.csv`, `scores.json`. Side by side (same seed): `grid.png`.", "",
    ]
    paths["report.md"].write_text("\n".join(lines), encoding="utf-8")
    return paths
