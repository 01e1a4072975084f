"""Property-based test of the data path: whatever rows arrive, each is trained on, skipped and counted, or the
dataset is refused with a clear message — never an uncaught exception mid-epoch."""

import io
import math
import os
import tempfile

import numpy as np
import pytest
import torch
from conftest import make_args
from datasets import Dataset
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from trl_dde.data import PreferenceCollator, PreferenceStream, prepare_preference_dataset
from trl_dde.families import StableDiffusionFamily
from trl_dde.tiny import tiny_sd15_pipeline

RESOLUTION = 16
TOKENIZE = StableDiffusionFamily(tiny_sd15_pipeline()).tokenize
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F"]


def _writable(image_format: str, mode: str) -> bool:
    try:
        Image.new("RGB", (2, 2)).convert(mode).save(io.BytesIO(), format=image_format)
        return True
    except (OSError, ValueError, KeyError):
        return False


# every PIL mode in every format this PIL can write it to
FORMAT_MODES = {f: [m for m in MODES if _writable(f, m)] for f in ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")}
SIZES = [(1, 1), (3, 7), (32, 20), (8192, 2), (2, 8192)]
FOLDER = tempfile.mkdtemp(prefix="trl-dde-fuzz-")


@st.composite
def encoded_images(draw) -> bytes:
    image_format = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode, size = draw(st.sampled_from(FORMAT_MODES[image_format])), draw(st.sampled_from(SIZES))
    array = np.random.default_rng(draw(st.integers(0, 1000))).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=image_format)
    return buffer.getvalue()


def damaged(valid: st.SearchStrategy) -> st.SearchStrategy:
    return valid.flatmap(lambda data: st.integers(0, max(0, len(data) - 1)).map(lambda cut: data[:cut]))


# valid images weighted up, so that most datasets keep some rows
binary_cells = st.one_of(encoded_images(), encoded_images(), encoded_images(), damaged(encoded_images()),
                         st.binary(max_size=64), st.just(b""), st.none())


@st.composite
def path_cells(draw):
    choice = draw(st.sampled_from(["file", "file", "missing", "text"]))
    if choice == "file":
        path = os.path.join(FOLDER, f"{draw(st.integers(0, 10**9))}.img")
        with open(path, "wb") as handle:
            handle.write(draw(st.one_of(encoded_images(), damaged(encoded_images()))))
        return path
    return os.path.join(FOLDER, "missing.png") if choice == "missing" else draw(st.text(max_size=40))


feature_cells = st.fixed_dictionaries({"bytes": st.one_of(encoded_images(), st.binary(max_size=16), st.none()),
                                       "path": st.one_of(st.none(), st.just(os.path.join(FOLDER, "missing.png")))})
CELLS = {"binary": binary_cells, "path": path_cells(), "image-feature": feature_cells,
         "int": st.integers(-(2**63), 2**63 - 1)}
captions = st.one_of(st.text(max_size=200), st.just(""), st.none(), st.just("a very long caption " * 1000))
labels = st.one_of(st.sampled_from([0.0, 1.0, 0.0, 1.0, 0.5, math.nan, 2.0, -1.0]), st.none())


@st.composite
def preference_datasets(draw):
    kind = draw(st.sampled_from(["binary", "binary", "binary", "image-feature", "image-feature", "path", "path", "int"]))
    schema = draw(st.sampled_from(["pickapic", "pickapic", "paired", "paired", "wrong"]))
    rows = draw(st.integers(1, 6))
    cells = lambda: [draw(CELLS[kind]) for _ in range(rows)]  # noqa: E731
    if schema == "pickapic":
        data = {"caption": [draw(captions) for _ in range(rows)], "jpg_0": cells(), "jpg_1": cells(),
                "label_0": [draw(labels) for _ in range(rows)]}
    elif schema == "paired":
        data = {"prompt": [draw(captions) for _ in range(rows)], "chosen": cells(), "rejected": cells()}
    else:
        data = {"text": [draw(captions) for _ in range(rows)], "image": cells()}
    return Dataset.from_dict(data)


ARGS = make_args(__import__("pathlib").Path(FOLDER), resolution=RESOLUTION)
REFUSALS = ("match no accepted schema", "No row of the", "are ties", "is empty", "None of the first")


def check_batch(rows, schema):
    batch = PreferenceCollator(TOKENIZE, schema, RESOLUTION, random_crop=True, random_flip=True)(rows)
    assert batch["pixel_values_w"].shape == (len(rows), 3, RESOLUTION, RESOLUTION)
    assert torch.isfinite(batch["pixel_values_w"]).all() and torch.isfinite(batch["pixel_values_l"]).all()
    assert batch["input_ids"].shape == (len(rows), 77)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(preference_datasets())
def test_every_row_is_trained_on_counted_or_refused(dataset):
    try:
        prepared = prepare_preference_dataset(dataset, ARGS)
    except ValueError as error:
        assert any(reason in str(error) for reason in REFUSALS), str(error)
        event(f"refused: {next(reason for reason in REFUSALS if reason in str(error))}")
        return
    kept = len(prepared.dataset)
    event(f"trained on {'all' if kept == len(dataset) else 'some'} rows, skipped {'some' if prepared.corrupt_dropped else 'none'}")
    assert kept + prepared.ties_dropped + prepared.corrupt_dropped == len(dataset)
    check_batch([prepared.dataset[i] for i in range(kept)], prepared.schema)
    # the same rows streamed: filtered as they are read, with the same counts
    stream = PreferenceStream(prepare_preference_dataset(dataset.to_iterable_dataset(), ARGS).dataset, prepared.schema,
                              seed=0, drop_ties=ARGS.drop_ties, warning_threshold=1.0)
    streamed = list(stream)
    assert len(streamed) == kept
    assert sum(row["_skipped_ties"] + row["_skipped_corrupt"] for row in streamed) <= len(dataset) - kept
    check_batch(streamed, prepared.schema)
