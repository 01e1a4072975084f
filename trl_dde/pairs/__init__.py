"""Preference data made here: pairs generated from a model and a reward, relabeling with a reward."""

from .card import dataset_statistics, write_dataset_card
from .generate import generate_pairs, process_rank
from .relabel import RelabelReport, relabel_dataset
from .selection import SELECTIONS, select_pairs
from .writer import PAIR_FEATURES, PairShards

__all__ = ["PAIR_FEATURES", "SELECTIONS", "PairShards", "RelabelReport", "relabel_dataset", "dataset_statistics", "generate_pairs", "process_rank",
           "select_pairs", "write_dataset_card"]
