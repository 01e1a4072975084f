"""Prompt sets: the shipped list offline, local files and dataset columns, and named public sets through a
fake Hub (only the network boundary is replaced: datasets.load_dataset and huggingface_hub.hf_hub_download)."""

import json

import datasets
import huggingface_hub
import pytest

from trl_dde.evaluation.prompts import available_prompt_sets, load_prompts


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


def test_builtin_list_is_shipped_and_needs_no_network(no_network):
    prompts = load_prompts("builtin")
    assert len(prompts) == 48 == len(set(prompts)) and all(prompt == prompt.strip() and prompt for prompt in prompts)
    assert set(available_prompt_sets()) == {"builtin", "parti", "drawbench", "hpsv2", "pickapic"}


def test_max_prompts_spreads_over_the_whole_set(no_network):
    everything = load_prompts("builtin")
    assert load_prompts("builtin", max_prompts=4) == [everything[0], everything[12], everything[24], everything[36]]
    assert load_prompts(["a", "b"], max_prompts=10) == ["a", "b"]
    with pytest.raises(ValueError, match="max_prompts must be at least 1"):
        load_prompts("builtin", max_prompts=0)


def test_local_text_file_data_file_and_saved_dataset(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\n\n  a dog  \n")
    assert load_prompts(str(tmp_path / "prompts.txt")) == ["a cat", "a dog"]
    (tmp_path / "rows.csv").write_text("id,caption\n1,a boat\n2,a tree\n")
    assert load_prompts(str(tmp_path / "rows.csv")) == ["a boat", "a tree"]  # 'caption' is recognised
    datasets.Dataset.from_dict({"description": ["x", "y"], "other": ["1", "2"]}).save_to_disk(str(tmp_path / "saved"))
    assert load_prompts(str(tmp_path / "saved"), column="description") == ["x", "y"]
    with pytest.raises(ValueError, match=r"no column named like a prompt.*\['description', 'other'\]"):
        load_prompts(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="no column 'Prompt'"):
        load_prompts(str(tmp_path / "saved"), column="Prompt")
    with pytest.raises(ValueError, match="Unknown prompt set 'nope'"):
        load_prompts("nope")


def test_named_public_sets_use_their_real_ids_splits_and_columns(monkeypatch, tmp_path):
    hub = {  # what the real datasets hold (ids, splits and column names checked in their public sources)
        ("nateraw/parti-prompts", "train"): {"Prompt": ["a corgi", "a castle"], "Category": ["Animals", "Arts"]},
        ("sayakpaul/drawbench", "train"): {"Prompts": ["A red colored car."], "Category": ["Colors"]},
        ("yuvalkirstain/pickapic_v2", "validation_unique"): {"caption": ["a wizard cat"], "label_0": [1.0]},
        ("someone/my-prompts", "test"): {"text": ["from the hub"]},
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, split: datasets.Dataset.from_dict(hub[(repo, split)]))
    styles = {}
    for style in ("anime", "concept-art", "paintings", "photo"):
        path = tmp_path / f"{style}.json"
        path.write_text(json.dumps([f"{style} prompt 1", f"{style} prompt 2"]))
        styles[("zhwang/HPDv2", f"benchmark/{style}.json", "dataset")] = str(path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, filename, repo_type="model", **kw: styles[(repo, filename, repo_type)])

    assert load_prompts("parti") == ["a corgi", "a castle"]
    assert load_prompts("drawbench") == ["A red colored car."]
    assert load_prompts("pickapic") == ["a wizard cat"]
    assert load_prompts("someone/my-prompts", split="test") == ["from the hub"]
    assert load_prompts("hpsv2:photo") == ["photo prompt 1", "photo prompt 2"]
    assert len(load_prompts("hpsv2")) == 8 and load_prompts("hpsv2")[0] == "anime prompt 1"
    with pytest.raises(ValueError, match="styles are"):
        load_prompts("hpsv2:cartoon")


def test_an_unreachable_hub_says_how_to_work_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(OSError, match="answered 404 on the Hub since April 2025.*pass the local copy"):
        load_prompts("pickapic")
