"""Preference data: schemas, ties, corrupt images, paired augmentation."""

import io
import random

import numpy as np
import pytest
import torch
from conftest import lora_config, make_args
from datasets import Dataset
from PIL import Image as PILImage

from trl_dde import DDEDiffusionTrainer
from trl_dde.data import (
    PreferenceCollator,
    PreferencePairs,
    detect_schema,
    draw_augmentation,
    load_image,
    paired_transform,
    schemas_from_args,
)
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline, tiny_tokenizer


def test_missing_columns_are_named_with_the_accepted_schemas(tmp_path, pipeline):
    bad = Dataset.from_dict({"caption": ["a cat"], "jpg_0": [b"x"], "label": [1.0]})
    with pytest.raises(ValueError) as error:
        DDEDiffusionTrainer(pipeline, args=make_args(tmp_path), train_dataset=bad, peft_config=lora_config())
    message = str(error.value)
    assert "pickapic: needs ['caption', 'jpg_0', 'jpg_1', 'label_0']; missing ['jpg_1', 'label_0']" in message
    assert "paired: needs ['prompt', 'chosen', 'rejected']; missing ['prompt', 'chosen', 'rejected']" in message


def test_configured_column_names_are_used(tmp_path):
    data = tiny_preference_dataset(4, schema="paired").rename_columns({"prompt": "text", "chosen": "good", "rejected": "bad"})
    args = make_args(tmp_path, prompt_column="text", chosen_column="good", rejected_column="bad")
    schema = detect_schema(data.column_names, schemas_from_args(args))
    assert (schema.kind, schema.columns) == ("paired", ("text", "good", "bad"))


def test_all_ties_are_refused(tmp_path, pipeline):
    ties = tiny_preference_dataset(6).map(lambda row: {"label_0": 0.5})
    with pytest.raises(ValueError, match="All 6 pairs of the train dataset are ties.*drop_ties=False"):
        DDEDiffusionTrainer(pipeline, args=make_args(tmp_path), train_dataset=ties, peft_config=lora_config())


def test_corrupt_image_is_skipped_and_counted(tmp_path, pipeline):
    data = tiny_preference_dataset(8)
    rows = data.to_dict()
    rows["jpg_1"][3] = b"\xff\xd8 definitely not a jpeg"
    corrupt = Dataset.from_dict(rows, features=data.features)
    # 8 pairs, batch 4, 2 steps: one epoch sees every row once
    trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path, max_steps=2), train_dataset=corrupt, peft_config=lora_config())
    trainer.train()
    assert trainer.corrupt_skipped == 1
    assert trainer.state.log_history[-2]["data/corrupt_skipped"] == 1


def test_a_dataset_with_no_decodable_row_is_refused_before_loading_the_model(tmp_path, pipeline_folder, monkeypatch):
    """Issue 7, bug 1: garbage in every jpg_0 used to train silently with loss 0."""
    from diffusers import StableDiffusionPipeline

    def never(*args, **kwargs):
        raise AssertionError("the pipeline's weights were loaded before the data was checked")

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", never)
    rows = tiny_preference_dataset(6).to_dict()
    rows["jpg_0"] = [b"\x00garbage" + bytes([i]) for i in range(6)]
    data = Dataset.from_dict(rows, features=tiny_preference_dataset(1).features)
    with pytest.raises(ValueError, match=r"all 6 rows that are not ties are unusable\. Row 0: column 'jpg_0' holds b'\\x00garbage\\x00'"):
        DDEDiffusionTrainer(pipeline_folder, args=make_args(tmp_path), train_dataset=data)


def test_a_paired_dataset_with_text_in_its_image_columns_is_refused(tmp_path, pipeline):
    data = Dataset.from_dict({"prompt": ["a red disc"] * 3, "chosen": ["a photo"] * 3, "rejected": ["a sketch"] * 3})
    with pytest.raises(ValueError, match=r"column 'chosen' holds 'a photo': .*FileNotFoundError"):
        DDEDiffusionTrainer(pipeline, args=make_args(tmp_path), train_dataset=data, peft_config=lora_config())


def test_skipping_many_rows_warns_loudly_and_names_them(tmp_path, pipeline, caplog):
    rows = tiny_preference_dataset(10).to_dict()
    for i in (1, 4, 7):
        rows["jpg_1"][i] = b"broken"
    data = Dataset.from_dict(rows, features=tiny_preference_dataset(1).features)
    with caplog.at_level("INFO", logger="trl_dde.data.prepare"):
        trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path), train_dataset=data, peft_config=lora_config())
    assert trainer.corrupt_skipped == 3 and len(trainer.train_dataset) == 7
    warning = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning and "Skipping 3 of 10 train rows (30.0%)" in warning[0].getMessage() and "1, 4, 7" in warning[0].getMessage()
    caplog.clear()
    with caplog.at_level("INFO", logger="trl_dde.data.prepare"):  # under the threshold: said, not shouted
        DDEDiffusionTrainer(tiny_sd15_pipeline(), args=make_args(tmp_path, corrupt_warning_threshold=0.5), train_dataset=data,
                            peft_config=lora_config())
    assert not [r for r in caplog.records if r.levelname == "WARNING"] and "Skipping 3 of 10" in caplog.text


def test_invalid_labels_are_skipped_and_counted(tmp_path, pipeline):
    rows = tiny_preference_dataset(6).to_dict()
    rows["label_0"][2] = float("nan")
    rows["label_0"][3] = 2.0
    trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path), train_dataset=Dataset.from_dict(rows, features=tiny_preference_dataset(1).features),
                                  peft_config=lora_config())
    assert trainer.corrupt_skipped == 2 and len(trainer.train_dataset) == 4


def test_paired_schema_with_pil_images_trains(tmp_path, pipeline):
    trainer = DDEDiffusionTrainer(pipeline, args=make_args(tmp_path, max_steps=1), train_dataset=tiny_preference_dataset(8, schema="paired"), peft_config=lora_config())
    trainer.train()
    assert trainer.state.global_step == 1


def collate(dataset, schema_args, **kwargs):
    from trl_dde.families import StableDiffusionFamily

    args = make_args(__import__("pathlib").Path("/tmp"), **schema_args)
    schema = detect_schema(dataset.column_names, schemas_from_args(args))
    return PreferenceCollator(StableDiffusionFamily(tiny_sd15_pipeline()).tokenize, schema, resolution=16, **kwargs)


def test_collator_orients_pickapic_labels_and_keeps_ties_as_half():
    data = tiny_preference_dataset(4, tie_every=4)  # labels 1, 0, 1, 0.5 with the winner on alternating sides
    batch = collate(data, {})(list(data))
    assert batch["preference"].tolist() == [1.0, 1.0, 1.0, 0.5]
    for i, (winner, loser) in enumerate([("jpg_0", "jpg_1"), ("jpg_1", "jpg_0"), ("jpg_0", "jpg_1")]):
        expected, _ = paired_transform((load_image(data[i][winner]), load_image(data[i][loser])), 16)
        assert torch.equal(batch["pixel_values_w"][i], expected[0]) and torch.equal(batch["pixel_values_l"][i], expected[1])
    assert batch["input_ids"].shape == (4, 77)


def image_bytes(array):
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_paired_transform_crops_and_flips_both_images_identically():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    pair = (load_image(image_bytes(a)), load_image(image_bytes(a.copy())))
    outputs = {paired_transform(pair, 16, *draw_augmentation(random.Random(seed), True, True))[0][0].sum().item() for seed in range(20)}
    assert len(outputs) > 4  # the augmentation really varies with the seed
    for seed in range(20):
        both, time_ids = paired_transform(pair, 16, *draw_augmentation(random.Random(seed), True, True))
        assert both.shape == (2, 3, 16, 16) and torch.equal(both[0], both[1]) and torch.equal(time_ids[0], time_ids[1])
    centred, _ = paired_transform(pair, 16)
    flipped_only = [paired_transform(pair, 16, *draw_augmentation(random.Random(s), False, True))[0] for s in range(10)]
    assert any(torch.equal(f[0], centred[0].flip(-1)) for f in flipped_only)
    assert any(torch.equal(f[0], centred[0]) for f in flipped_only)


def test_augmentation_seeds_depend_on_epoch_and_row_not_on_draw_order():
    data = PreferencePairs(tiny_preference_dataset(4), seed=7)
    seeds = [data[i]["augmentation_seed"] for i in range(4)]
    assert len(set(seeds)) == 4 and [data[i]["augmentation_seed"] for i in (3, 2, 1, 0)] == seeds[::-1]
    data.set_epoch(1)
    assert all(data[i]["augmentation_seed"] != seeds[i] for i in range(4))


def test_load_image_refuses_garbage_with_value_error():
    with pytest.raises(ValueError, match="Undecodable image"):
        load_image(b"not an image")
    with pytest.raises(ValueError, match="Undecodable image"):
        load_image(12)
    assert load_image(np.zeros((4, 4, 3), dtype=np.uint8)).size == (4, 4)


def test_micro_conditioning_follows_the_paired_crop_and_flip():
    """time_ids = original (h, w), crop top-left in resized pixels (mirrored under a flip), target (h, w):
    the reported left edge rebuilds exactly the pixels the pair was given."""
    gradient = np.repeat(np.repeat((np.arange(40) * 6).astype(np.uint8)[None, :, None], 20, 0), 3, 2)  # 20 x 40
    image = load_image(image_bytes(gradient))
    resized = image.resize((20, 10), PILImage.Resampling.BILINEAR)
    seen = set()
    for seed in range(40):
        pixels, time_ids = paired_transform((image, image), 10, *draw_augmentation(random.Random(seed), True, True))
        original_h, original_w, top, left, target_h, target_w = time_ids[0].tolist()
        assert (original_h, original_w, top, target_h, target_w) == (20, 40, 0, 10, 10)
        flipped = bool(pixels[0, 0, 0, 0] > pixels[0, 0, 0, -1])  # the gradient runs the other way
        crop_left = int(20 - left - 10) if flipped else int(left)  # back to the unmirrored image
        expected = resized.crop((crop_left, 0, crop_left + 10, 10))
        if flipped:
            expected = expected.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
        expected = torch.from_numpy(np.asarray(expected, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        assert torch.equal(pixels[0], expected)
        seen.add((flipped, int(left)))
    assert {flipped for flipped, _ in seen} == {False, True} and len(seen) > 4
    _, plain_ids = paired_transform((image, image), 10)
    assert plain_ids[0].tolist() == [20, 40, 0, 5, 10, 10]


def streaming_run(tmp_path, name, stop_at=None, resume=None):
    from test_saving import StopAt

    data = tiny_preference_dataset(12, tie_every=4).to_dict()
    data["jpg_0"][5] = b"corrupt"
    stream = Dataset.from_dict(data, features=tiny_preference_dataset(1).features).to_iterable_dataset(num_shards=2)
    args = make_args(tmp_path, output_dir=str(tmp_path / name), max_steps=6, per_device_train_batch_size=3,
                     save_strategy="steps", save_steps=3, credit="dde", random_flip=True)
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=args,
                                  train_dataset=stream, peft_config=lora_config(), callbacks=[StopAt(stop_at)] if stop_at else None)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_streaming_dataset_trains_for_max_steps_counting_ties_and_corrupt_rows(tmp_path):
    trainer = streaming_run(tmp_path, "stream")
    assert trainer.state.global_step == 6
    # 6 steps x 3 used rows = 18 rows: one and a half passes over 12 rows holding 3 ties and 1 corrupt row
    last = trainer.state.log_history[-2]
    assert last["data/ties_dropped"] >= 3 and last["data/corrupt_skipped"] >= 1
    assert all(e["loss"] > 0 for e in trainer.state.log_history if "loss" in e)  # every step trained on full batches


def test_streaming_resume_continues_exactly(tmp_path):
    straight = streaming_run(tmp_path, "straight")
    streaming_run(tmp_path, "interrupted", stop_at=3)
    resumed = streaming_run(tmp_path, "interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-3"))
    assert torch.equal(resumed.credit.ratios, straight.credit.ratios)
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
