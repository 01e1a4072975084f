"""Dataset adapters: any column names, images by reference, ranked lists → pairs.

Preference data comes in more layouts than Pick-a-Pic's and TRL's. Three adapters bring them to the two
row schemas of ``schema.py`` before anything else reads the data:

* a **column map** (``DDEConfig.column_map`` / ``--column_map '{"prompt": "caption", ...}'``) names the
  dataset's columns for each role; it sets the matching ``*_column`` options, so the rest of the code
  sees ordinary names;
* **image references**: a string cell that is a relative path or an ``http(s)://`` URL is resolved in a
  local mirror (``DDEConfig.image_root``; ``https://host/a/b.jpg`` → ``image_root/host/a/b.jpg``); bytes,
  ``{"bytes", "path"}`` dicts, PIL images and absolute paths are decoded as they are;
* a **ranked list** (HPDv3 / ImageReward style: one prompt, a list of images and their ranks, 1 = best)
  becomes ``prompt``/``chosen``/``rejected`` pairs (``DDEConfig.ranked_pairs``: ``adjacent`` ranks,
  ``all`` ordered pairs, or ``best_worst``); images of equal rank never form a pair.
"""

from __future__ import annotations

import json
import os
from itertools import combinations
from urllib.parse import urlparse

__all__ = ["COLUMN_ROLES", "RANKED_PAIRS", "apply_column_map", "parse_column_map", "ranked_to_pairs",
           "resolve_image_reference"]

# role in --column_map -> DDEConfig option holding that column's name
COLUMN_ROLES = {
    "prompt": "prompt_column", "chosen": "chosen_column", "rejected": "rejected_column",
    "caption": "caption_column", "jpg_0": "image_0_column", "jpg_1": "image_1_column", "label_0": "label_0_column",
    "images": "images_column", "ranks": "ranks_column",
}
RANKED_PAIRS = ("adjacent", "all", "best_worst")
EXAMPLE = '\'{"prompt": "caption", "chosen": "image_a", "rejected": "image_b"}\''


def parse_column_map(value) -> dict[str, str]:
    """``column_map`` as a dict ``role -> column``, from a dict or a JSON object; unknown roles are an error."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"DDEConfig.column_map={value!r} is not valid JSON ({error}). Write a JSON object with "
                             f"double quotes, e.g. --column_map {EXAMPLE}.") from None
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(c, str) and c for c in value.values()):
        raise ValueError(f"DDEConfig.column_map must map roles to column names, e.g. {EXAMPLE}; got {value!r}.")
    unknown = sorted(set(value) - set(COLUMN_ROLES))
    if unknown:
        raise ValueError(f"DDEConfig.column_map has unknown roles {unknown}; the roles are {list(COLUMN_ROLES)}.")
    return dict(value)


def apply_column_map(args) -> None:
    """Set the ``*_column`` options of ``args`` from its (parsed) ``column_map``."""
    for role, column in args.column_map.items():
        setattr(args, COLUMN_ROLES[role], column)


def resolve_image_reference(value, image_root: str | None):
    """A string image cell as a local path: URLs map into the mirror ``image_root/host/path``, relative paths are
    taken under ``image_root``. Anything else (bytes, dicts, PIL images, absolute paths) is returned as is."""
    if not isinstance(value, str):
        return value
    url = urlparse(value)
    if url.scheme in ("http", "https"):
        if image_root is None:
            raise ValueError(f"Image {value!r} is a URL and trl-dde does not download images: mirror them locally and "
                             "set image_root to the mirror (https://host/a.jpg is read from image_root/host/a.jpg).")
        return os.path.join(image_root, url.netloc, url.path.lstrip("/"))
    if image_root is not None and not os.path.isabs(value):
        return os.path.join(image_root, value)
    return value


def ranked_to_pairs(batch: dict, prompt: str, images: str, ranks: str, mode: str) -> dict[str, list]:
    """A batch of ranked rows (``prompt``, a list of ``images``, their ``ranks``; lower is better) as pairs.

    ``mode``: ``adjacent`` pairs each image with the next worse rank present, ``all`` every pair of distinct
    ranks, ``best_worst`` the best against the worst (one pair per row). Each pair is ``(better, worse)``.
    """
    if mode not in RANKED_PAIRS:
        raise ValueError(f"ranked_pairs must be one of {RANKED_PAIRS}, got {mode!r}.")
    out = {"prompt": [], "chosen": [], "rejected": [], "chosen_rank": [], "rejected_rank": []}
    for text, row_images, row_ranks in zip(batch[prompt], batch[images], batch[ranks]):
        if len(row_images) != len(row_ranks):
            raise ValueError(f"Ranked row {text!r}: {len(row_images)} images in {images!r} but {len(row_ranks)} ranks "
                             f"in {ranks!r}; give one rank per image.")
        order = sorted(range(len(row_images)), key=lambda i: row_ranks[i])
        if mode == "best_worst":
            pairs = [(order[0], order[-1])] if order else []  # a row without images gives no pair
        elif mode == "all":
            pairs = list(combinations(order, 2))
        else:
            levels = sorted(set(row_ranks))
            pairs = [(i, j) for a, b in zip(levels, levels[1:])
                     for i in order if row_ranks[i] == a for j in order if row_ranks[j] == b]
        for better, worse in pairs:
            if row_ranks[better] == row_ranks[worse]:
                continue  # a tie: no preference to learn
            out["prompt"].append(text)
            out["chosen"].append(row_images[better])
            out["rejected"].append(row_images[worse])
            out["chosen_rank"].append(row_ranks[better])
            out["rejected_rank"].append(row_ranks[worse])
    return out
