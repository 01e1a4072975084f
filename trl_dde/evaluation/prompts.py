"""Prompt sets for evaluation, by name, file or dataset column.

Named sets (each read from its public source, except ``builtin``):

| name | source | prompts |
|---|---|---|
| ``builtin`` | shipped with trl-dde (written for it): everyday scenes, styles, text, counting | 48 |
| ``parti`` | PartiPrompts, Hub dataset ``nateraw/parti-prompts``, column ``Prompt`` | 1632 |
| ``drawbench`` | DrawBench, Hub dataset ``sayakpaul/drawbench``, column ``Prompts`` | 200 |
| ``hpsv2`` | HPSv2 benchmark, ``benchmark/{anime,concept-art,paintings,photo}.json`` of the Hub dataset ``zhwang/HPDv2``; ``hpsv2:anime`` etc. for one style | 4 × 800 |
| ``pickapic`` | Pick-a-Pic v2 ``validation_unique`` split, column ``caption`` (the DDE paper's protocol) | 500 |

``yuvalkirstain/pickapic_v2`` has answered 404 on the Hub since April 2025; with a local copy, pass the
file or folder and ``column="caption"``. Anything else is read as a text file (one prompt per line), a
data file (``.csv``, ``.json``, ``.jsonl``, ``.parquet``) or a folder ``datasets`` reads, or a Hub dataset
id, taking ``column`` (default: a column named ``prompt``, ``Prompt``, ``Prompts``, ``caption`` or ``text``).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Callable, Sequence

from .loading import resolve_file

__all__ = ["PROMPT_SETS", "available_prompt_sets", "load_prompts"]

HPS_STYLES = ("anime", "concept-art", "paintings", "photo")
COLUMN_GUESSES = ("prompt", "Prompt", "Prompts", "caption", "text")
DATA_FILE_TYPES = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _dataset_column(dataset, column: str | None, source: str) -> list[str]:
    columns = list(dataset.column_names)
    if column is None:
        guesses = [name for name in COLUMN_GUESSES if name in columns]
        if not guesses:
            raise ValueError(f"{source} has no column named like a prompt ({', '.join(COLUMN_GUESSES)}); its columns are "
                             f"{columns}. Pass the prompt column (--prompt_column / column=...).")
        column = guesses[0]
    if column not in columns:
        raise ValueError(f"{source} has no column {column!r}; its columns are {columns}.")
    return [str(value) for value in dataset[column]]


def _hub_dataset(repo_id: str, split: str, column: str | None, note: str = "") -> list[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(repo_id, split=split)
    except Exception as error:
        raise OSError(f"Could not load the prompts of the Hub dataset {repo_id} (split {split!r}): {type(error).__name__}: "
                      f"{error}. {note}Download it once where the Hub is reachable and pass the local copy.") from error
    return _dataset_column(dataset, column, f"{repo_id} (split {split!r})")


def _builtin() -> list[str]:
    text = resources.files(__package__).joinpath("prompt_lists", "builtin.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _hpsv2(style: str | None = None) -> list[str]:
    if style is not None and style not in HPS_STYLES:
        raise ValueError(f"The HPSv2 benchmark styles are {list(HPS_STYLES)}; got {style!r} (use 'hpsv2' for all four).")
    prompts = []
    for name in [style] if style else HPS_STYLES:
        path = resolve_file("zhwang/HPDv2", f"benchmark/{name}.json", repo_type="dataset",
                            what=f"the HPSv2 benchmark prompts ({name})")
        with open(path, encoding="utf-8") as handle:
            prompts += [str(prompt) for prompt in json.load(handle)]
    return prompts


PROMPT_SETS: dict[str, tuple[str, Callable[..., list[str]]]] = {
    "builtin": ("48 prompts shipped with trl-dde (no download)", _builtin),
    "parti": ("PartiPrompts (nateraw/parti-prompts, column Prompt)",
              lambda: _hub_dataset("nateraw/parti-prompts", "train", "Prompt")),
    "drawbench": ("DrawBench (sayakpaul/drawbench, column Prompts)",
                  lambda: _hub_dataset("sayakpaul/drawbench", "train", "Prompts")),
    "hpsv2": ("HPSv2 benchmark prompts (zhwang/HPDv2 benchmark/*.json); hpsv2:<style> for one style", _hpsv2),
    "pickapic": ("Pick-a-Pic v2 validation_unique captions (yuvalkirstain/pickapic_v2)",
                 lambda: _hub_dataset("yuvalkirstain/pickapic_v2", "validation_unique", "caption",
                                      note="This dataset has answered 404 on the Hub since April 2025. ")),
}


def available_prompt_sets() -> dict[str, str]:
    """``{name: description}`` of the named prompt sets."""
    return {name: description for name, (description, _) in PROMPT_SETS.items()}


def _local(path: str, column: str | None, split: str | None) -> list[str]:
    import datasets

    extension = os.path.splitext(path)[1].lower()
    if os.path.isfile(path) and extension not in DATA_FILE_TYPES:  # a text file: one prompt per line
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    if os.path.isfile(path):
        dataset = datasets.load_dataset(DATA_FILE_TYPES[extension], data_files=path, split="train")
    elif any(os.path.isfile(os.path.join(path, name)) for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        dataset = datasets.load_from_disk(path)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split or "train"]
    else:
        dataset = datasets.load_dataset(path, split=split or "train")
    return _dataset_column(dataset, column, path)


def _evenly_spaced(prompts: list[str], count: int) -> list[str]:
    """``count`` prompts spread evenly over the list (so a prefix does not come from one category only)."""
    if count >= len(prompts):
        return prompts
    step = len(prompts) / count
    return [prompts[int(i * step)] for i in range(count)]


def load_prompts(spec: str | Sequence[str], column: str | None = None, split: str | None = None,
                 max_prompts: int | None = None) -> list[str]:
    """Prompts from a named set, a local file/folder, a Hub dataset id, or a list given directly.

    Args:
        spec: a name from ``available_prompt_sets()`` (``hpsv2:<style>`` for one HPSv2 style), a path, a Hub
            dataset id, or a list of prompts.
        column / split: where the prompts are in a dataset (default column: a prompt-like name; split ``train``).
        max_prompts: keep this many, evenly spaced over the set (the whole set by default).
    """
    if max_prompts is not None and max_prompts < 1:
        raise ValueError(f"max_prompts must be at least 1, got {max_prompts}.")
    if not isinstance(spec, str):
        prompts = [str(prompt) for prompt in spec]
    else:
        name, _, option = spec.partition(":")
        if name in PROMPT_SETS and not os.path.exists(spec):
            if option and name != "hpsv2":
                raise ValueError(f"Only the hpsv2 prompt set takes an option (hpsv2:<style>); got {spec!r}.")
            loader = PROMPT_SETS[name][1]
            prompts = loader(option) if option else loader()
        elif os.path.exists(spec):
            prompts = _local(spec, column, split)
        elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
            prompts = _hub_dataset(spec, split or "train", column)
        else:
            raise ValueError(f"Unknown prompt set {spec!r}: not one of {sorted(PROMPT_SETS)}, not an existing file or "
                             "folder, not a Hub dataset id.")
    prompts = [prompt.strip() for prompt in prompts if prompt.strip()]
    if not prompts:
        raise ValueError(f"The prompt set {spec if isinstance(spec, str) else 'given'} is empty.")
    return _evenly_spaced(prompts, max_prompts) if max_prompts else prompts
