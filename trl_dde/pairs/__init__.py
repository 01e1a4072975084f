"""Preference data made here: pairs generated from a model and a reward, relabeling with a reward, online rounds.

Names are imported on first use, so ``trl-dde train --help`` (which reads ``OnlineArguments``) loads no
torch, datasets or diffusers.
"""

import importlib

_EXPORTS = {
    "dataset_statistics": "card", "write_dataset_card": "card",
    "generate_pairs": "generate", "process_rank": "generate",
    "OnlineArguments": "online", "run_online_rounds": "online",
    "RelabelReport": "relabel", "relabel_dataset": "relabel",
    "SELECTIONS": "selection", "check_selection": "selection", "select_pairs": "selection",
    "PAIR_FEATURES": "writer", "PairShards": "writer", "is_generated_dataset": "writer", "load_generated_pairs": "writer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
