"""Paired statistics on hand-made scores where the answer is known."""

import math

import numpy as np
import pytest
import torch

from trl_dde.evaluation.statistics import beat_ratio, bootstrap_ci, mean_std, paired_bootstrap_ci


def test_beat_ratio_counts_ties_as_half_and_gives_the_binomial_stderr():
    tuned = [3.0, 2.0, 5.0, 1.0, 4.0, 0.0, 7.0, 7.0]
    base = [1.0, 2.0, 4.0, 2.0, 4.0, 1.0, 6.0, 8.0]
    # wins: 3>1, 5>4, 7>6 -> 3; ties: 2=2, 4=4 -> 2; losses: 1<2, 0<1, 7<8 -> 3
    result = beat_ratio(tuned, base)
    assert (result.wins, result.ties, result.losses, result.n) == (3, 2, 3, 8)
    assert result.ratio == pytest.approx(4 / 8)
    assert result.stderr == pytest.approx(math.sqrt(0.5 * 0.5 / 8))


def test_beat_ratio_extremes_and_tensor_input():
    assert beat_ratio(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0])).ratio == 1.0
    assert beat_ratio([1.0, 1.0], [1.0, 1.0]).ratio == 0.5
    assert beat_ratio([0.0], [1.0]).stderr == 0.0


def test_mismatched_or_bad_scores_are_refused():
    with pytest.raises(ValueError, match="one tuned and one base score"):
        beat_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-finite value at index 1"):
        mean_std([1.0, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        mean_std([])


def test_mean_std_uses_the_sample_standard_deviation():
    result = mean_std([1.0, 2.0, 3.0, 4.0])
    assert result.mean == 2.5 and result.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert f"{result:.2f}" == "2.50 ± 1.29"
    assert mean_std([5.0]).std == 0.0


def test_paired_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, 400)
    tuned = base + 0.3 + rng.normal(0.0, 0.5, 400)  # true mean difference 0.3
    low, high = paired_bootstrap_ci(tuned, base, seed=1)
    assert low < 0.3 < high
    assert high - low < 0.25  # pairing removes the large shared variance
    assert low > 0.0  # the improvement is detected


def test_bootstrap_interval_is_deterministic_and_narrows_with_confidence():
    values = np.arange(20.0)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    wide, narrow = bootstrap_ci(values, confidence=0.99), bootstrap_ci(values, confidence=0.5)
    assert wide[0] < narrow[0] < values.mean() < narrow[1] < wide[1]


def test_report_primitives(tmp_path):
    import csv
    import json

    from PIL import Image

    from trl_dde.evaluation.reports import image_grid, markdown_table, write_csv, write_json

    table = markdown_table(["model", "score"], [["base", 0.123456], ["a|b", 2]])
    assert table.splitlines() == ["| model | score |", "|:---|---:|", "| base | 0.1235 |", "| a\\|b | 2 |"]
    with pytest.raises(ValueError, match="Row 0 has 1 cells"):
        markdown_table(["a", "b"], [[1]])
    write_json(tmp_path / "x" / "r.json", {"ratio": np.float64(0.5)})
    assert json.loads((tmp_path / "x" / "r.json").read_text()) == {"ratio": 0.5}
    write_csv(tmp_path / "s.csv", [{"a": 1}, {"a": 2, "b": 3}])
    assert list(csv.DictReader(open(tmp_path / "s.csv"))) == [{"a": "1", "b": ""}, {"a": "2", "b": "3"}]
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    grid = image_grid([[red, blue], [blue, red]], row_labels=["base", "tuned"], column_labels=["s0", "s1"], cell_size=16)
    assert grid.getpixel((grid.width - 10, grid.height - 10)) == (255, 0, 0)  # bottom-right cell is red
