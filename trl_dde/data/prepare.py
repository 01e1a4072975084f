"""Preparing a preference dataset *before* training: schema, ties, undecodable rows.

Rows are filtered in the dataset, never in the collator, so every batch a process draws has the
configured size and every process takes part in the same collectives. A map-style dataset is checked
once, up front: ties are dropped (``drop_ties``) and every image is decoded once (JPEGs at 1/8 scale);
rows that cannot be used are dropped, counted and named. The pass goes through ``datasets``' cache, so
under several processes the main process computes it and the others read the result
(``main_process_first`` in the trainer). A stream is checked as it is read (``PreferenceStream``).

Training on nothing is refused with the column and one undecodable value; skipping more than
``corrupt_warning_threshold`` of the rows is a loud warning that names the rows.
"""

from __future__ import annotations

import logging
import random

import torch
from datasets import Dataset, Image, IterableDataset

from .adapters import ranked_to_pairs, resolve_image_reference
from .images import augmentation_seed, image_error, load_image
from .schema import TIE, PreferenceSchema, detect_schema, layouts_from_args

__all__ = ["AUGMENTATION_SEED", "PAIR_EPOCH", "PAIR_INDEX", "PreparedData", "PreferencePairs", "PreferenceStream", "prepare_preference_dataset", "row_problem"]

logger = logging.getLogger(__name__)

AUGMENTATION_SEED = "augmentation_seed"
PAIR_INDEX, PAIR_EPOCH = "pair_index", "pair_epoch"  # which pair a row is, in which epoch (per-pair draws)
SKIPPED_TIES, SKIPPED_CORRUPT = "_skipped_ties", "_skipped_corrupt"  # per-row counters a stream attaches
STREAM_PROBE_ROWS = 64  # a stream whose first rows are all unusable is refused


def label_problem(row: dict, schema: PreferenceSchema) -> str | None:
    """Why ``row``'s label is invalid (Pick-a-Pic labels are 1, 0 or 0.5), or ``None``."""
    if schema.label is not None and row[schema.label] not in (0, 1, TIE):
        return f"column {schema.label!r} holds {row[schema.label]!r}; labels must be 1, 0 or 0.5"
    return None


def row_problem(row: dict, schema: PreferenceSchema) -> str | None:
    """Why ``row`` cannot be trained on (an invalid label or an undecodable image), or ``None``."""
    problem = label_problem(row, schema)
    if problem is not None:
        return problem
    for column in schema.image_columns:
        error = image_error(row[column])
        if error is not None:
            return f"column {column!r} holds {_preview(row[column])}: {error}"
    return None


def _preview(value) -> str:
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class PreparedData:
    """A prepared split and what preparing it removed."""

    def __init__(self, dataset, schema: PreferenceSchema, ties_dropped: int = 0, corrupt_dropped: int = 0):
        self.dataset, self.schema = dataset, schema
        self.ties_dropped, self.corrupt_dropped = ties_dropped, corrupt_dropped


def prepare_preference_dataset(dataset: Dataset | IterableDataset, args, split: str = "train") -> PreparedData:
    """Check the schema, keep only its columns with images undecoded, drop ties (``args.drop_ties``) and
    unusable rows. A ranked layout is expanded into pairs first (``args.ranked_pairs``) and string image cells
    are resolved in ``args.image_root`` (``adapters``). A stream is only checked against its first row here;
    ``PreferenceStream`` filters it."""
    streaming = isinstance(dataset, IterableDataset)
    schema = detect_schema(_columns(dataset), layouts_from_args(args))
    dataset = dataset.select_columns(list(schema.columns))
    if schema.kind == "ranked":
        dataset = dataset.map(ranked_to_pairs, batched=True, remove_columns=list(schema.columns),
                              fn_kwargs={"prompt": schema.prompt, "images": schema.images, "ranks": schema.ranks,
                                         "mode": args.ranked_pairs},
                              **({} if streaming else {"desc": f"Expanding the ranked {split} lists into pairs"}))
        schema = PreferenceSchema("paired", "prompt", "chosen", "rejected")
        dataset = dataset.select_columns(list(schema.columns))
    dataset = _resolve_references(dataset, schema, args.image_root, streaming)
    for column in schema.image_columns:
        if dataset.features is not None and isinstance(dataset.features[column], Image):
            dataset = dataset.cast_column(column, Image(decode=False))
    if streaming:
        return PreparedData(dataset, schema)
    total = len(dataset)
    if total == 0:
        raise ValueError(f"The {split} preference dataset is empty.")
    drop_ties = schema.kind == "pickapic" and args.drop_ties

    def flag(batch):  # one pass: which rows are ties, and why the others cannot be used (ties are not decoded)
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        ties = [drop_ties and row[schema.label] == TIE for row in rows]
        return {"_tie": ties, "_problem": ["" if tie else row_problem(row, schema) or "" for row, tie in zip(rows, ties)]}

    flags = dataset.map(flag, batched=True, remove_columns=dataset.column_names, num_proc=args.dataset_num_proc,
                        desc=f"Checking the {split} pairs")
    ties, problems = flags["_tie"], flags["_problem"]
    bad = [index for index, problem in enumerate(problems) if problem]
    keep = [index for index in range(total) if not ties[index] and not problems[index]]
    if sum(ties) == total:
        raise ValueError(
            f"All {total} pairs of the {split} dataset are ties ({schema.label} == 0.5): nothing to learn a preference "
            "from. Use a dataset with decided pairs, or set drop_ties=False to train on ties with soft labels."
        )
    if not keep:
        raise ValueError(
            f"No row of the {split} dataset can be trained on: all {len(bad)} rows that are not ties are unusable. "
            f"Row {bad[0]}: {problems[bad[0]]}. Image columns must hold encoded image bytes, {{'bytes', 'path'}} dicts, "
            "paths to image files or PIL images; check the column options (caption_column, image_0_column, "
            "chosen_column, ...) and the data."
        )
    if bad:
        fraction = len(bad) / total
        report = logger.warning if fraction > args.corrupt_warning_threshold else logger.info
        report("Skipping %d of %d %s rows (%.1f%%) that cannot be trained on: rows %s. First: row %d, %s.",
               len(bad), total, split, 100 * fraction, _row_list(bad), bad[0], problems[bad[0]])
    if len(keep) < total:
        dataset = dataset.select(keep)
    return PreparedData(dataset, schema, ties_dropped=sum(ties), corrupt_dropped=len(bad))


def _columns(dataset) -> list[str]:
    return dataset.column_names if dataset.column_names is not None else list(next(iter(dataset)))


def _resolve_references(dataset, schema: PreferenceSchema, image_root: str | None, streaming: bool):
    """String image cells (paths, URLs) as local paths (``resolve_image_reference``); other cells untouched.
    Columns known not to hold strings (bytes, ``datasets.Image``) are not rewritten."""
    features = dataset.features
    if features is not None and not any(getattr(features[c], "dtype", None) == "string" for c in schema.image_columns):
        return dataset

    def resolve(batch):
        return {column: [resolve_image_reference(value, image_root) for value in batch[column]]
                for column in schema.image_columns}

    return dataset.map(resolve, batched=True, **({} if streaming else {"desc": "Resolving image references"}))


def _row_list(rows: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({len(rows) - limit} more)" if len(rows) > limit else "")


class PreferencePairs(torch.utils.data.Dataset):
    """Map-style view of a prepared dataset that tags every row with its own augmentation seed.

    The seed is a hash of ``(seed, epoch, row index)``, so a pair's crop and flip depend neither on the
    order rows are drawn in nor on which dataloader worker collates them: a resumed run re-draws exactly
    the augmentations of an uninterrupted one, and each epoch draws new ones (the trainer sets the epoch
    as each starts). Drawing them from torch's global RNG in the collator would break exact resume,
    because transformers fetches the first batch after a resume before it restores the RNG state.
    Rows carry their index and the epoch too (``pair_index``, ``pair_epoch``), for the per-pair draws of
    ``draws.py``.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed
        # in shared memory: dataloader workers, persistent ones too, read the epoch the trainer sets
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        epoch = self.epoch
        return {**self.dataset[index], AUGMENTATION_SEED: augmentation_seed(self.seed, epoch, index),
                PAIR_INDEX: index, PAIR_EPOCH: epoch}


class PreferenceStream(torch.utils.data.IterableDataset):
    """The streaming counterpart of ``PreferencePairs``: this process's shard of a ``datasets.IterableDataset``,
    filtered as it is read.

    Ties (with ``drop_ties``) and unusable rows are skipped before batching, so batches stay full; the
    number skipped since the previous yielded row travels with each row (``_skipped_ties``,
    ``_skipped_corrupt``) and is counted by the trainer. Images are decoded once, here, and passed on as
    PIL images. Rows are tagged with ``augmentation_seed(seed, epoch, position in the stream)``;
    ``set_epoch`` reaches the stream too (its shuffling follows the epoch). A stream whose first
    ``STREAM_PROBE_ROWS`` rows are all unusable is refused with the reason.
    """

    def __init__(self, dataset: IterableDataset, schema: PreferenceSchema, seed: int, drop_ties: bool,
                 warning_threshold: float):
        self.dataset, self.schema, self.seed, self.drop_ties = dataset, schema, seed, drop_ties
        self.warning_threshold, self.epoch = warning_threshold, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        ties = corrupt = used = unusable = 0
        problem, warned = None, False
        for index, row in enumerate(self.dataset):
            if used == 0 and index >= STREAM_PROBE_ROWS:
                raise ValueError(
                    f"None of the first {index} rows of the stream can be trained on ({ties} ties dropped, {corrupt} "
                    f"unusable; last: {problem}). Check the column options (caption_column, chosen_column, ...) and the data."
                )
            if self.drop_ties and self.schema.label is not None and row[self.schema.label] == TIE:
                ties += 1
                continue
            problem, decoded = label_problem(row, self.schema), {}
            for column in self.schema.image_columns if problem is None else ():
                try:
                    decoded[column] = load_image(row[column])
                except ValueError as error:
                    problem = f"column {column!r} holds {_preview(row[column])}: {error}"
                    break
            if problem is not None:
                corrupt += 1
                unusable += 1
                if not warned and index >= 100 and unusable > self.warning_threshold * (index + 1):
                    logger.warning("Many streamed rows cannot be trained on (latest: row %d, %s).", index, problem)
                    warned = True
                continue
            used += 1
            yield {**row, **decoded, AUGMENTATION_SEED: augmentation_seed(self.seed, self.epoch, index),
                   SKIPPED_TIES: ties, SKIPPED_CORRUPT: corrupt}
            ties = corrupt = 0
