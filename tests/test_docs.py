"""Statements in docs/ that are numbers are recomputed: a doc that drifts from the code fails."""

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_alpha_bar_0_table_is_what_the_script_measures():
    """Friction 12: the docs called the "scheduler"/"one" difference tiny; the table they give now is recomputed."""
    script = load_script("plot_alpha_bar_0")
    assert script.table() in (DOCS / "credit_strategies.md").read_text(encoding="utf-8")
    assert "tiny" not in (DOCS / "credit_strategies.md").read_text(encoding="utf-8")


def test_alpha_bar_0_scheduler_erases_the_margin_at_tau_0():
    """Independent of the setup: at τ = 0, x̂0's coefficient on ε̂ is √(1-ā0)·(√ā0-1), so z_scheduler ≈ 0."""
    script = load_script("plot_alpha_bar_0")
    for size in (0.01, 0.5):
        assert script.relative_changes([0], size, pairs=256).item() > 0.999
