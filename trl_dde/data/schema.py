"""Which columns of a preference dataset hold the prompt, the two images and the label.

Two row schemas are trained on:

* **Pick-a-Pic v2**: ``caption``, ``jpg_0``, ``jpg_1``, ``label_0`` (1: ``jpg_0`` preferred, 0: ``jpg_1``
  preferred, 0.5: tie);
* **paired** (TRL style): ``prompt``, ``chosen``, ``rejected``.

A third layout, **ranked** (``prompt``, a list of ``images``, their ``ranks``), is accepted and turned into
paired rows first (``adapters.ranked_to_pairs``). Column names are configurable in ``DDEConfig``
(``caption_column``, ``chosen_column``, ..., or all at once with ``column_map``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TIE", "PreferenceSchema", "RankedLayout", "detect_schema", "layouts_from_args", "schemas_from_args"]

TIE = 0.5


@dataclass(frozen=True)
class PreferenceSchema:
    """Which columns hold the prompt, the two images and (Pick-a-Pic only) the label."""

    kind: str  # "pickapic" or "paired"
    prompt: str
    image_a: str  # jpg_0 / chosen
    image_b: str  # jpg_1 / rejected
    label: str | None = None  # label_0 for Pick-a-Pic

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.prompt, self.image_a, self.image_b, self.label) if c is not None)

    @property
    def image_columns(self) -> tuple[str, str]:
        return self.image_a, self.image_b

    def preference(self, row: dict) -> float:
        """1.0 for a decided pair, 0.5 for a tie."""
        if self.kind == "paired":
            return 1.0
        label = row[self.label]
        if label not in (0, 1, TIE):
            raise ValueError(f"Column {self.label!r} must hold 1, 0 or 0.5, got {label!r}.")
        return TIE if label == TIE else 1.0

    def orient(self, row: dict) -> tuple[object, object, float]:
        """``(winner image, loser image, preference)`` of a row; a tie keeps the column order."""
        preference = self.preference(row)
        if self.kind == "pickapic" and row[self.label] == 0:
            return row[self.image_b], row[self.image_a], preference
        return row[self.image_a], row[self.image_b], preference


@dataclass(frozen=True)
class RankedLayout:
    """One prompt, a list of images and a list of their ranks (1 = best) per row; expanded into pairs."""

    prompt: str
    images: str
    ranks: str
    kind: str = "ranked"

    @property
    def columns(self) -> tuple[str, ...]:
        return self.prompt, self.images, self.ranks


def schemas_from_args(args) -> tuple[PreferenceSchema, PreferenceSchema]:
    """The two accepted schemas with the column names configured in ``DDEConfig``."""
    return (
        PreferenceSchema("pickapic", args.caption_column, args.image_0_column, args.image_1_column, args.label_0_column),
        PreferenceSchema("paired", args.prompt_column, args.chosen_column, args.rejected_column),
    )


def layouts_from_args(args) -> tuple[PreferenceSchema, PreferenceSchema, RankedLayout]:
    """Every accepted layout, the two trainable schemas first: what ``detect_schema`` chooses from."""
    return (*schemas_from_args(args), RankedLayout(args.prompt_column, args.images_column, args.ranks_column))


def detect_schema(column_names, schemas: tuple[PreferenceSchema | RankedLayout, ...]) -> PreferenceSchema | RankedLayout:
    """The first layout whose columns are all present; otherwise a ``ValueError`` naming what is missing."""
    present = set(column_names)
    for schema in schemas:
        if set(schema.columns) <= present:
            return schema
    lines = [f"The preference dataset has columns {sorted(present)}, which match no accepted schema:"]
    for schema in schemas:
        missing = [c for c in schema.columns if c not in present]
        lines.append(f"  - {schema.kind}: needs {list(schema.columns)}; missing {missing}")
    lines.append("Name your columns with column_map, e.g. --column_map '{\"prompt\": \"caption\", \"chosen\": \"image_a\", "
                 "\"rejected\": \"image_b\"}' (roles: prompt, chosen, rejected, caption, jpg_0, jpg_1, label_0, "
                 "images, ranks), or set the *_column options of DDEConfig.")
    raise ValueError("\n".join(lines))
