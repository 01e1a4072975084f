"""Report primitives: Markdown tables, JSON and CSV files, labelled image grids.

Evaluation (``trl-dde eval``) and the credit benchmark (``trl-dde demo``) build their reports from
these, so every table and grid the project writes looks the same.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["image_grid", "key_value_table", "markdown_table", "write_csv", "write_json"]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table. Floats are written with 4 significant digits; strings as
    given (pre-format them for other precisions). ``align`` holds ``"l"``, ``"r"`` or ``"c"`` per column
    (default: first column left, the others right)."""
    width = len(headers)
    for number, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"Row {number} has {len(row)} cells but the table has {width} columns ({list(headers)}).")
    align = list(align or ["l"] + ["r"] * (width - 1))
    rules = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join(rules[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def key_value_table(values: dict[str, Any]) -> str:
    """Two aligned plain-text columns for a terminal: each key (``_`` shown as a space) and its value, floats
    with 4 significant digits."""
    names = {key: str(key).replace("_", " ") for key in values}
    width = max(len(name) for name in names.values())
    return "\n".join(f"{names[key]:<{width}}  {_cell(value)}" for key, value in values.items())


def write_json(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented JSON (UTF-8), creating the parent folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, default=float)
        handle.write("\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """One CSV row per dict; the columns are the union of the keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def image_grid(
    images: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    cell_size: int | None = None,
    padding: int = 2,
) -> Image.Image:
    """A grid of ``images[row][column]`` with optional labels left of each row and above each column.

    Every image is resized to ``cell_size`` (default: the first image's larger side, at least 64 px so
    that tiny images stay visible, nearest-neighbour for upscaling so pixels stay sharp).
    """
    if not images or not images[0]:
        raise ValueError("image_grid needs at least one row with one image.")
    columns = max(len(row) for row in images)
    size = cell_size or max(64, max(images[0][0].size))
    font = ImageFont.load_default()
    label_width = (max(int(font.getlength(label)) for label in row_labels) + 2 * padding) if row_labels else 0
    label_height = 14 if column_labels else 0
    width = label_width + columns * (size + padding) + padding
    height = label_height + len(images) * (size + padding) + padding
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(column_labels or []):
        draw.text((label_width + padding + c * (size + padding), 1), label, fill="black", font=font)
    for r, row in enumerate(images):
        top = label_height + padding + r * (size + padding)
        if row_labels:
            draw.text((padding, top + size // 2 - 5), row_labels[r], fill="black", font=font)
        for c, image in enumerate(row):
            resample = Image.Resampling.NEAREST if max(image.size) < size else Image.Resampling.BILINEAR
            grid.paste(image.convert("RGB").resize((size, size), resample), (label_width + padding + c * (size + padding), top))
    return grid
