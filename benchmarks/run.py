"""Training-step benchmark: step time, pairs/s, peak memory and the floor ratio across configurations.

    python benchmarks/run.py --sizes tiny,small [--resolution 128] [--tunings lora,full]
        [--strategies uniform,dde] [--precompute on,off] [--precompute_ref off,on] [--out DIR]

Each group (size × tuning × precomputed latents on/off × precomputed reference on/off) runs in its own subprocess, so its peak memory
(host RSS; CUDA max allocated on a GPU) is its own. Inside a group, every strategy trains the same model
on the same synthetic pairs with the same seed, and the *floor* — the work a DPO step cannot avoid: the
policy forward + backward and the reference forward on the 2B latents of one batch (no reference forward
with ``precompute_ref``, whose inference-only pass is timed on its own), nothing else — is
timed in the same process, so ``step/floor`` and the dde/uniform ratio are side-by-side figures that
machine noise hits alike. Step times are medians after the warm-up steps. Random weights: only the cost
is meaningful. Writes ``benchmarks.md`` and ``benchmarks.json`` to ``--out`` and prints the table.

Sizes: ``tiny`` (the test pipeline), ``small`` (SD1.5's layout at reduced width), ``sd15`` (the real
SD1.5 UNet, VAE and CLIP ViT-L/14 text-encoder configurations) and ``sdxl`` (SDXL base 1.0's UNet, VAE and
both text encoders, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 with projection); random weights, written here — no
download; the text encoders' vocabulary is the byte-level test tokenizer's, which changes no compute.
``--bf16`` holds the frozen weights in bf16 (the trainer's ``bf16``; LoRA adapters stay fp32).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # time this checkout's trl_dde, not an installed copy
import trl_dde  # noqa: F401  first: its import filters third-party log noise
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, TrainerCallback

#: Axes of the issue this script does not sweep, and why (printed with every report).
NOT_SWEPT = {
    "bf16 / fp16 mixed precision": "not swept; --bf16 runs every group with bf16 frozen weights (for memory figures): "
                                   "CPU bf16 kernels say nothing about GPU time",
    "torch.compile": "no GPU was lent; on this 2-core CPU a compile costs minutes per configuration",
    "attention backend (SDPA vs others)": "diffusers uses SDPA by default; the CPU has no flash/memory-efficient kernels to compare",
    "channels-last": "a GPU tensor-core layout; not measured without a GPU",
    "8-bit AdamW / Adafactor": "pass --optim adamw_bnb_8bit or --optim adafactor to time them; the memory section uses 8-bit AdamW",
}


def _clip_config(tokenizer, hidden: int, layers: int, heads: int, intermediate: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, hidden_size=hidden, intermediate_size=intermediate,
                          num_attention_heads=heads, num_hidden_layers=layers, vocab_size=len(tokenizer),
                          max_position_embeddings=77, **extra)


def _sd15_text_encoder(tokenizer, hidden: int, layers: int, heads: int, intermediate: int) -> CLIPTextModel:
    return CLIPTextModel(_clip_config(tokenizer, hidden, layers, heads, intermediate))


def _pipeline(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer) -> StableDiffusionPipeline:
    from trl_dde.tiny import _scheduler

    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=_scheduler("epsilon"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def small_pipeline() -> StableDiffusionPipeline:
    """SD1.5's layout at reduced width: 4-level UNet (64–256) with 3 cross-attention levels, 4-level VAE (×8), 6-layer CLIP."""
    from trl_dde.tiny import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(block_out_channels=(64, 128, 256, 256), layers_per_block=2, sample_size=16,
                                cross_attention_dim=384, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=[64, 128, 256, 256], layers_per_block=2, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    return _pipeline(unet, vae, _sd15_text_encoder(tokenizer, 384, 6, 6, 1536), tokenizer)


def sd15_pipeline() -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's architecture with random weights: the UNet (860M parameters, 320–1280 channels,
    8 heads, 768-wide cross-attention), the VAE (128–512 channels, ×8) and CLIP ViT-L/14's text encoder."""
    from trl_dde.tiny import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    return _pipeline(unet, _sd_vae(512), _sd15_text_encoder(tokenizer, 768, 12, 12, 3072), tokenizer)


def _sd_vae(sample_size: int, **extra) -> AutoencoderKL:
    """The SD1.5/SDXL VAE layout: 128–512 channels, ×8 down-sampling, 4 latent channels."""
    return AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                         sample_size=sample_size, down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, **extra)


def sdxl_unet() -> UNet2DConditionModel:
    """SDXL base 1.0's UNet (2.567B parameters): three levels (320, 640, 1280) with 1, 2 and 10 transformer
    layers per block, 64-channel heads, 2048-wide cross-attention (both encoders' hidden states) and the
    ``text_time`` added conditioning (1280 pooled + 6 × 256 micro-conditioning = 2816 inputs)."""
    return UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32)


def sdxl_pipeline() -> StableDiffusionXLPipeline:
    """Stable Diffusion XL base 1.0's architecture with random weights: the UNet (:func:`sdxl_unet`), the VAE
    (SD's layout, scaling factor 0.13025) and both text encoders — CLIP ViT-L/14 (768 wide, 12 layers) and
    OpenCLIP ViT-bigG/14 (1280 wide, 32 layers, GELU, 1280-wide projection of the pooled output)."""
    from trl_dde.tiny import _scheduler, tiny_tokenizer

    torch.manual_seed(0)
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    return StableDiffusionXLPipeline(
        vae=_sd_vae(1024, scaling_factor=0.13025, force_upcast=True), unet=sdxl_unet(),
        text_encoder=CLIPTextModel(_clip_config(tokenizer, 768, 12, 12, 3072, projection_dim=768)),
        text_encoder_2=CLIPTextModelWithProjection(
            _clip_config(tokenizer_2, 1280, 32, 20, 5120, projection_dim=1280, hidden_act="gelu")),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=_scheduler("epsilon"), add_watermarker=False)


def _tiny():
    from trl_dde.tiny import tiny_sd15_pipeline

    return tiny_sd15_pipeline()


#: size → (pipeline builder, default resolution on this CPU)
SIZES = {"tiny": (_tiny, 32), "small": (small_pipeline, 128), "sd15": (sd15_pipeline, 256), "sdxl": (sdxl_pipeline, 256)}


@dataclass
class Group:
    """One subprocess: a model size, tuning, data path and the strategies timed side by side."""

    size: str
    resolution: int
    tuning: str  # "lora" or "full"
    precompute: bool
    strategies: list[str]
    batch_size: int
    steps: int
    warmup: int
    gradient_checkpointing: bool
    optim: str
    rounds: int
    precompute_ref: bool = False
    bf16: bool = False


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (synchronised on CUDA so the time is the device's)."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        _synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _synchronize()
        self.times.append(time.perf_counter() - self._start)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_trainer(group: Group, strategy: str, data_folder: str, cache_dir: str, timer: StepTimer | None = None):
    """A DDEDiffusionTrainer for the group's configuration (LoRA r=8 on the attention projections, or full)."""
    from datasets import load_from_disk
    from peft import LoraConfig

    from trl_dde import DDEConfig, DDEDiffusionTrainer

    args = DDEConfig(output_dir=tempfile.mkdtemp(), max_steps=group.warmup + group.steps,
                     per_device_train_batch_size=group.batch_size, save_strategy="no", report_to="none",
                     disable_tqdm=True, logging_steps=group.warmup + group.steps, credit=strategy,
                     resolution=group.resolution, precompute_latents=group.precompute, precompute_cache_dir=cache_dir,
                     gradient_checkpointing=group.gradient_checkpointing, optim=group.optim,
                     precompute_ref=group.precompute_ref, precompute_ref_cache_dir=f"{cache_dir}-reference",
                     bf16=group.bf16, use_cpu=not torch.cuda.is_available(), seed=0)
    lora = LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    return DDEDiffusionTrainer(SIZES[group.size][0](), args=args, train_dataset=load_from_disk(data_folder),
                               peft_config=lora if group.tuning == "lora" else None,
                               callbacks=[timer] if timer is not None else None)


def floor_times(trainer, repeats: int) -> list[float]:
    """Time the bare DPO work on one batch: policy forward + backward and, unless the reference's terms are
    precomputed, the reference forward on the 2B latents."""
    model, family, process = trainer.model_wrapped, trainer.family, trainer.process
    model.train()
    batch = trainer.batches(trainer._prepare_inputs(next(iter(trainer.get_train_dataloader()))), None)
    x0 = torch.cat([batch.x0_w, batch.x0_l])
    timesteps = torch.randint(0, process.num_timesteps, (batch.size,), device=x0.device).repeat(2)
    x_t = process.add_noise(x0, torch.randn_like(x0), timesteps)
    model_time = process.model_timesteps(timesteps)
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        with trainer.compute_loss_context_manager():
            trainer.accelerator.backward(family.predict(model, x_t, model_time, batch.conditioning).square().mean())
            if not trainer.args.precompute_ref:  # a cached reference's terms are read, not computed
                trainer._reference_predict(model, x_t, model_time, batch.conditioning)  # the step's reference forward
        _synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return times


def peak_memory_mib() -> dict:
    """Peak RSS (MiB; since the reset after set-up) and, on a GPU, the CUDA max allocated."""
    memory = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        memory["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return memory


def current_rss_mib() -> float:
    """The process's resident set size now (Linux ``/proc``), to split the peak into set-up and step."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Restart the process's RSS high-water mark (Linux ``clear_refs``), so the step's peak is not set-up's: a
    model built in fp32 and cast to bf16 peaks while it is built."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_since_reset_mib() -> float:
    """The RSS high-water mark (``VmHWM``) since :func:`reset_peak_rss`, in MiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _mib(tensors) -> float:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors) / 2**20


def memory_breakdown(trainer, baseline_mib: float, built_mib: float) -> dict:
    """Where the first strategy's peak host memory went: weights (every pipeline module still held, plus the
    reference copy), gradients (trainable parameters' size) and optimizer state (its real tensors) computed
    from the tensors; baseline (interpreter + libraries), after set-up and peak RSS since set-up measured; the step's
    activations and temporaries are the rest: peak − after set-up − gradients − optimizer state."""
    modules = [m for m in trainer.family.pipeline.components.values() if isinstance(m, torch.nn.Module)]
    if trainer.ref_model is not None:
        modules.append(trainer.ref_model)
    parameters = {id(p): p for module in modules for p in module.parameters()}
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    state = [v for entry in trainer.optimizer.state.values() for v in entry.values() if torch.is_tensor(v)]
    breakdown = {"weights_mib": _mib(parameters.values()), "gradients_mib": _mib(trainable),
                 "optimizer_state_mib": _mib(state), "trainable_parameters": sum(p.numel() for p in trainable),
                 "baseline_rss_mib": baseline_mib, "after_setup_rss_mib": built_mib, "peak_rss_mib": rss_since_reset_mib()}
    breakdown["activations_and_temporaries_mib"] = (breakdown["peak_rss_mib"] - built_mib - breakdown["gradients_mib"]
                                                    - breakdown["optimizer_state_mib"])
    return breakdown


def run_group(group: Group) -> dict:
    """Each round, train each strategy for warm-up + steps steps, then time the floor as many times; all in this process.
    The memory breakdown is the first strategy's (later ones reuse memory the first freed)."""
    from trl_dde.tiny import tiny_preference_dataset

    work = tempfile.mkdtemp(prefix="trl-dde-bench-")
    pairs = group.batch_size * (group.warmup + group.steps)
    tiny_preference_dataset(pairs, image_size=group.resolution, seed=0).save_to_disk(f"{work}/data")
    result, times, floor = {"group": asdict(group), "strategies": {}}, {strategy: [] for strategy in group.strategies}, []
    for _ in range(group.rounds):  # strategies and floor alternate, so load on a shared machine hits them alike
        for strategy in group.strategies:
            timer = StepTimer()
            baseline = current_rss_mib()
            trainer = build_trainer(group, strategy, f"{work}/data", f"{work}/cache", timer)
            built = current_rss_mib()
            reset_peak_rss()
            if group.precompute_ref and strategy not in result.setdefault("reference_pass_s", {}):
                start = time.perf_counter()  # train() would run it first; timed here on its own (first round)
                trainer.reference_cache = trainer._precompute_reference()
                result["reference_pass_s"][strategy] = time.perf_counter() - start
                result["reference_pass_pairs"] = len(trainer.train_dataset) * trainer.reference_cache.num_epochs
            trainer.train()
            if "memory" not in result:
                result["memory"] = memory_breakdown(trainer, baseline, built)
            times[strategy] += timer.times[group.warmup:]
            if strategy == group.strategies[-1]:
                floor += floor_times(trainer, group.warmup + group.steps)[group.warmup:]
            del trainer
            gc.collect()
    for strategy, step_times in times.items():
        step = statistics.median(step_times)
        result["strategies"][strategy] = {"median_step_s": step, "pairs_per_s": group.batch_size / step,
                                          "steps_timed": len(step_times)}
    result["floor_s"] = statistics.median(floor)
    for timing in result["strategies"].values():
        timing["step_over_floor"] = timing["median_step_s"] / result["floor_s"]
    if {"uniform", "dde"} <= set(result["strategies"]):
        result["dde_over_uniform"] = result["strategies"]["dde"]["median_step_s"] / result["strategies"]["uniform"]["median_step_s"]
    result.update(peak_memory_mib())
    return result


def machine() -> dict:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    return {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "trl_dde": str(Path(trl_dde.__file__).parent)}


def markdown(report: dict) -> str:
    """The report as one Markdown table (one row per strategy), the machine and the axes not swept."""
    lines = [f"Machine: {report['machine']['device']}, torch {report['machine']['torch']}, {report['machine']['date']}.", "",
             "| size | px | tuning | latents | ckpt | optim | strategy | reference | median step | pairs/s | floor | step/floor | dde/uniform | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in report["results"]:
        group = result["group"]
        for strategy, timing in result["strategies"].items():
            ratio = f"{result['dde_over_uniform']:.3f}" if "dde_over_uniform" in result else "–"
            memory = f"{result['peak_rss_mib'] / 1024:.2f} GiB"
            if "cuda_max_allocated_mib" in result:
                memory += f" (CUDA {result['cuda_max_allocated_mib'] / 1024:.2f} GiB)"
            lines.append(f"| {group['size']} | {group['resolution']} | {_tuning(group)} | "
                         f"{'cached' if group['precompute'] else 'encoded'} | {'on' if group['gradient_checkpointing'] else 'off'} | "
                         f"{group['optim']} | {strategy} | {_reference(group)} | {timing['median_step_s'] * 1000:.1f} ms | {timing['pairs_per_s']:.2f} | "
                         f"{result['floor_s'] * 1000:.1f} ms | {timing['step_over_floor']:.3f} | {ratio} | {memory} |")
    lines += ["", "| size | px | tuning | latents | ckpt | optim | reference | weights | gradients | optimizer state | RSS: baseline | after set-up | peak | activations + temporaries |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in report["results"]:
        group, memory = result["group"], result["memory"]
        lines.append(f"| {group['size']} | {group['resolution']} | {_tuning(group)} | {'cached' if group['precompute'] else 'encoded'} | "
                     f"{'on' if group['gradient_checkpointing'] else 'off'} | {group['optim']} | {_reference(group)} | "
                     + " | ".join(f"{memory[key] / 1024:.2f} GiB" for key in (
                         "weights_mib", "gradients_mib", "optimizer_state_mib", "baseline_rss_mib", "after_setup_rss_mib",
                         "peak_rss_mib", "activations_and_temporaries_mib")) + " |")
    for result in report["results"]:
        for strategy, seconds in result.get("reference_pass_s", {}).items():
            group = result["group"]
            lines.append(f"\nReference pass ({group['size']}, {group['tuning']}, {strategy}): {seconds:.2f} s for "
                         f"{result['reference_pass_pairs']} pair-epochs.")
    first = report["results"][0]["group"]
    lines += ["", f"Batch {first['batch_size']} pairs; median over {first['rounds']} alternating rounds of "
              f"{first['steps']} steps after {first['warmup']} warm-up steps each. "
              "Floor: policy forward + backward and reference forward (none with a cached reference) on the 2B latents of "
              "one batch, timed in the same process.",
              "", "Not swept here:"]
    lines += [f"- {axis}: {why}" for axis, why in report["not_swept"].items()]
    return "\n".join(lines) + "\n"


def _tuning(group: dict) -> str:
    return f"{group['tuning']} bf16" if group.get("bf16") else group["tuning"]


def _reference(group: dict) -> str:
    return "cached" if group.get("precompute_ref") else "online"


def _csv(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,small", help=f"comma-separated, from {sorted(SIZES)}")
    parser.add_argument("--resolution", type=int, default=None, help="image size in px (default: per size, small for a CPU)")
    parser.add_argument("--tunings", default="lora,full", help="comma-separated: lora, full")
    parser.add_argument("--strategies", default="uniform,dde", help="credit strategies timed side by side")
    parser.add_argument("--precompute", default="on,off", help="precomputed latents: on, off or both")
    parser.add_argument("--precompute_ref", default="off", help="precomputed reference terms: on, off or both")
    parser.add_argument("--batch_size", type=int, default=2, help="pairs per step")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per strategy (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the strategies and the floor")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="frozen weights in bf16, bf16 autocast (LoRA stays fp32)")
    parser.add_argument("--optim", default="adamw_torch", help="any transformers optim, e.g. adamw_bnb_8bit, adafactor")
    parser.add_argument("--out", default="benchmark-results")
    parser.add_argument("--group", help=argparse.SUPPRESS)  # internal: run one group (JSON) and print its result
    options = parser.parse_args()
    if options.group:
        print(json.dumps(run_group(Group(**json.loads(options.group)))))
        return
    unknown = [size for size in _csv(options.sizes) if size not in SIZES]
    wrong = [p for p in _csv(options.precompute) + _csv(options.precompute_ref) if p not in ("on", "off")]
    wrong += [t for t in _csv(options.tunings) if t not in ("lora", "full")]
    if unknown or wrong:
        parser.error(f"unknown --sizes {unknown} (choose from {sorted(SIZES)}) or --tunings/--precompute values {wrong} "
                     "(tunings: lora, full; precompute, precompute_ref: on, off)")
    groups = [Group(size, options.resolution or SIZES[size][1], tuning, precompute == "on", _csv(options.strategies),
                    options.batch_size, options.steps, options.warmup, options.gradient_checkpointing, options.optim,
                    options.rounds, reference == "on", options.bf16)
              for size in _csv(options.sizes) for tuning in _csv(options.tunings) for precompute in _csv(options.precompute)
              for reference in _csv(options.precompute_ref)]
    results = []
    for number, group in enumerate(groups, 1):
        print(f"[{number}/{len(groups)}] {group.size} {group.resolution} px {group.tuning} "
              f"{'cached' if group.precompute else 'encoded'} latents, {_reference(asdict(group))} reference ...",
              file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--group", json.dumps(asdict(group))],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"benchmark group {asdict(group)} failed:\n{done.stderr[-4000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    report = {"machine": machine(), "results": results, "not_swept": NOT_SWEPT}
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out / "benchmarks.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
