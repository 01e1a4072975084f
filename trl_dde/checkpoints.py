"""Knowing that a checkpoint was written completely.

transformers writes a checkpoint file by file into ``checkpoint-N/``; a run killed in the middle leaves a
folder that looks like a checkpoint but is not one. trl-dde writes a marker, ``trl_dde_complete.json``,
*after* every file of the checkpoint is on disk (on every process), listing each file and its size, and
writes it atomically (a temporary file renamed into place). A checkpoint is complete when its marker
exists and every file it lists has the recorded size; resuming takes the last complete one, and a folder
without a complete marker is never resumed from and is removed before older checkpoints are rotated out.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["COMPLETE_MARKER", "atomic_write_text", "without_secrets", "checkpoint_problem", "last_complete_checkpoint", "mark_complete",
           "remove_incomplete_checkpoints"]

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "trl_dde_complete.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the whole new one, never a part."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _files(folder: str) -> dict[str, int]:
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if name != COMPLETE_MARKER:
                sizes[os.path.relpath(path, folder)] = os.path.getsize(path)
    return sizes


def mark_complete(folder: str) -> None:
    """Record that ``folder`` holds a whole checkpoint (call once every process has written its files)."""
    atomic_write_text(os.path.join(folder, COMPLETE_MARKER), json.dumps({"files": _files(folder)}, indent=1, sort_keys=True))


def checkpoint_problem(folder: str) -> str | None:
    """Why ``folder`` is not a complete trl-dde checkpoint, or ``None`` if it is."""
    marker = os.path.join(folder, COMPLETE_MARKER)
    if not os.path.isfile(marker):
        return f"it has no {COMPLETE_MARKER}: its writing was interrupted (or it was not written by trl-dde)"
    try:
        with open(marker, encoding="utf-8") as handle:
            listed = json.load(handle)["files"]
    except (OSError, ValueError, KeyError) as error:
        return f"its {COMPLETE_MARKER} is unreadable ({error})"
    present = _files(folder)
    for name, size in listed.items():
        if name not in present:
            return f"{name} is missing"
        if present[name] != size:
            return f"{name} has {present[name]} bytes instead of {size} (truncated or changed)"
    return None


def _checkpoints(output_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    found = [(int(match.group(1)), os.path.join(output_dir, name)) for name in os.listdir(output_dir)
             if (match := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return sorted(found)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The complete checkpoint with the highest step in ``output_dir``; incomplete ones are reported and skipped."""
    for _, folder in reversed(_checkpoints(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Not resuming from %s: %s.", folder, problem)
    return None


def remove_incomplete_checkpoints(output_dir: str, keep: str) -> list[str]:
    """Delete checkpoint folders of ``output_dir`` that are not complete (except ``keep``); return their paths."""
    removed = []
    for _, folder in _checkpoints(output_dir):
        if os.path.abspath(folder) != os.path.abspath(keep) and checkpoint_problem(folder) is not None:
            logger.warning("Removing %s: %s.", folder, checkpoint_problem(folder))
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def without_secrets(args):
    """A copy of training arguments with every ``*_token`` field emptied: what ``training_args.bin`` stores."""
    redacted = copy.copy(args)
    for field in dataclasses.fields(args):
        if field.name.endswith("token") and getattr(args, field.name):
            setattr(redacted, field.name, None)
    return redacted
