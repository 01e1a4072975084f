"""Preference data made by trl-dde: generated pairs (selection, margin, sharded resumable writing, card),
relabeling, dataset adapters (column map, ranked lists, image references) and `trl-dde data inspect`."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image as PILImage

from conftest import lora_config, make_args
from pairs_reward import brightness
from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.cli import load_preference_split
from trl_dde.data.adapters import ranked_to_pairs, resolve_image_reference
from trl_dde.data.images import load_image
from trl_dde.pairs import relabel_dataset, select_pairs
from trl_dde.tiny import tiny_preference_dataset

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a red square", "a blue circle"]


def run_cli(*args, env=None, check=True, cwd=TESTS):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}",
                   **(env or {})}
    result = subprocess.run([sys.executable, "-m", "trl_dde.cli", *args], cwd=cwd, env=environment, capture_output=True,
                            text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def pairs_args(pipeline_folder, prompts_file, output_dir, *extra):
    return ["pairs", "--model", pipeline_folder, "--prompts", str(prompts_file), "--reward", "pairs_reward:brightness",
            "--images_per_prompt", "3", "--num_inference_steps", "2", "--resolution", "32", "--batch_size", "6",
            "--prompts_per_shard", "2", "--device", "cpu", "--output_dir", str(output_dir), *extra]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def pixels(cell) -> np.ndarray:
    return np.asarray(cell.convert("RGB"), dtype=np.float64)


# ---------------------------------------------------------------- selection


def test_best_worst_takes_the_extremes_if_they_are_margin_apart():
    assert select_pairs([0.2, 0.9, 0.1, 0.5], "best_worst") == [(1, 2, False)]
    assert select_pairs([0.2, 0.9, 0.1, 0.5], "best_worst", margin=0.8) == [(1, 2, False)]
    assert select_pairs([0.2, 0.9, 0.1, 0.5], "best_worst", margin=0.81) == []
    assert select_pairs([0.3, 0.3], "best_worst") == []  # equal scores: no preference


def test_margin_selection_is_every_ordered_pair_at_least_margin_apart():
    scores = [0.0, 1.0, 0.4, 0.45]
    expected = {(i, j) for i in range(4) for j in range(4) if scores[i] - scores[j] >= 0.4 and scores[i] > scores[j]}
    assert {(c, r) for c, r, _ in select_pairs(scores, "margin", margin=0.4)} == expected == {(1, 0), (1, 2), (1, 3), (2, 0), (3, 0)}


def test_random_pairs_are_disjoint_ordered_and_mark_ties():
    scores = [0.5, 0.5, 0.1, 0.9, 0.3, 0.35]
    pairs = select_pairs(scores, "random", margin=0.1, seed=[0, 7])
    assert pairs == select_pairs(scores, "random", margin=0.1, seed=[0, 7])  # seeded
    assert sorted(i for c, r, _ in pairs for i in (c, r)) == list(range(6))
    for chosen, rejected, tie in pairs:
        assert scores[chosen] >= scores[rejected]
        assert tie == (scores[chosen] - scores[rejected] < 0.1)


@pytest.mark.parametrize("call, message", [
    (lambda: select_pairs([1.0], "best_worst"), "at least 2 images"),
    (lambda: select_pairs([1.0, 2.0], "best"), "selection must be one of"),
    (lambda: select_pairs([1.0, 2.0], "margin", margin=-1), "margin must be >= 0"),
])
def test_bad_selection_options_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- trl-dde pairs


def test_generated_pairs_respect_the_margin_and_train_directly(tmp_path, pipeline_folder, prompts_file):
    output = tmp_path / "pairs"
    result = run_cli(*pairs_args(pipeline_folder, prompts_file, output, "--selection", "margin", "--margin", "0.1"))
    assert "mean margin" in result.stdout and "pairs" in result.stdout
    dataset = load_preference_split(str(output), None, "train")
    assert len(dataset) > 0
    from datasets import load_dataset

    assert load_dataset(str(output), split="train")["chosen_seed"] == dataset["chosen_seed"]  # plain datasets reads it too
    for row in dataset:
        # the stored (lossless PNG) images score as recorded, by the reward recomputed here
        assert brightness([row["chosen"]], [""])[0] == pytest.approx(row["chosen_score"], rel=1e-6)  # rewards are float32
        assert brightness([row["rejected"]], [""])[0] == pytest.approx(row["rejected_score"], rel=1e-6)
        assert row["chosen_score"] - row["rejected_score"] >= 0.1
        assert row["margin"] == pytest.approx(row["chosen_score"] - row["rejected_score"])
        assert row["prompt"] == PROMPTS[row["prompt_index"]]
        assert (row["num_inference_steps"], row["height"], row["width"]) == (2, 32, 32)
    card = json.loads((output / "pairs.json").read_text())
    assert card["rewards"][0]["name"] == "brightness" and card["rewards"][0]["weight"] == 1.0
    assert card["settings"]["num_images_per_prompt"] == 3 and card["settings"]["seed"] == 0
    assert card["statistics"]["pairs"] == len(dataset) and card["statistics"]["images"] == 15
    readme = (output / "README.md").read_text()
    assert "| `brightness` | 1 |" in readme and "| batch size | 6 |" in readme  # data.md: the card records it
    assert f"| pairs | {len(dataset)} |" in readme
    trainer = DDEDiffusionTrainer(pipeline_folder, args=make_args(tmp_path, max_steps=2, per_device_train_batch_size=2),
                                  train_dataset=dataset, peft_config=lora_config())
    trainer.train()
    assert trainer.state.global_step == 2


def test_weighted_rewards_choose_by_their_sum(tmp_path, pipeline):
    from trl_dde.evaluation.generation import GenerationSettings
    from trl_dde.pairs import generate_pairs
    from pairs_reward import redness

    settings = GenerationSettings(num_images_per_prompt=3, num_inference_steps=2, resolution=32, batch_size=6)
    dataset = generate_pairs(pipeline, PROMPTS[:2], [brightness, redness], tmp_path / "w", reward_weights=[1.0, -2.0],
                             settings=settings, device="cpu", progress=False)
    for row in dataset:
        combined = [brightness([im], [""])[0] - 2 * redness([im], [""])[0] for im in (row["chosen"], row["rejected"])]
        assert combined == pytest.approx([row["chosen_score"], row["rejected_score"]])


@pytest.mark.parametrize("extra, message", [
    (["--reward", "pairs_reward:nothing"], "has no attribute 'nothing'"),
    (["--reward", "pairs_reward:brightness", "--images_per_prompt", "1"], "at least 2"),
    (["--reward", "pairs_reward:brightness", "--reward_weights", "1", "2"], "one weight per reward"),
    (["--reward", "pairs_reward:brightness", "--margin", "-1"], "margin must be >= 0"),
    (["--reward", "pairs_reward:brightness", "--prompts_per_shard", "0"], "--prompts_per_shard must be at least 1"),
    (["--reward", "no_such_reward_module:f"], r"No module named 'no_such_reward_module' \(from the reward"),
    (["--reward", "pairs_reward:brightness"], "model_index.json"),  # the missing model folder itself
])
def test_bad_pairs_options_fail_before_loading(tmp_path, prompts_file, monkeypatch, extra, message):
    from trl_dde.cli import main

    monkeypatch.chdir(TESTS)  # where pairs_reward.py lives, as for a user's own reward module
    with pytest.raises(SystemExit, match=message):  # the model folder does not exist: nothing was loaded
        main(["pairs", "--model", str(tmp_path / "no-model"), "--prompts", str(prompts_file), *extra,
              "--output_dir", str(tmp_path / "o")])


def test_a_resolution_the_family_cannot_encode_fails_before_loading(tmp_path, prompts_file, monkeypatch):
    import trl_dde.families
    from trl_dde.cli import main
    from trl_dde.tiny import tiny_sd3_pipeline

    tiny_sd3_pipeline().save_pretrained(tmp_path / "sd3")
    vae_config = tmp_path / "sd3" / "vae" / "config.json"  # the real SD3 VAE's 4 blocks (factor 8; 16 with patches):
    config = json.loads(vae_config.read_text())            # only the config is read, no weight is loaded
    vae_config.write_text(json.dumps({**config, "block_out_channels": [8, 8, 8, 8]}))
    monkeypatch.setattr(trl_dde.families, "load_pipeline", None)  # loading the weights would fail with a TypeError
    monkeypatch.chdir(TESTS)
    with pytest.raises(SystemExit, match=r"^trl-dde pairs: resolution=24 is not a multiple of 16 .* Use 16 or 32"):
        main(pairs_args(str(tmp_path / "sd3"), prompts_file, tmp_path / "o", "--resolution", "24"))


def generate_in_process(pipeline_folder, output_dir, reward=brightness, seed=0):
    """The same run as `pairs_args` describes, in this process, on one thread (as the subprocesses run)."""
    import torch

    from trl_dde.evaluation.generation import GenerationSettings
    from trl_dde.pairs import generate_pairs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = GenerationSettings(num_images_per_prompt=3, num_inference_steps=2, resolution=32, batch_size=6, seed=seed)
        return generate_pairs(pipeline_folder, PROMPTS, [reward], output_dir, settings=settings, prompts_per_shard=2,
                              device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)


def rows_of(folder):
    dataset = load_preference_split(str(folder), None, "train")
    return [{k: (pixels(v) if k in ("chosen", "rejected") else v) for k, v in row.items()} for row in dataset]


def assert_same_rows(rows, expected):
    assert len(rows) == len(expected) == len(PROMPTS)  # best_worst: one pair per prompt, none lost or doubled
    for row, reference in zip(rows, expected):
        assert row.keys() == reference.keys()
        for key, value in row.items():
            assert np.array_equal(value, reference[key]), key


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_rows(tmp_path, pipeline_folder, prompts_file):
    """SIGKILL `trl-dde pairs` after its first shard, rerun it: the rows equal an uninterrupted run's, none lost or doubled."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    generate_in_process(pipeline_folder, reference)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PAIRS_REWARD_DELAY": "1.5",
                   "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
    process = subprocess.Popen([sys.executable, "-m", "trl_dde.cli", *pairs_args(pipeline_folder, prompts_file, killed)],
                               cwd=TESTS, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((killed / "data").glob("*.parquet")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = list((killed / "data").glob("*.parquet"))
    assert 1 <= len(written) < 3 and not (killed / "pairs.json").exists()  # killed mid-run, card not written
    run_cli(*pairs_args(pipeline_folder, prompts_file, killed))
    assert_same_rows(rows_of(killed), rows_of(reference))
    assert len(list((killed / "data").glob("*.parquet"))) == 3


class Crash(RuntimeError):
    pass


def test_a_crashed_run_resumes_without_redoing_finished_shards(tmp_path, pipeline_folder):
    """The in-process counterpart of the SIGKILL test: a crash while scoring the second shard, then a resume that
    generates only the missing shards."""
    calls = []

    def crashing(images, prompts):
        calls.append(len(images))
        if len(calls) == 2:
            raise Crash
        return brightness(images, prompts)

    crashing.__name__ = "brightness"  # the same reward name: the resume check compares it
    with pytest.raises(Crash):
        generate_in_process(pipeline_folder, tmp_path / "run", reward=crashing)
    assert len(list((tmp_path / "run" / "data").glob("*.parquet"))) == 1
    generate_in_process(pipeline_folder, tmp_path / "run", reward=crashing)
    assert calls == [6, 6, 6, 3]  # shard 0 scored once; shards 1 and 2 after the crash
    generate_in_process(pipeline_folder, tmp_path / "reference")
    assert_same_rows(rows_of(tmp_path / "run"), rows_of(tmp_path / "reference"))


def test_resuming_with_other_settings_is_refused(tmp_path, pipeline_folder, prompts_file):
    generate_in_process(pipeline_folder, tmp_path / "o")
    with pytest.raises(ValueError, match=r"other settings \(differing: \['settings'\]\)"):
        generate_in_process(pipeline_folder, tmp_path / "o", seed=1)
    from trl_dde.cli import main

    with pytest.raises(SystemExit, match=r"^trl-dde pairs: .* other settings"):  # the command says it in one line
        main(pairs_args(pipeline_folder, prompts_file, tmp_path / "o", "--seed", "1"))


# ---------------------------------------------------------------- relabel


def test_relabel_swaps_exactly_the_pairs_the_reward_disagrees_with(tmp_path):
    dataset = tiny_preference_dataset(num_pairs=12, seed=3, tie_every=4)  # 3 ties, winner side alternating
    relabeled, report = relabel_dataset(dataset, brightness, DDEConfig(report_to="none"), progress=False)
    expected_swaps = []
    for row in dataset:
        first, second = load_image(row["jpg_0"]), load_image(row["jpg_1"])
        winner, loser = (second, first) if row["label_0"] == 0 else (first, second)
        expected_swaps.append(brightness([winner], [""])[0] < brightness([loser], [""])[0])
    decided = [s for s, row in zip(expected_swaps, dataset) if row["label_0"] != 0.5]
    assert report.disagree == sum(decided) and report.agree == len(decided) - sum(decided)
    assert report.ties_decided == 3 and report.written == 12
    assert report.agreement == pytest.approx(1 - sum(decided) / len(decided))
    assert [not agrees for agrees in relabeled["reward_agrees"]] == expected_swaps
    for row in relabeled:
        assert brightness([row["chosen"]], [""])[0] >= brightness([row["rejected"]], [""])[0]
    assert "agreement with the human labels" in report.table()


def test_relabel_cli_drops_pairs_below_the_margin(tmp_path, monkeypatch, capsys):
    from trl_dde.cli import main

    monkeypatch.chdir(TESTS)
    source = tmp_path / "source"
    tiny_preference_dataset(num_pairs=8, seed=1, schema="paired").save_to_disk(str(source))
    margins = [abs(brightness([r["chosen"]], [""])[0] - brightness([r["rejected"]], [""])[0])
               for r in tiny_preference_dataset(num_pairs=8, seed=1, schema="paired")]
    cut = sorted(margins)[3]
    main(["data", "relabel", str(source), "--reward", "pairs_reward:brightness", "--margin", str(cut),
          "--output_dir", str(tmp_path / "out")])
    assert "agreement with the human labels" in capsys.readouterr().out
    relabeled = load_preference_split(str(tmp_path / "out"), None, "train")
    assert len(relabeled) == sum(m >= cut for m in margins) == 5


# ---------------------------------------------------------------- adapters


def test_a_column_mapped_dataset_trains(tmp_path, pipeline):
    dataset = tiny_preference_dataset(num_pairs=8, schema="paired").rename_columns(
        {"prompt": "caption_text", "chosen": "image_good", "rejected": "image_bad"})
    args = make_args(tmp_path, max_steps=1, per_device_train_batch_size=2,
                     column_map='{"prompt": "caption_text", "chosen": "image_good", "rejected": "image_bad"}')
    assert (args.prompt_column, args.chosen_column, args.rejected_column) == ("caption_text", "image_good", "image_bad")
    trainer = DDEDiffusionTrainer(pipeline, args=args, train_dataset=dataset, peft_config=lora_config())
    trainer.train()
    assert trainer.state.global_step == 1


def ranked_dataset(tmp_path, lists=4):
    """Ranked rows whose images are relative paths under an image root (one list has a tie)."""
    pairs = tiny_preference_dataset(num_pairs=2 * lists, schema="paired")
    root = tmp_path / "mirror"
    root.mkdir()
    rows = {"prompt": [], "images": [], "ranks": []}
    for i in range(lists):
        names = []
        for k, image in enumerate((pairs[2 * i]["chosen"], pairs[2 * i + 1]["chosen"], pairs[2 * i]["rejected"])):
            names.append(f"{i}_{k}.png")
            image.save(root / names[-1])
        rows["prompt"].append(pairs[2 * i]["prompt"])
        rows["images"].append(names)
        rows["ranks"].append([1, 1, 3] if i == 0 else [1, 2, 3])
    return Dataset.from_dict(rows), root


def test_a_ranked_list_dataset_trains(tmp_path, pipeline):
    dataset, root = ranked_dataset(tmp_path)
    args = make_args(tmp_path, max_steps=1, per_device_train_batch_size=2, image_root=str(root), ranked_pairs="adjacent")
    trainer = DDEDiffusionTrainer(pipeline, args=args, train_dataset=dataset, peft_config=lora_config())
    assert len(trainer.train_dataset) == 2 + 3 * 2  # tied list: 2 adjacent pairs (rank 1s vs 3); others: 1-2, 2-3
    trainer.train()
    assert trainer.state.global_step == 1


def test_ranked_pairs_modes():
    batch = {"p": ["x"], "im": [["a", "b", "c", "d"]], "r": [[3, 1, 2, 2]]}
    pairs = lambda mode: list(zip(*(ranked_to_pairs(batch, "p", "im", "r", mode)[k] for k in ("chosen", "rejected"))))
    assert pairs("best_worst") == [("b", "a")]
    assert pairs("adjacent") == [("b", "c"), ("b", "d"), ("c", "a"), ("d", "a")]
    assert sorted(pairs("all")) == sorted([("b", "c"), ("b", "d"), ("b", "a"), ("c", "a"), ("d", "a")])  # c, d tie
    with pytest.raises(ValueError, match="one rank per image"):
        ranked_to_pairs({"p": ["x"], "im": [["a"]], "r": [[1, 2]]}, "p", "im", "r", "all")
    for mode in ("adjacent", "all", "best_worst"):  # a row without images (or with one) gives no pair
        assert ranked_to_pairs({"p": ["x", "y"], "im": [[], ["a"]], "r": [[], [1]]}, "p", "im", "r", mode)["chosen"] == []


def test_image_references_resolve_in_the_local_mirror():
    assert resolve_image_reference("https://cdn.example.org/a/b.jpg", "/m") == "/m/cdn.example.org/a/b.jpg"
    assert resolve_image_reference("sub/c.png", "/m") == "/m/sub/c.png"
    assert resolve_image_reference("/abs/c.png", "/m") == "/abs/c.png"
    assert resolve_image_reference(b"bytes", "/m") == b"bytes"
    with pytest.raises(ValueError, match="set image_root"):
        resolve_image_reference("http://host/a.jpg", None)


def test_a_wrong_mapping_names_the_missing_columns_and_the_layouts(tmp_path, pipeline):
    dataset = tiny_preference_dataset(num_pairs=4, schema="paired").rename_columns({"chosen": "good"})
    args = make_args(tmp_path, column_map={"prompt": "prompt", "chosen": "best"})
    with pytest.raises(ValueError) as error:
        DDEDiffusionTrainer(pipeline, args=args, train_dataset=dataset, peft_config=lora_config())
    message = str(error.value)
    assert "paired: needs ['prompt', 'best', 'rejected']; missing ['best']" in message
    assert "pickapic" in message and "ranked" in message and "column_map" in message
    with pytest.raises(ValueError, match="unknown roles \\['winner'\\]"):
        make_args(tmp_path, column_map='{"winner": "good"}')
    with pytest.raises(ValueError, match="not valid JSON"):
        make_args(tmp_path, column_map="{prompt: caption}")


def test_data_inspect_reports_schema_ties_and_undecodable_images(tmp_path, capsys):
    from trl_dde.cli import main

    dataset = tiny_preference_dataset(num_pairs=8, seed=0, tie_every=4).to_dict()
    dataset["jpg_1"][2] = b"not an image"
    folder = tmp_path / "data.parquet"
    Dataset.from_dict(dataset).to_parquet(str(folder))  # a local Parquet copy, Pick-a-Pic columns
    main(["data", "inspect", str(folder), "--num_examples", "2"])
    out = capsys.readouterr().out
    lines = dict((line[:24].strip(), line[24:].strip()) for line in out.splitlines() if line and not line.startswith(" "))
    assert lines["layout"] == "pickapic" and lines["rows"] == "8" and lines["ties"] == "2"
    assert lines["undecodable or invalid"] == "1" and lines["usable pairs"] == "5"
    assert out.count("example") == 2


# ---------------------------------------------------------------- two processes


def test_two_processes_split_the_shards_and_write_one_dataset(tmp_path, pipeline_folder, prompts_file):
    """`torchrun --nproc_per_node 2 -m trl_dde.cli pairs`: rank 0 takes shards 0 and 2, rank 1 shard 1; the result is
    the single-process dataset, and the card is written once every shard exists."""
    from test_distributed import free_port

    generate_in_process(pipeline_folder, tmp_path / "single")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "trl_dde.cli", *pairs_args(pipeline_folder, prompts_file, tmp_path / "two")]
    result = subprocess.run(command, cwd=TESTS, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[rank 0/2]: 100%|██████████| 9/9" in result.stderr  # shards 0 and 2: prompts 0, 1, 4 x 3 images
    assert "[rank 1/2]: 100%|██████████| 6/6" in result.stderr  # shard 1: prompts 2, 3 x 3 images
    assert_same_rows(rows_of(tmp_path / "two"), rows_of(tmp_path / "single"))
    assert json.loads((tmp_path / "two" / "pairs.json").read_text())["statistics"]["pairs"] == len(PROMPTS)


# ---------------------------------------------------------------- online rounds


def test_two_online_rounds_train_and_the_second_draws_from_the_first_adapter(tmp_path, pipeline_folder, prompts_file,
                                                                           monkeypatch, capsys):
    import torch

    from trl_dde.cli import train
    from trl_dde.evaluation.generation import GenerationSettings, ModelSpec, model_variant, render
    from trl_dde.families import load_pipeline

    monkeypatch.chdir(TESTS)
    output = tmp_path / "online"
    records = train(["--model_name_or_path", pipeline_folder, "--use_peft", "--lora_r", "4", "--online_rounds", "2",
                     "--online_prompts", str(prompts_file), "--online_reward", "pairs_reward:brightness",
                     "--online_images_per_prompt", "3", "--online_num_inference_steps", "2", "--online_resolution", "32",
                     "--online_batch_size", "1", "--max_steps", "2", "--per_device_train_batch_size", "2",
                     "--learning_rate", "0.05", "--output_dir", str(output), "--use_cpu", "--report_to", "none",
                     "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0"])
    assert [r["round"] for r in records] == [0, 1]
    assert json.loads((output / "rounds.json").read_text()) == records
    assert "| round | generated with |" in capsys.readouterr().out
    first_adapter = str(output / "round-0" / "adapter")
    for r in (0, 1):
        assert (output / f"round-{r}" / "adapter" / "pytorch_lora_weights.safetensors").is_file()
        assert (output / f"round-{r}" / "pairs" / "README.md").is_file()
    assert json.loads((output / "round-0" / "pairs" / "pairs.json").read_text())["adapter"] is None
    assert json.loads((output / "round-1" / "pairs" / "pairs.json").read_text())["adapter"] == first_adapter
    assert records[1]["generated_with"] == first_adapter
    # the second round's chosen image is what base + the first round's adapter draws from its seed, not the base's
    row = load_preference_split(str(output / "round-1" / "pairs"), None, "train")[0]
    settings = GenerationSettings(num_inference_steps=2, resolution=32, batch_size=1)  # as generated: one per call
    family = load_pipeline(pipeline_folder)
    family.pipeline.set_progress_bar_config(disable=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = render(family.pipeline, [row["prompt"]], [row["chosen_seed"]], settings)[0]
        with model_variant(family, ModelSpec("policy", adapter=first_adapter)) as policy:
            tuned = render(policy, [row["prompt"]], [row["chosen_seed"]], settings)[0]
    finally:
        torch.set_num_threads(threads)
    # equal up to CPU rounding (the round ran with the process's thread count, which reorders float sums)
    from_policy = np.abs(pixels(tuned) - pixels(row["chosen"])).max()
    from_base = np.abs(pixels(base) - pixels(row["chosen"])).max()
    assert from_policy <= 2 < from_base, (from_policy, from_base)


@pytest.mark.parametrize("overrides, message", [
    ({"ranked_pairs": "best"}, "ranked_pairs must be one of"),
    ({"image_root": "/no/such/mirror"}, "image_root='/no/such/mirror' is not a folder"),
])
def test_adapter_options_are_checked_in_the_config(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_relabel_refuses_a_zero_batch_size():
    args = DDEConfig(output_dir="unused", report_to="none")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        relabel_dataset(tiny_preference_dataset(num_pairs=2, seed=0), brightness, args, batch_size=0)


@pytest.mark.parametrize("overrides, use_peft, message", [
    ({}, False, "add --use_peft"),
    ({"online_reward": []}, True, "needs --online_reward"),
    ({"online_reward_weights": [1.0, 2.0]}, True, "one weight per reward"),
    ({"online_images_per_prompt": 1}, True, "at least 2"),
    ({"online_margin": -0.5}, True, "online_margin must be >= 0"),
])
def test_online_options_are_refused_before_anything_loads(overrides, use_peft, message):
    from trl_dde.pairs import OnlineArguments

    online = OnlineArguments(**{"online_rounds": 2, "online_reward": ["pairs_reward:brightness"], **overrides})
    with pytest.raises(ValueError, match=message):
        online.check(use_peft)


def test_data_commands_name_a_missing_dataset_in_one_line(tmp_path):
    from trl_dde.cli import main

    for action in (["inspect"], ["relabel", "--reward", "pairs_reward:brightness", "--output_dir", str(tmp_path / "o")]):
        with pytest.raises(SystemExit, match=r"^trl-dde data \w+: DATASET='.*nothing-here': no such file or folder"):
            main(["data", action[0], str(tmp_path / "nothing-here"), *action[1:]])
