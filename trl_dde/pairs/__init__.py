"""Preference data made here: pairs generated from a model and a reward, relabeling with a reward."""

from .card import dataset_statistics, write_dataset_card
from .generate import generate_pairs, process_rank
from .selection import SELECTIONS, select_pairs
from .writer import PAIR_FEATURES, PairShards

__all__ = ["PAIR_FEATURES", "SELECTIONS", "PairShards", "dataset_statistics", "generate_pairs", "process_rank",
           "select_pairs", "write_dataset_card"]
