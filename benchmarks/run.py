"""Training-step benchmark: step time, pairs/s, peak memory and the floor ratio, Markdown + JSON out.

    python benchmarks/run.py --sizes tiny,small --out bench-out

Every configuration (size x tuning x strategy x precomputed latents x gradient checkpointing x optimizer x
precision) trains the same synthetic pairs with the same seed; the first ``--warmup`` steps are dropped and
the median of the rest is reported. In the same process, with the same trainer and batch, the *floor* is
timed: the policy forward + backward and the reference forward on the 2B latents, nothing else, giving
``step / floor``. Peak memory is CUDA max allocated on a GPU, otherwise the process RSS high-water mark
(reset before each configuration through ``/proc/self/clear_refs``). Axes that cannot run on this device are
listed in the output with the reason. ``--memory`` adds the computed memory breakdown of full-size SD1.5 and
SDXL UNets (parameter counts from the real architecture configs, built on the meta device: no download).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import load_from_disk
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from transformers import CLIPTextConfig, CLIPTextModel, TrainerCallback

from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.tiny import _scheduler, tiny_preference_dataset, tiny_sd15_pipeline, tiny_tokenizer

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]

# The real UNet architecture configs (SD1.5 and SDXL base 1.0 unet/config.json), written out.
SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, sample_size=64,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
                 attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), sample_size=128,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, use_linear_projection=True)


def small_pipeline() -> StableDiffusionPipeline:
    """SD1.5's layout at reduced width: 4-level UNet with 3 cross-attention levels, 4-level VAE (x8), 6-layer CLIP."""
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id, hidden_size=384, intermediate_size=1536,
                                        num_attention_heads=6, num_hidden_layers=6, vocab_size=len(tokenizer),
                                        max_position_embeddings=77))
    unet = UNet2DConditionModel(block_out_channels=(64, 128, 256, 256), layers_per_block=2, sample_size=16,
                                cross_attention_dim=384, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=[64, 128, 256, 256], layers_per_block=2, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                                   scheduler=_scheduler("epsilon"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


SIZES = {"tiny": (tiny_sd15_pipeline, 32), "small": (small_pipeline, 128)}
NOT_RUN = {
    "8-bit AdamW": "bitsandbytes' 8-bit optimizers need a CUDA device (preflight refuses them on CPU)",
    "torch.compile": "not measured: inductor compilation of a UNet takes minutes per configuration on 2 CPU cores",
    "channels-last": "not measured on CPU: it targets GPU convolution kernels",
    "attention backend": "diffusers' default (torch SDPA) in every configuration; no alternative backend installed",
    "sd15 / sdxl trainer step": "not run on the 2-core CPU box (full VAE + text encoders); UNet memory computed with --memory",
}


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def reset_peak_memory() -> None:
    """Reset the peak-memory counter: CUDA's, or the process RSS high-water mark (Linux)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib() -> float:
    """CUDA max allocated, or the process RSS high-water mark, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def floor_time(trainer: DDEDiffusionTrainer, repeats: int) -> float:
    """Median time of the work a DPO step cannot avoid on one batch: policy forward + backward, reference forward."""
    model, family = trainer.model, trainer.family
    batch = trainer.batches(next(iter(trainer.get_train_dataloader())), None)
    latents = torch.cat([batch.x0_w, batch.x0_l])
    timesteps = torch.randint(0, 1000, (latents.shape[0],), device=latents.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with trainer.autocast_smart_context_manager():
            family.predict(model, latents, timesteps, batch.conditioning).square().mean().backward()
            with torch.no_grad():
                if trainer.ref_model is None:
                    with trainer._adapters_off():
                        family.predict(model, latents, timesteps, batch.conditioning)
                else:
                    family.predict(trainer.ref_model, latents, timesteps, batch.conditioning)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return statistics.median(times[1:] or times)


def run_config(config: dict, data: str, cache: str, steps: int, warmup: int, batch_size: int) -> dict:
    """Train one configuration, then time its floor on the same trainer; one result row."""
    make_pipeline, resolution = SIZES[config["size"]]
    args = DDEConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=batch_size,
                     save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=steps,
                     credit=config["credit"], resolution=resolution, precompute_latents=config["precompute"],
                     precompute_cache_dir=cache, gradient_checkpointing=config["checkpointing"],
                     optim=config["optim"], bf16=config["precision"] == "bf16",
                     use_cpu=not torch.cuda.is_available(), seed=0)
    lora = LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    timer = StepTimer()
    reset_peak_memory()
    trainer = DDEDiffusionTrainer(make_pipeline(), args=args, train_dataset=load_from_disk(data),
                                  peft_config=lora if config["tuning"] == "lora" else None, callbacks=[timer])
    trainer.train()
    step = statistics.median(timer.times[warmup:])
    floor = floor_time(trainer, repeats=max(3, steps - warmup))
    return {**config, "resolution": resolution, "batch_pairs": batch_size, "steps_timed": len(timer.times[warmup:]),
            "step_ms": step * 1000, "pairs_per_s": batch_size / step, "floor_ms": floor * 1000,
            "step_over_floor": step / floor, "peak_mib": peak_memory_mib()}


def unet_memory(name: str, config: dict, lora: bool, optimizer_bytes: float, dtype_bytes: int) -> dict:
    """Computed weights / reference / gradients / optimizer-state GiB of a full-size UNet (built on the meta device)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        total = sum(p.numel() for p in unet.parameters())
        if lora:
            from peft import inject_adapter_in_model

            unet = inject_adapter_in_model(LoraConfig(r=8, target_modules=LORA_TARGETS), unet)
            trainable = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
        else:
            trainable = total
    gib = 2**30
    return {"model": name, "tuning": "lora" if lora else "full", "parameters": total, "trainable": trainable,
            "weights_gib": (dtype_bytes * total + (4 * trainable if lora else 0)) / gib,
            "reference_gib": 0.0 if lora else dtype_bytes * total / gib,
            "gradients_gib": 4 * trainable / gib, "optimizer_gib": optimizer_bytes * trainable / gib}


def dde_uniform_ratios(rows: list[dict]) -> dict[str, float]:
    """Step-time ratio dde / uniform for every configuration measured with both strategies."""
    keyed = {}
    for r in rows:
        key = "/".join(str(r[k]) for k in ("size", "tuning", "precompute", "checkpointing", "optim", "precision"))
        keyed.setdefault(key, {})[r["credit"]] = r["step_ms"]
    return {key: v["dde"] / v["uniform"] for key, v in keyed.items() if {"dde", "uniform"} <= v.keys()}


def markdown(rows: list[dict], memory: list[dict], header: str) -> str:
    """The result tables: per configuration, dde/uniform ratios, computed memory, and what was not run."""
    lines = [header, "", "| size | tuning | credit | precompute | ckpt | optim | precision | step ms | pairs/s | "
             "floor ms | step/floor | peak MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['tuning']} | {r['credit']} | {r['precompute']} | {r['checkpointing']} | {r['optim']} | "
              f"{r['precision']} | {r['step_ms']:.1f} | {r['pairs_per_s']:.2f} | {r['floor_ms']:.1f} | "
              f"{r['step_over_floor']:.3f} | {r['peak_mib']:.0f} |" for r in rows]
    ratios = dde_uniform_ratios(rows)
    if ratios:
        lines += ["", "| size/tuning/precompute/ckpt/optim/precision | dde / uniform step |", "|---|---|"]
        lines += [f"| {key} | {value:.3f} |" for key, value in ratios.items()]
    if memory:
        lines += ["", "| model | tuning | parameters | trainable | weights GiB | reference GiB | grads GiB | optimizer GiB |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {m['model']} | {m['tuning']} | {m['parameters']:,} | {m['trainable']:,} | {m['weights_gib']:.2f} | "
                  f"{m['reference_gib']:.2f} | {m['gradients_gib']:.2f} | {m['optimizer_gib']:.2f} |" for m in memory]
    lines += ["", "Not run:", ""] + [f"- {axis}: {why}" for axis, why in NOT_RUN.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,small", help=f"comma list of {sorted(SIZES)}")
    parser.add_argument("--tuning", default="lora,full", help="comma list of lora,full")
    parser.add_argument("--credits", default="dde,uniform", help="comma list of credit strategies")
    parser.add_argument("--precompute", default="on,off", help="precomputed latents: comma list of on,off")
    parser.add_argument("--checkpointing", default="off,on", help="gradient checkpointing: comma list of on,off")
    parser.add_argument("--optims", default="adamw_torch", help="e.g. adamw_torch,adafactor (8-bit needs CUDA)")
    parser.add_argument("--precisions", default="fp32", help="comma list of fp32,bf16")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--memory", action="store_true", help="add the computed SD1.5/SDXL UNet memory breakdown")
    parser.add_argument("--out", default="benchmark-results")
    options = parser.parse_args(argv)
    sizes = options.sizes.split(",")
    if unknown := set(sizes) - SIZES.keys():
        parser.error(f"--sizes {sorted(unknown)} unknown; choose from {sorted(SIZES)}")
    if options.steps <= options.warmup:
        parser.error(f"--steps ({options.steps}) must exceed --warmup ({options.warmup})")
    switches = {"on": True, "off": False}
    for name in ("precompute", "checkpointing"):
        if bad := set(getattr(options, name).split(",")) - switches.keys():
            parser.error(f"--{name} {sorted(bad)}: use on and/or off")
    names = ("size", "tuning", "credit", "precompute", "checkpointing", "optim", "precision")
    axes = [sizes, options.tuning.split(","), options.credits.split(","),
            [switches[v] for v in options.precompute.split(",")], [switches[v] for v in options.checkpointing.split(",")],
            options.optims.split(","), options.precisions.split(",")]
    work = tempfile.mkdtemp()
    for size in sizes:
        tiny_preference_dataset(options.pairs, image_size=SIZES[size][1], seed=0).save_to_disk(f"{work}/{size}")
    combos = list(itertools.product(*axes))
    rows = []
    for i, combo in enumerate(combos):
        config = dict(zip(names, combo))
        print(f"[{i + 1}/{len(combos)}] {config}", flush=True)
        rows.append(run_config(config, f"{work}/{config['size']}", f"{work}/cache-{config['size']}",
                               options.steps, options.warmup, options.batch_size))
    memory = []
    if options.memory:  # SD1.5 full with 8-bit AdamW (2 B/param); SDXL LoRA on bf16 frozen weights with fp32 AdamW
        memory = [unet_memory("sd15", SD15_UNET, lora=False, optimizer_bytes=2, dtype_bytes=4),
                  unet_memory("sdxl", SDXL_UNET, lora=True, optimizer_bytes=8, dtype_bytes=2)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    header = f"device={device} torch={torch.__version__} date={time.strftime('%Y-%m-%d', time.gmtime())}"
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": device, "torch": torch.__version__, "results": rows,
              "dde_over_uniform": dde_uniform_ratios(rows), "memory": memory, "not_run": NOT_RUN}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    table = markdown(rows, memory, header)
    (out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
