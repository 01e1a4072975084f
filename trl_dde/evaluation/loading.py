"""Where evaluation weights and files come from, and loading them without filling the terminal.

Every scorer, prompt set and generated comparison names its inputs the same way: a local file, a local
folder, or a Hugging Face Hub id (the real models' ids are the defaults). ``resolve_file`` turns such a
location into a local path, downloading through ``huggingface_hub`` only for hub ids, and explains what
to do when the Hub cannot be reached. ``quiet_libraries`` silences transformers' and diffusers' progress
bars and load reports while weights are read or written, so a run prints one progress bar per phase
and a table.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

__all__ = ["default_device", "quiet_libraries", "resolve_file"]


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_file(location: str | os.PathLike, filename: str, repo_type: str = "model", what: str = "file") -> str:
    """A local path for ``filename`` at ``location``: the file itself, ``location/filename`` for a folder,
    or a download of ``filename`` from the Hub repository ``location``.

    ``what`` names the file in error messages (e.g. ``"the HPS v2.1 checkpoint"``).
    """
    location = os.fspath(location)
    if os.path.isfile(location):
        return location
    if os.path.isdir(location):
        path = os.path.join(location, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what}: {location} is a folder without {filename}. Pass the file itself or a "
                                    f"folder that holds {filename}.")
        return path
    if location.startswith((".", "/", "~")) or location.count("/") != 1:
        raise FileNotFoundError(f"{what}: {location!r} is neither an existing file or folder nor a Hub id "
                                "('owner/name').")
    import huggingface_hub

    try:
        return huggingface_hub.hf_hub_download(location, filename, repo_type=repo_type)
    except Exception as error:  # offline mode, no network, missing repository or file: one message for all
        raise OSError(
            f"Could not get {what} ({filename} from the Hub {repo_type} repository {location}): "
            f"{type(error).__name__}: {error}. Download it once where the Hub is reachable "
            f"(`hf download {location} {filename}{' --repo-type ' + repo_type if repo_type != 'model' else ''}`) "
            "and pass the local file or folder instead."
        ) from error


def _silence(logging_module) -> tuple:
    """Silence a library's ``utils.logging``; return what restores it."""
    state = (logging_module, logging_module.get_verbosity(), logging_module.is_progress_bar_enabled())
    logging_module.set_verbosity_error()
    logging_module.disable_progress_bar()
    return state


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hide transformers', diffusers' and datasets' progress bars, warnings and load reports for the duration."""
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    saved = [_silence(transformers_logging), _silence(datasets_logging)]
    from diffusers.utils import logging as diffusers_logging  # imported second: importing diffusers warns via transformers

    saved.append(_silence(diffusers_logging))
    try:
        yield
    finally:
        for logging_module, verbosity, progress in saved:
            logging_module.set_verbosity(verbosity)
            if progress:
                logging_module.enable_progress_bar()
