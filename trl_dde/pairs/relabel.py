"""Relabeling a preference dataset with a reward (Diffusion-DPO's ``--choice_model``).

Each pair is first oriented by its human label (``schema.orient``); the reward then scores both images.
A pair whose human winner scores lower is swapped, one that scores at least as high is kept, and a pair
whose two scores differ by less than ``margin`` can be dropped. Rows the dataset check finds unusable
(undecodable images) are skipped as in training. Human ties (Pick-a-Pic ``label_0 = 0.5``)
are decided by the reward and counted apart. The report gives the agreement of reward and humans over
the decided pairs. The result is a paired (``prompt``/``chosen``/``rejected``) dataset with both scores,
the margin and whether the reward agreed.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset, Features, Image, IterableDataset, Value

from ..data.images import load_image
from ..data.prepare import prepare_preference_dataset
from ..data.schema import TIE
from ..evaluation.rewards import load_reward

__all__ = ["RelabelReport", "relabel_dataset"]

RELABELED_FEATURES = Features({
    "prompt": Value("string"), "chosen": Image(), "rejected": Image(), "chosen_score": Value("float64"),
    "rejected_score": Value("float64"), "margin": Value("float64"), "human_tie": Value("bool"),
    "reward_agrees": Value("bool"),
})


@dataclass
class RelabelReport:
    """What relabeling found over all pairs read (before any is dropped) and how many it dropped and wrote."""

    pairs: int
    agree: int  # human-decided pairs whose winner the reward scores at least as high: kept as labelled
    disagree: int  # human-decided pairs the reward scores the other way: swapped
    ties_decided: int  # human ties, oriented by the reward
    dropped: int  # pairs whose scores differ by less than the margin
    written: int

    @property
    def agreement(self) -> float | None:
        """Fraction of the human-decided pairs the reward agrees with (None without any)."""
        decided = self.agree + self.disagree
        return self.agree / decided if decided else None

    def table(self) -> str:
        """The counts and the agreement, one per line, for the terminal."""
        from ..evaluation.reports import key_value_table

        agreement = "n/a" if self.agreement is None else f"{100 * self.agreement:.1f}%"
        return key_value_table({
            "pairs read": self.pairs, "reward agrees (kept)": self.agree, "reward disagrees (swapped)": self.disagree,
            "human ties decided by the reward": self.ties_decided, "dropped below the margin": self.dropped,
            "pairs written": self.written, "agreement with the human labels": agreement})


def relabel_dataset(dataset, reward, args, margin: float | None = None, batch_size: int = 16,
                    progress: bool = True) -> tuple[Dataset, RelabelReport]:
    """Relabel ``dataset`` (any layout ``prepare_preference_dataset`` accepts with ``args``' column options) by
    ``reward`` (a name, callable or import string). Pairs whose scores differ by less than ``margin`` are dropped
    (none by default); ties are read, not dropped, whatever ``args.drop_ties`` says."""
    from tqdm.auto import tqdm

    if isinstance(dataset, IterableDataset):
        raise ValueError("relabel_dataset reads a map-style dataset (it reports counts over all pairs); load the data "
                         "without streaming=True.")
    if margin is not None and margin < 0:
        raise ValueError(f"margin must be >= 0 (a score difference), got {margin}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (pairs scored at once), got {batch_size}.")
    reward = load_reward(reward)
    keep_ties = args.drop_ties
    args.drop_ties = False
    try:
        prepared = prepare_preference_dataset(dataset, args, "relabel")
    finally:
        args.drop_ties = keep_ties
    data, schema = prepared.dataset, prepared.schema
    rows = {name: [] for name in RELABELED_FEATURES}
    agree = disagree = ties = dropped = 0
    for start in tqdm(range(0, len(data), batch_size), desc="relabeling", unit="batch", disable=not progress):
        batch = data[start:start + batch_size]
        batch = [dict(zip(batch, values)) for values in zip(*batch.values())]
        oriented = [schema.orient(row) for row in batch]
        winners = [load_image(w) for w, _, _ in oriented]
        losers = [load_image(lo) for _, lo, _ in oriented]
        prompts = [row[schema.prompt] or "" for row in batch]
        scores = reward(winners + losers, prompts + prompts).tolist()
        for i, (prompt, (_, _, preference)) in enumerate(zip(prompts, oriented)):
            score_w, score_l = scores[i], scores[len(batch) + i]
            agrees, tie = score_w >= score_l, preference == TIE
            ties += tie
            agree += agrees and not tie
            disagree += not agrees and not tie
            if margin is not None and abs(score_w - score_l) < margin:
                dropped += 1
                continue
            chosen, rejected = (winners[i], losers[i]) if agrees else (losers[i], winners[i])
            values = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_score": max(score_w, score_l),
                      "rejected_score": min(score_w, score_l), "margin": abs(score_w - score_l), "human_tie": tie,
                      "reward_agrees": agrees}
            for name, value in values.items():
                rows[name].append(value)
    report = RelabelReport(pairs=len(data), agree=agree, disagree=disagree, ties_decided=ties, dropped=dropped,
                           written=len(rows["prompt"]))
    return Dataset.from_dict(rows, features=RELABELED_FEATURES), report
