"""The seams (families, noise processes, batch sources) and what they guarantee: reference parity, zero-SNR
schedules, no host synchronisation in a step, kohya export, strategies checked against the pipeline."""

import traceback

import pytest
import torch
from conftest import lora_config, make_args
from diffusers import DDIMScheduler, StableDiffusionPipeline
from torch.overrides import TorchFunctionMode

from trl_dde import CreditAssigner, DDEDiffusionTrainer, get_credit
from trl_dde.families import KOHYA_WEIGHTS_NAME, StableDiffusionFamily, family_class_for
from trl_dde.processes import DDPMProcess
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline

STRATEGIES = ["uniform", "discounted", "dde-single", "dde-step", "dde"]


@pytest.mark.parametrize("precision", [{}, {"bf16": True}], ids=["fp32", "bf16"])
def test_full_fine_tune_with_zero_learning_rate_has_exactly_zero_margins(tmp_path, precision):
    """The frozen copy runs at the policy's precision, autocast and mode: identical weights, identical outputs."""
    args = make_args(tmp_path, learning_rate=0.0, max_steps=2, credit="uniform", **precision)
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=args, train_dataset=tiny_preference_dataset(8))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "margin" in entry]
    assert len(logged) == 2 and all(e["margin"] == 0.0 and e["beta_margin"] == 0.0 and e["implicit_acc"] == 0.5 for e in logged)


def zero_snr_pipeline(prediction_type):
    pipeline = tiny_sd15_pipeline(prediction_type=prediction_type)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config, rescale_betas_zero_snr=True,
                                                   timestep_spacing="trailing")
    return pipeline


@pytest.mark.parametrize("credit", STRATEGIES)
def test_zero_terminal_snr_v_prediction_trains_every_strategy_with_finite_values(tmp_path, credit):
    pipeline = zero_snr_pipeline("v_prediction")
    args = make_args(tmp_path, credit=credit, timestep_range=[998, 1000], max_steps=3)  # τ = 999 has ā = 0
    trainer = DDEDiffusionTrainer(pipeline, args=args, train_dataset=tiny_preference_dataset(8), peft_config=lora_config())
    assert trainer.process.alphas_cumprod[-1] == 0
    drawn = []
    sample = trainer.credit.sample_timesteps
    trainer.credit.sample_timesteps = lambda *a, **k: drawn.append(sample(*a, **k)) or drawn[-1]
    trainer.train()
    assert 999 in torch.cat(drawn).tolist()
    for entry in (e for e in trainer.state.log_history if "loss" in e):
        assert all(torch.isfinite(torch.tensor(v)) for k, v in entry.items() if isinstance(v, float)), entry
    if credit in ("dde-step", "dde"):
        assert torch.isfinite(trainer.credit.ratios).all() and trainer.credit.ratios[:, 999].abs().sum() > 0


@pytest.mark.parametrize("credit", ["dde-single", "dde-step", "dde"])
def test_zero_terminal_snr_epsilon_prediction_is_refused_where_x0_is_undefined(tmp_path, credit):
    pipeline = zero_snr_pipeline("epsilon")
    with pytest.raises(ValueError, match=r"has none at τ = \[999\].*rescale_betas_zero_snr.*v-prediction.*timestep_range=\[0, 999\]"):
        DDEDiffusionTrainer(pipeline, args=make_args(tmp_path, credit=credit), train_dataset=tiny_preference_dataset(4),
                            peft_config=lora_config())
    # outside the undefined timestep, or with a strategy that reads no x̂0, it trains
    get_credit(credit, process=DDPMProcess.from_scheduler_config(pipeline.scheduler.config), timestep_range=[0, 999])
    get_credit("uniform", process=DDPMProcess.from_scheduler_config(pipeline.scheduler.config))


SYNCHRONISING = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "nonzero", "masked_select",
                 "unique", "cpu"}


class HostSyncCounter(TorchFunctionMode):
    """Records every torch call that reads a value on the host (a device synchronisation on an accelerator)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        index = args[1] if name in ("__getitem__", "__setitem__") and len(args) > 1 else None
        indices = index if isinstance(index, tuple) else (index,)
        if name in SYNCHRONISING or any(torch.is_tensor(i) and i.dtype == torch.bool for i in indices):
            caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename)
            self.calls.append(f"{name} in {caller.filename.split('site-packages/')[-1]}:{caller.lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("credit, precompute, reference",
                         [(name, False, False) for name in STRATEGIES] + [("dde", True, False), ("dde", True, True)],
                         ids=[*STRATEGIES, "dde-cached", "dde-cached-reference"])
def test_a_training_step_never_synchronises_with_the_host(tmp_path, credit, precompute, reference):
    args = make_args(tmp_path, credit=credit, precompute_latents=precompute, precompute_cache_dir=str(tmp_path / "cache"),
                     precompute_ref=reference, precompute_ref_cache_dir=str(tmp_path / "reference"))
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=args, train_dataset=tiny_preference_dataset(8),
                                  peft_config=lora_config())
    if reference:  # what train() does first: per-pair draws, the step reads the reference cache
        trainer.reference_cache = trainer._precompute_reference()
    trainer.create_optimizer_and_scheduler(num_training_steps=3)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test does not run
    model = trainer.model.train()
    batches = [trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(j, j + 4)])) for j in (0, 4)]
    for batch in batches:
        with HostSyncCounter() as counter:
            trainer.training_step(model, batch)
            trainer.credit.on_optimizer_step()
        assert counter.calls == [], counter.calls
    assert trainer.metrics.drain("train")["implicit_acc"] >= 0  # the values were kept, and are read here


def test_kohya_export_loads_back_into_diffusers_with_the_same_weights(tmp_path):
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=make_args(tmp_path, max_steps=2), train_dataset=tiny_preference_dataset(8),
                                  peft_config=lora_config(r=4, alpha=8))
    trainer.train()
    trainer.save_model(str(tmp_path / "export"), format="kohya")
    import safetensors.torch

    kohya = safetensors.torch.load_file(str(tmp_path / "export" / KOHYA_WEIGHTS_NAME))
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    layer = trainer.model.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert torch.equal(kohya[f"{key}.lora_down.weight"], layer.lora_A["default"].weight)
    assert torch.equal(kohya[f"{key}.lora_up.weight"], layer.lora_B["default"].weight)
    assert kohya[f"{key}.alpha"].item() == 8.0  # alpha / rank = the adapter's scaling, 8 / 4
    assert len([k for k in kohya if k.endswith(".alpha")]) == len([m for m in trainer.model.modules() if hasattr(m, "lora_A")])

    sample, text = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.randn(2, 77, 32)
    with torch.no_grad():
        trained = trainer.model.eval()(sample, torch.tensor([10, 700]), encoder_hidden_states=text).sample
        fresh = tiny_sd15_pipeline()
        before = fresh.unet(sample, torch.tensor([10, 700]), encoder_hidden_states=text).sample
        fresh.load_lora_weights(str(tmp_path / "export"), weight_name=KOHYA_WEIGHTS_NAME)
        loaded = fresh.unet(sample, torch.tensor([10, 700]), encoder_hidden_states=text).sample
    assert not torch.allclose(before, trained, atol=1e-4)
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=0)


def test_kohya_export_of_a_full_fine_tune_is_refused(tmp_path):
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=make_args(tmp_path), train_dataset=tiny_preference_dataset(4))
    with pytest.raises(ValueError, match="format='kohya' exports LoRA adapters"):
        trainer.save_model(str(tmp_path / "x"), format="kohya")


def test_a_strategy_instance_must_match_the_pipeline(tmp_path):
    pipeline, data = tiny_sd15_pipeline(), tiny_preference_dataset(4)
    other_schedule = DDPMProcess(torch.linspace(0.99, 0.01, 1000))
    with pytest.raises(ValueError, match="built for another noise process"):
        DDEDiffusionTrainer(pipeline, args=make_args(tmp_path), train_dataset=data, credit=get_credit("uniform", process=other_schedule))
    own = DDPMProcess.from_scheduler_config(pipeline.scheduler.config)
    with pytest.raises(ValueError, match=r"args.timestep_range=\[200, 700\] but the credit strategy instance samples \[0, 1000\]"):
        DDEDiffusionTrainer(pipeline, args=make_args(tmp_path, timestep_range=[200, 700]), train_dataset=data,
                            credit=get_credit("uniform", process=own))


def test_a_strategy_says_which_noise_processes_it_supports():
    class OnlyFlow(CreditAssigner):
        supported_processes = ("flow-matching",)

    with pytest.raises(ValueError, match=r"derived for the noise process\(es\) \['flow-matching'\], not 'ddpm'"):
        OnlyFlow(torch.linspace(0.99, 0.01, 10))


def test_families_are_found_by_pipeline_class(tmp_path, pipeline_folder):
    assert family_class_for(pipeline_folder) is StableDiffusionFamily
    assert family_class_for(tiny_sd15_pipeline()) is StableDiffusionFamily
    from diffusers import DiffusionPipeline

    class Unknown(DiffusionPipeline):
        pass

    with pytest.raises(ValueError, match=r"Unknown is not supported; trl-dde trains FluxPipeline \(flux\), StableDiffusionPipeline \(sd\), StableDiffusion3Pipeline \(sd3\), StableDiffusionXLPipeline \(sdxl\)"):
        family_class_for(Unknown())
    assert issubclass(StableDiffusionFamily.pipeline_class, StableDiffusionPipeline)


def test_the_full_fine_tune_reference_is_placed_not_wrapped(tmp_path):
    """Without DeepSpeed/FSDP the reference goes through accelerate's prepare_model(evaluation_mode=True): on the
    device, frozen, never wrapped in DDP (it has no gradients to synchronise)."""
    trainer = DDEDiffusionTrainer(tiny_sd15_pipeline(), args=make_args(tmp_path), train_dataset=tiny_preference_dataset(4))
    reference = trainer.ref_model
    assert type(reference).__name__ == "UNet2DConditionModel" and not reference.training
    assert all(not p.requires_grad and p.device == trainer.accelerator.device for p in reference.parameters())
    assert any(model is reference for model in trainer.accelerator._models)


@pytest.mark.parametrize("backend", ["deepspeed", "fsdp"])
def test_sharded_backends_prepare_the_reference_like_trl(backend, monkeypatch):
    """DeepSpeed and FSDP need CUDA (transformers falls back to DDP on CPU), so only the dispatch is tested here:
    the reference goes to TRL's prepare_deepspeed / prepare_fsdp, as TRL's own trainers do."""
    import trl.models.utils

    from trl_dde.reference import prepare_reference

    calls = []
    monkeypatch.setattr(trl.models.utils, f"prepare_{backend}", lambda model, accelerator: calls.append(model) or "prepared")

    class State:
        deepspeed_plugin = object() if backend == "deepspeed" else None
        fsdp_plugin = object() if backend == "fsdp" else None

    class Accelerator:
        state = State()

    reference = torch.nn.Linear(2, 2)
    assert prepare_reference(reference, Accelerator()) == "prepared" and calls == [reference]
