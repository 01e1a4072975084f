"""``precompute_ref=True``: the reference's per-pair terms computed before training equal the live reference's."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from conftest import lora_config, make_args
from test_distributed import free_port

from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.credit import DenoisingOutputs, UniformCredit
from trl_dde.credit.uniform import denoising_margin, denoising_reference_terms, epsilon_margin
from trl_dde.data import PAIR_EPOCH, PAIR_INDEX
from trl_dde.draws import PairDraws, pair_seed
from trl_dde.reference_cache import SHARD_PAIRS, build_reference_cache
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline

STRATEGIES = ["uniform", "discounted", "dde-single", "dde-step", "dde"]


class RecordingTrainer(DDEDiffusionTrainer):
    """Keeps every training step's loss as computed (the logs round it)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.losses.append(loss.detach().clone())
        return loss


def train(tmp_path, data, lora, pipeline_seed=0, credit="dde", **overrides):
    """Train 4 steps (2 epochs) with per-pair draws; ``credit`` a name (``args.credit``) or an instance."""
    values = dict(max_steps=4, pair_seeded_draws=True, precompute_ref_cache_dir=str(tmp_path / "cache"))
    if isinstance(credit, str):
        values["credit"] = credit
    args = make_args(tmp_path, **{**values, **overrides})
    trainer = RecordingTrainer(tiny_sd15_pipeline(seed=pipeline_seed), args=args, train_dataset=data,
                               peft_config=lora_config() if lora else None,
                               credit=None if isinstance(credit, str) else credit)
    trainer.losses = []
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def data():
    return tiny_preference_dataset(num_pairs=16, seed=0, tie_every=4)  # 12 pairs: 3 steps an epoch, 4 steps = 2 epochs


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("credit", STRATEGIES)
def test_losses_equal_the_online_reference_run(tmp_path, data, credit, lora):
    online = train(tmp_path, data, lora, credit=credit)
    cached = train(tmp_path, data, lora, credit=credit, precompute_ref=True)
    assert cached.reference_cache is not None and cached.reference_cache.num_epochs == 2
    online_losses, cached_losses = torch.stack(online.losses), torch.stack(cached.losses)
    assert len(online_losses) == 4 and online_losses[1:].std() > 0  # the policy moved: the reference matters
    torch.testing.assert_close(cached_losses, online_losses, rtol=1e-6, atol=1e-7)
    for (name, weight), reference in zip(cached.model.named_parameters(), online.model.parameters()):
        torch.testing.assert_close(weight, reference, rtol=1e-6, atol=1e-7, msg=name)
    if credit in ("dde-step", "dde"):
        torch.testing.assert_close(cached.credit.ratios, online.credit.ratios, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_losses_equal_under_bf16_mixed_precision(tmp_path, data, lora):
    """The pass runs under the step's autocast, with the weights in the step's dtypes."""
    online = train(tmp_path, data, lora, bf16=True)
    cached = train(tmp_path, data, lora, bf16=True, precompute_ref=True)
    torch.testing.assert_close(torch.stack(cached.losses), torch.stack(online.losses), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("options", [
    {"random_crop": True, "random_flip": True, "resolution": 24},  # encoded on the fly: per-pair posterior samples
    {"precompute_latents": True, "precompute_vae": "sample", "precompute_flip": True, "random_flip": True},
], ids=["on-the-fly-augmented", "latent-cache"])
def test_losses_equal_with_augmentation_and_sampled_latents(tmp_path, data, options):
    options = {**options, "precompute_cache_dir": str(tmp_path / "latents")} if "precompute_latents" in options else options
    online = train(tmp_path, data, True, credit="dde-step", **options)
    cached = train(tmp_path, data, True, credit="dde-step", precompute_ref=True, **options)
    torch.testing.assert_close(torch.stack(cached.losses), torch.stack(online.losses), rtol=1e-6, atol=1e-7)


def test_full_fine_tuning_holds_no_reference_copy(tmp_path, data):
    online = DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), args=make_args(tmp_path), train_dataset=data)
    cached = DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), args=make_args(tmp_path, precompute_ref=True),
                                 train_dataset=data)

    def held(trainer):
        modules = [trainer.model] + ([trainer.ref_model] if trainer.ref_model is not None else [])
        return sum(parameter.numel() for module in modules for parameter in module.parameters())

    assert cached.ref_model is None and held(online) == 2 * held(cached)


def test_cached_terms_equal_the_live_reference_for_any_pass_batch_size(tmp_path, data):
    """A larger pass batch changes only the rounding: every step's cached terms match the live reference's."""

    class Comparing(DDEDiffusionTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            indices, epochs = inputs[PAIR_INDEX], inputs[PAIR_EPOCH]
            batch = self.batches(inputs, self.draws.latent_generators(indices, epochs))
            timesteps, noise = self.draws.timesteps_and_noise(indices, epochs, batch.x0_w)
            live = self._denoise(model, batch, noise, timesteps).reference
            cached = self.reference_cache.lookup(indices, epochs, batch.x0_w.device)
            assert live.keys() == cached.keys()
            for key in live:
                torch.testing.assert_close(cached[key], live[key], rtol=1e-5, atol=1e-6, msg=key)
            self.compared += 1
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    args = make_args(tmp_path, credit="dde", max_steps=4, precompute_ref=True, precompute_ref_batch_size=7,
                     precompute_ref_cache_dir=str(tmp_path / "cache"))
    trainer = Comparing(tiny_sd15_pipeline(seed=0), args=args, train_dataset=data, peft_config=lora_config())
    trainer.compared = 0
    trainer.train()
    assert trainer.compared == 4
    assert set(trainer.reference_cache.keys) == {"mse/ref_chosen", "mse/ref_rejected", "single_shot_ref_w",
                                                 "single_shot_ref_l", "step_ref_w", "step_ref_l"}


def test_pair_draws_depend_only_on_seed_epoch_and_pair():
    credit = UniformCredit(torch.linspace(0.999, 0.01, 1000))
    draws = PairDraws(0, credit, "cpu")
    latents = torch.zeros(3, 4, 8, 8)
    t, noise = draws.timesteps_and_noise([5, 9, 2], [1, 1, 0], latents)
    t_alone, noise_alone = draws.timesteps_and_noise([9], [1], latents[:1])
    assert t[1] == t_alone[0] and torch.equal(noise[1], noise_alone[0])  # batch composition does not matter
    t_other, _ = PairDraws(1, credit, "cpu").timesteps_and_noise([5, 9, 2], [1, 1, 0], latents)
    _, noise_next = draws.timesteps_and_noise([5], [2], latents[:1])
    assert not torch.equal(t_other, t) and not torch.equal(noise_next[0], noise[0])
    # independent formula: the pair's own generator draws its timestep, then its noise
    generator = torch.Generator().manual_seed(pair_seed(0, 0, 2, "step"))
    assert t[2] == torch.randint(0, 1000, (1,), generator=generator)[0]
    assert torch.equal(noise[2], torch.randn(4, 8, 8, generator=generator))
    assert len({pair_seed(0, 1, 9, stream) for stream in ("step", "latent_w", "latent_l")}) == 3


class TensorStrategy(UniformCredit):
    """A user strategy that reads the reference's predictions itself (the default ``reference_inputs``)."""

    name = "tensor-strategy"
    reference_inputs = "tensors"

    def margin(self, outputs):
        return epsilon_margin(outputs)


def test_a_strategy_needing_reference_tensors_is_refused(tmp_path, data, monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    with pytest.raises(ValueError, match="Implement reference_terms"):
        DDEConfig(output_dir=str(tmp_path), credit="test_precompute_ref:TensorStrategy", precompute_ref=True)
    credit = TensorStrategy(tiny_sd15_pipeline(seed=0).scheduler.alphas_cumprod)
    with pytest.raises(ValueError, match="reference_inputs='tensors'"):
        DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), args=make_args(tmp_path, precompute_ref=True), train_dataset=data,
                            credit=credit)
    # it still trains with the live reference, per-pair draws or not
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), args=make_args(tmp_path, max_steps=1, pair_seeded_draws=True),
                                  train_dataset=data, credit=credit, peft_config=lora_config())
    trainer.train()


def test_options_precompute_ref_cannot_serve_are_refused(tmp_path, data):
    with pytest.raises(ValueError, match="uses no reference"):
        DDEConfig(output_dir=str(tmp_path), precompute_ref=True, loss_type="sft")
    with pytest.raises(ValueError, match="precompute_ref_batch_size"):
        DDEConfig(output_dir=str(tmp_path), precompute_ref=True, precompute_ref_batch_size=0)
    assert DDEConfig(output_dir=str(tmp_path), precompute_ref=True).pair_seeded_draws
    with pytest.raises(ValueError, match="no eval_dataset"):
        DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), args=make_args(tmp_path, precompute_ref=True), train_dataset=data,
                            eval_dataset=data)
    with pytest.raises(ValueError, match="streamed dataset"):
        DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), args=make_args(tmp_path, precompute_ref=True),
                            train_dataset=data.to_iterable_dataset())


def test_cache_is_reused_resumed_shard_by_shard_and_keyed_by_what_it_depends_on(tmp_path, data):
    first = train(tmp_path, data, True, credit="uniform", precompute_ref=True)
    folder = first.reference_cache.folder
    files = sorted(os.listdir(folder))
    assert files == ["cache.json", "epoch-0000-shard-00000.safetensors", "epoch-0000.complete",
                     "epoch-0001-shard-00000.safetensors", "epoch-0001.complete"]
    stamps = {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in files}
    again = train(tmp_path, data, True, credit="uniform", precompute_ref=True)
    assert again.reference_cache.folder == folder
    assert {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in files} == stamps  # nothing recomputed
    torch.testing.assert_close(torch.stack(again.losses), torch.stack(first.losses), rtol=0, atol=0)
    # an interrupted pass (epoch 1 neither marked nor written) resumes with the missing shard only
    os.remove(os.path.join(folder, "epoch-0001.complete"))
    os.remove(os.path.join(folder, "epoch-0001-shard-00000.safetensors"))
    resumed = train(tmp_path, data, True, credit="uniform", precompute_ref=True)
    assert os.stat(os.path.join(folder, "epoch-0000-shard-00000.safetensors")).st_mtime_ns == stamps[
        "epoch-0000-shard-00000.safetensors"]
    assert sorted(os.listdir(folder)) == files
    assert torch.equal(resumed.reference_cache.table, first.reference_cache.table)
    # another seed, strategy option or reference model gives another folder
    for overrides in ({"seed": 1}, {"credit_kwargs": {"error_space": "prediction"}}, {"pipeline_seed": 1}):
        other = train(tmp_path, data, True, credit="uniform", precompute_ref=True, max_steps=1, **overrides)
        assert other.reference_cache.folder != folder
    # a strategy class of its own with the same name, options and term keys has other terms: another folder
    alphas_cumprod = tiny_sd15_pipeline(seed=0).scheduler.alphas_cumprod
    other = train(tmp_path, data, True, credit=DoubledUniform(alphas_cumprod), precompute_ref=True, max_steps=1)
    assert other.reference_cache.folder != folder
    # the per-pair generators' device type: a CUDA generator draws other timesteps and noise than a CPU one
    key, _ = again._reference_cache_key(again.model)
    again.draws.device = torch.device("cuda")
    assert again._reference_cache_key(again.model)[0] != key


class DoubledUniform(UniformCredit):
    """Uniform's name, options (``extra_repr``) and term keys, twice its reference terms."""

    def reference_terms(self, outputs):
        return {key: 2 * value for key, value in super().reference_terms(outputs).items()}


def test_shards_are_split_between_processes_and_written_atomically(tmp_path):
    """Two simulated processes each compute their own shards; neither reads a temporary file."""
    num_pairs, calls = SHARD_PAIRS + 5, {0: [], 1: []}

    def compute_for(rank):
        def compute(indices, epoch):
            calls[rank].append((indices[0], epoch))
            return {"value": torch.tensor(indices, dtype=torch.float32) + 1000 * epoch}
        return compute

    folder = str(tmp_path / "cache")
    os.makedirs(folder)
    open(os.path.join(folder, "epoch-0000-shard-00000.safetensors.tmp-1"), "w").write("partial")
    with pytest.raises(FileNotFoundError, match="lacks epoch-0000-shard-00000"):  # rank 1 first: rank 0's shard is missing
        build_reference_cache(folder, num_pairs, 1, 512, compute_for(1), process_index=1, num_processes=2)
    cache = build_reference_cache(folder, num_pairs, 1, 512, compute_for(0), process_index=0, num_processes=2)
    assert {start for start, _ in calls[0]} == {0, 512} and {start for start, _ in calls[1]} == {SHARD_PAIRS}
    torch.testing.assert_close(cache.table[0, :, 0], torch.arange(num_pairs, dtype=torch.float32))
    with pytest.raises(ValueError, match="holds 1 epoch"):
        cache.lookup([0], [1], torch.device("cpu"))


def run_two_processes(worker: str, tmp_path) -> list[dict]:
    """Run ``tests/<worker>`` on 2 gloo processes; what each rank saved (``rank<r>.pt`` in ``tmp_path``)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               os.path.join(os.path.dirname(__file__), worker), str(tmp_path)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]


@pytest.mark.slow  # ~25 s on 2 cores; test_shards_are_split_between_processes_and_written_atomically is the fast cover
def test_two_processes_shard_the_pass_and_match_the_online_reference(tmp_path):
    ranks = run_two_processes("precompute_ref_worker.py", tmp_path)
    # 16 pairs in shards of 4, two epochs (5 steps of 2 pairs on each of 2 ranks): each rank wrote its own shards
    shards = {f"epoch-{e:04d}-shard-{s:05d}.safetensors" for e in (0, 1) for s in range(4)}
    assert set(ranks[0]["written"]) | set(ranks[1]["written"]) == shards
    assert not set(ranks[0]["written"]) & set(ranks[1]["written"])
    assert set(ranks[0]["written"]) == {name for name in shards if name.endswith(("00000.safetensors", "00002.safetensors"))}
    for rank in ranks:
        torch.testing.assert_close(rank[True]["losses"], rank[False]["losses"], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(rank[True]["ratios"], rank[False]["ratios"], rtol=1e-6, atol=1e-9)
        for name, weight in rank[True]["weights"].items():
            torch.testing.assert_close(weight, rank[False]["weights"][name], rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(ranks[0][True]["losses"], ranks[1][True]["losses"])  # the ranks trained different pairs


def test_the_pass_plans_the_epochs_accelerate_gives_each_process(tmp_path):
    """Two processes with dataloader_drop_last: each gets floor(floor(7 / 2) / 2) = 1 batch an epoch, so 3 steps
    are 3 epochs; the pass covers exactly those (not the 2 of a count that divides the pairs first)."""
    ranks = run_two_processes("precompute_ref_epochs_worker.py", tmp_path)
    for rank in ranks:
        assert rank["epochs_seen"] == [0, 1, 2] and rank["cached_epochs"] == 3
    assert ranks[0]["seed"] != ranks[1]["seed"]  # per-pair draws or not, each rank has its own stream (dropout)


def test_resumed_full_fine_tune_reads_the_cache_and_matches_the_uninterrupted_run(tmp_path, data):
    whole = train(tmp_path, data, False, credit="dde", precompute_ref=True, save_strategy="steps", save_steps=2)
    checkpoint = os.path.join(whole.args.output_dir, "checkpoint-2")
    args = make_args(tmp_path, max_steps=4, credit="dde", precompute_ref=True, save_strategy="steps", save_steps=2,
                     precompute_ref_cache_dir=str(tmp_path / "cache"))
    resumed = RecordingTrainer(tiny_sd15_pipeline(seed=0), args=args, train_dataset=data)
    resumed.losses = []
    resumed.train(resume_from_checkpoint=checkpoint)  # the policy is loaded after the cache was found complete
    assert resumed.reference_cache.folder == whole.reference_cache.folder
    torch.testing.assert_close(torch.stack(resumed.losses), torch.stack(whole.losses)[2:], rtol=1e-6, atol=1e-7)


def test_a_failed_pass_is_retried_with_the_given_reference(tmp_path, data, monkeypatch):
    """Full fine-tuning with a ref_model: a pass that failed (say, an unshared cache folder) leaves the given
    reference in place, so a second train() computes its terms, not the denoiser's."""
    import trl_dde.trainer as trainer_module

    def trainer_given_a_reference():
        args = make_args(tmp_path, credit="uniform", max_steps=1, precompute_ref=True,
                         precompute_ref_cache_dir=str(tmp_path / "cache"))
        return DDEDiffusionTrainer(tiny_sd15_pipeline(seed=0), ref_model=tiny_sd15_pipeline(seed=1).unet, args=args,
                                   train_dataset=data)

    direct = trainer_given_a_reference()
    direct.train()
    denoiser = train(tmp_path, data, False, credit="uniform", precompute_ref=True, max_steps=1)
    assert direct.reference_cache.folder != denoiser.reference_cache.folder
    retried, build = trainer_given_a_reference(), trainer_module.build_reference_cache

    def fail_once(*args, **kwargs):
        monkeypatch.setattr(trainer_module, "build_reference_cache", build)
        raise FileNotFoundError("the cache folder is not shared")

    monkeypatch.setattr(trainer_module, "build_reference_cache", fail_once)
    with pytest.raises(FileNotFoundError, match="not shared"):
        retried.train()
    retried.train()
    assert retried.reference_cache.folder == direct.reference_cache.folder


class EpochRecordingTrainer(RecordingTrainer):
    """Keeps each training step's pair epoch too."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.epochs.extend(inputs[PAIR_EPOCH])
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_a_run_resumed_in_a_later_epoch_draws_that_epoch(tmp_path, data):
    """Resumed at step 4 (3 steps an epoch): the skipped-batch loader of the resumed epoch does not pass the epoch
    on to the pairs; the trainer does, so the crops, flips, draws and losses are the uninterrupted run's."""
    def run(resume_from_checkpoint=None):
        args = make_args(tmp_path, max_steps=5, credit="uniform", pair_seeded_draws=True, save_strategy="steps",
                         save_steps=4, random_flip=True)
        trainer = EpochRecordingTrainer(tiny_sd15_pipeline(seed=0), args=args, train_dataset=data,
                                        peft_config=lora_config())
        trainer.losses, trainer.epochs = [], []
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        return trainer

    whole = run()
    assert whole.epochs == [0] * 12 + [1] * 8
    resumed = run(os.path.join(whole.args.output_dir, "checkpoint-4"))
    assert resumed.epochs == [1] * 4
    torch.testing.assert_close(torch.stack(resumed.losses), torch.stack(whole.losses)[4:], rtol=1e-6, atol=1e-7)


def test_persistent_dataloader_workers_see_each_new_epoch(tmp_path, data):
    """A persistent worker keeps its copy of the dataset across epochs; the pairs' epoch lives in shared memory,
    so the worker's rows (and their draws) follow the epoch the trainer sets."""
    args = make_args(tmp_path, max_steps=6, credit="uniform", pair_seeded_draws=True, dataloader_num_workers=1,
                     dataloader_persistent_workers=True)
    trainer = EpochRecordingTrainer(tiny_sd15_pipeline(seed=0), args=args, train_dataset=data, peft_config=lora_config())
    trainer.losses, trainer.epochs = [], []
    trainer.train()
    assert trainer.epochs == [0] * 12 + [1] * 12


class SNRWeighted(UniformCredit):
    """docs/credit_strategies.md's example, reading the reference's predictions."""

    reference_inputs = "tensors"

    def __init__(self, alphas_cumprod, timestep_range=None, cap: float = 5.0):
        super().__init__(alphas_cumprod, timestep_range)
        self.cap = cap

    def margin(self, outputs):
        abar = self.alphas_cumprod[outputs.timesteps]
        return epsilon_margin(outputs) * (abar / (1 - abar)).clamp(max=self.cap) / self.cap


class CachedSNRWeighted(SNRWeighted):
    """The same strategy made cacheable as the docs show."""

    reference_inputs = "scalars"

    def reference_terms(self, outputs):
        return denoising_reference_terms(outputs, "epsilon")

    def margin(self, outputs):
        abar = self.alphas_cumprod[outputs.timesteps]
        z = denoising_margin(outputs, "epsilon", self.reference(outputs))
        return z * (abar / (1 - abar)).clamp(max=self.cap) / self.cap


def test_the_documented_conversion_to_reference_terms_keeps_the_margin_and_trains_cached(tmp_path, data):
    alphas_cumprod = tiny_sd15_pipeline(seed=0).scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(0)
    x0_w, x0_l, noise, *preds = (torch.randn(3, 4, 8, 8, generator=generator) for _ in range(7))
    timesteps = torch.tensor([5, 500, 990])
    outputs = DenoisingOutputs(x0_w, x0_l, noise, timesteps, x0_w + noise, x0_l + noise, *preds)
    expected = SNRWeighted(alphas_cumprod).margin(outputs)
    credit = CachedSNRWeighted(alphas_cumprod)
    torch.testing.assert_close(credit.margin(outputs), expected)  # terms computed from the predictions
    cached_outputs = dataclasses.replace(outputs, pred_ref_w=None, pred_ref_l=None,
                                         reference=credit.reference_terms(outputs))
    torch.testing.assert_close(credit.margin(cached_outputs), expected)  # the same terms, carried
    with pytest.raises(ValueError, match="carry no reference predictions"):
        SNRWeighted(alphas_cumprod).margin(cached_outputs)
    online = train(tmp_path, data, True, credit=CachedSNRWeighted(alphas_cumprod))
    cached = train(tmp_path, data, True, credit=CachedSNRWeighted(alphas_cumprod), precompute_ref=True)
    torch.testing.assert_close(torch.stack(cached.losses), torch.stack(online.losses), rtol=1e-6, atol=1e-7)


def test_the_options_reach_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(DDEConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--precompute_ref", "--precompute_ref_batch_size", "8",
         "--precompute_ref_cache_dir", str(tmp_path / "reference")])
    assert args.precompute_ref and args.pair_seeded_draws and args.precompute_ref_batch_size == 8
    assert args.precompute_ref_cache_dir == str(tmp_path / "reference")


@pytest.mark.parametrize("credit", STRATEGIES)
def test_reference_terms_are_the_reference_errors_and_carry_the_whole_margin(credit):
    """Each built-in's terms against independent formulas; its margin and update from carried terms alone."""
    from trl_dde.credit import get_credit

    alphas_cumprod = tiny_sd15_pipeline(seed=0).scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(1)
    x0_w, x0_l, noise, *preds = (torch.randn(4, 4, 8, 8, generator=generator) for _ in range(7))
    timesteps = torch.tensor([3, 250, 600, 900])
    abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    xt_w, xt_l = abar.sqrt() * x0_w + (1 - abar).sqrt() * noise, abar.sqrt() * x0_l + (1 - abar).sqrt() * noise
    outputs = DenoisingOutputs(x0_w, x0_l, noise, timesteps, xt_w, xt_l, *preds)
    strategy = get_credit(credit, alphas_cumprod=alphas_cumprod)
    terms = strategy.reference_terms(outputs)
    ref_w, ref_l = preds[2], preds[3]

    def x0_error(eps, x_t, x0, reduce):  # x̂0 = (x_t - √(1-ā) ε̂) / √ā
        return reduce(((x_t - (1 - abar).sqrt() * eps) / abar.sqrt() - x0).pow(2).flatten(1), 1)

    expected = {}
    if credit in ("uniform", "discounted", "dde-step"):
        expected |= {"error_ref_w/epsilon": (ref_w - noise).pow(2).flatten(1).mean(1),
                     "error_ref_l/epsilon": (ref_l - noise).pow(2).flatten(1).mean(1)}
    if credit in ("dde-single", "dde"):  # alpha_bar_0="one": μ̂ = x̂0
        expected |= {"single_shot_ref_w": x0_error(ref_w, xt_w, x0_w, torch.mean),
                     "single_shot_ref_l": x0_error(ref_l, xt_l, x0_l, torch.mean)}
    if credit in ("dde-step", "dde"):  # correction_reduction="sum"
        expected |= {"step_ref_w": x0_error(ref_w, xt_w, x0_w, torch.sum), "step_ref_l": x0_error(ref_l, xt_l, x0_l, torch.sum)}
    assert terms.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, rtol=1e-5, atol=1e-5, msg=key)
    carried = dataclasses.replace(outputs, pred_ref_w=None, pred_ref_l=None, reference=terms)
    live, cached = get_credit(credit, alphas_cumprod=alphas_cumprod), get_credit(credit, alphas_cumprod=alphas_cumprod)
    for _ in range(2):  # the second margin reads the corrections the first update wrote (dde-step, dde)
        assert torch.equal(cached.margin(carried), live.margin(outputs))
        live.update(outputs)
        cached.update(carried)
