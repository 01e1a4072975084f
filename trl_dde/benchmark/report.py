"""The benchmark's numbers and words: per-method statistics, the Table-2-like table, and a paragraph on the
paper's claims whose verdicts are computed from the intervals, never written in advance.

Every comparison is paired: all methods (and the base) are evaluated on the same held-out prompts with
the same sampling noise, so two methods' scores on one image index differ only by the model. A claim
"A > B" is *supported* when the 95 % paired-bootstrap interval of mean(A - B) lies above 0, *contradicted*
when it lies below 0, and *not resolved* when it contains 0.
"""

from __future__ import annotations

import numpy as np

from ..evaluation.reports import markdown_table
from ..evaluation.statistics import beat_ratio, mean_std, paired_bootstrap_ci

__all__ = ["HEADERS", "claims", "diversity", "markdown_report", "summarise", "table"]

HEADERS = ["method", "preference", "beat ratio vs base", "Δ vs base (95% CI)", "fidelity", "diversity",
           "distance from base"]
MIDDLE = (200, 700)  # the paper's "middle segments" (Fig. 3)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def diversity(images: list, captions: list[str]) -> float | None:
    """Mean absolute pixel difference (0-1) between images of the same caption (different noise, seeds): it
    falls towards 0 when a model collapses onto one image per prompt. ``None`` with one image per caption."""
    by_caption: dict[str, list[np.ndarray]] = {}
    for image, caption in zip(images, captions):
        by_caption.setdefault(caption, []).append(_pixels(image))
    distances = [np.abs(a - b).mean() for own in by_caption.values() for i, a in enumerate(own) for b in own[i + 1:]]
    return float(np.mean(distances)) if distances else None


def summarise(scores: dict[str, list[float]], base_scores: dict[str, list[float]], images: list, base_images: list,
              captions: list[str]) -> dict:
    """One method's row: scores pooled over seeds, compared image by image with the base's."""
    tuned, base = np.asarray(scores["preference"]), np.asarray(base_scores["preference"])
    return {"preference": mean_std(tuned).to_dict(),
            "beat_ratio": beat_ratio(tuned, base).to_dict(),
            "difference_vs_base": float((tuned - base).mean()),
            "difference_ci95": list(paired_bootstrap_ci(tuned, base)),
            "fidelity": mean_std(scores["fidelity"]).to_dict(),
            "diversity": diversity(images, captions),
            "distance_from_base": float(np.mean([np.abs(_pixels(a) - _pixels(b)).mean()
                                                 for a, b in zip(images, base_images)]))}


def table(report: dict) -> str:
    base = report["base"]
    rows = [["base", f"{base['preference']['mean']:.3f} ± {base['preference']['std']:.3f}", "-", "-",
             f"{base['fidelity']['mean']:.3f}", _optional(base["diversity"]), "0"]]
    for method, r in report["results"].items():
        low, high = r["difference_ci95"]
        rows.append([method, f"{r['preference']['mean']:.3f} ± {r['preference']['std']:.3f}",
                     f"{r['beat_ratio']['ratio']:.3f} ± {r['beat_ratio']['stderr']:.3f}",
                     f"{r['difference_vs_base']:+.3f} [{low:+.3f}, {high:+.3f}]", f"{r['fidelity']['mean']:.3f}",
                     _optional(r["diversity"]), f"{r['distance_from_base']:.3f}"])
    return markdown_table(HEADERS, rows)


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _verdict(interval: tuple[float, float]) -> str:
    low, high = interval
    return "supported" if low > 0 else "contradicted" if high < 0 else "not resolved"


def _compare(scores: dict[str, np.ndarray], better: str, worse: str) -> dict:
    interval = paired_bootstrap_ci(scores[better], scores[worse])
    return {"claim": f"{better} > {worse}", "difference": float((scores[better] - scores[worse]).mean()),
            "ci95": list(interval), "verdict": _verdict(interval)}


def claims(per_image: dict[str, list[float]]) -> list[dict]:
    """The paper's claims this run can test, each with its paired difference, interval and verdict.

    ``per_image`` maps ``"base"`` and each method to its per-image preference scores (same items in the same
    order). Claims about methods that did not run are left out.
    """
    scores = {name: np.asarray(values, dtype=np.float64) for name, values in per_image.items()}
    ordered = [("dde", "dde-single"), ("dde-single", "uniform"), ("dde-single", "discounted"), ("dde-single", "sft"),
               ("uniform", "base"), ("discounted", "base"), ("sft", "base"), ("base", "dde-step")]
    found = [_compare(scores, better, worse) for better, worse in ordered if better in scores and worse in scores]
    segments = {name: values for name, values in scores.items() if name.startswith("uniform@")}
    middle = [values for name, values in segments.items() if _inside(name, MIDDLE)]
    outer = [values for name, values in segments.items() if not _inside(name, MIDDLE)]
    if middle and outer:
        pooled = {"middle segments": np.mean(middle, axis=0), "outer segments": np.mean(outer, axis=0)}
        found.append(_compare(pooled, "middle segments", "outer segments"))
    if "uniform@200-700" in scores and "uniform" in scores:
        found.append(_compare(scores, "uniform@200-700", "uniform"))
    return found


def _inside(method: str, window: tuple[int, int]) -> bool:
    low, high = (int(x) for x in method.removeprefix("uniform@").split("-"))
    return window[0] <= low and high <= window[1] and high - low < window[1] - window[0]


def _paragraph(report: dict) -> str:
    results = report["results"]
    order = sorted(results, key=lambda method: results[method]["preference"]["mean"], reverse=True)
    moved = [m for m in order if _verdict(results[m]["difference_ci95"]) != "not resolved"]
    lines = [f"Ranked by mean preference: {', '.join(order)} (base {report['base']['preference']['mean']:.3f}). "
             f"{len(moved)} of {len(results)} methods differ from the base beyond their 95 % interval"
             + (f" ({', '.join(moved)})." if moved else "; the rest are within noise of it.")]
    base_diversity = report["base"]["diversity"]
    collapsed = [m for m in results if base_diversity and results[m]["diversity"] < 0.5 * base_diversity]
    if collapsed:
        lines.append(f"Diversity fell below half the base's for {', '.join(collapsed)}: read their gains as possible "
                     "collapse, not alignment.")
    if report["claims"]:
        lines.append("\n| paper's claim | mean paired difference | 95% CI | verdict here |\n|---|---|---|---|")
        lines += [f"| {c['claim']} | {c['difference']:+.4f} | [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {c['verdict']} |"
                  for c in report["claims"]]
    lines.append("\nWhat this cannot show: anything about human preference or learned reward models (the labels come "
                 "from a pixel rule), about SD1.5/SDXL-scale models, or about a method's behaviour with longer "
                 "training; a 'not resolved' verdict means this budget cannot tell the two apart, not that they are "
                 "equal. Order within overlapping intervals is noise.")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    s = report["settings"]
    return (f"# trl-dde demo: credit-assignment benchmark\n\n"
            f"Base: {s['pretrain_steps']} SFT steps (cached: {report['base_cached']}); {report['pairs']} pairs "
            f"({report['ties']} ties, dropped) from {s['samples_per_prompt']} base samples per training prompt; every "
            f"method: LoRA r=8, {s['steps']} steps x 8 pairs, seeds {list(range(s['seeds']))}; evaluation: "
            f"{report['held_out_prompts']} held-out prompts x {s['eval_images']} image(s) x {s['seeds']} seed(s), the "
            f"same sampling noise for base and every method. {report['seconds']:.0f} s with {report['workers']} "
            f"worker(s).\n\n"
            f"{table(report)}\n\n"
            "preference = fidelity + 0.15 x clean background (0-1.15); beat ratio: share of held-out images scoring "
            "above the base's image of the same prompt and noise (ties 1/2), with its binomial standard error; "
            "Δ: mean preference difference to the base with its paired bootstrap 95 % interval; fidelity: share of "
            "caption attributes the checker reads back; diversity: mean pixel distance between a prompt's images "
            "(collapse drives it to 0); distance from base: mean pixel distance to the base's image of the same "
            "noise (0-1).\n\n"
            f"## What the numbers show\n\n{_paragraph(report)}\n")
