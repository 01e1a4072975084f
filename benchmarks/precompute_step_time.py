"""Step time with and without precomputed latents, measured side by side in one process.

    python benchmarks/precompute_step_time.py --preset sd15-small --steps 12 --rounds 2

Both modes train the same LoRA on the same synthetic pairs with the same seed. Runs alternate
(on the fly, cached, on the fly, cached, ...) so machine noise hits both; the first steps of each run
are dropped as warm-up and the median step time of each mode is reported, with their ratio, the
one-off encoding pass, and peak accelerator memory (CUDA only; process peak RSS otherwise).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import tempfile
import time

import torch
from datasets import load_from_disk
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from transformers import CLIPTextConfig, CLIPTextModel, TrainerCallback

from trl_dde import DDEConfig, DDEDiffusionTrainer
from trl_dde.tiny import _scheduler, tiny_preference_dataset, tiny_sd15_pipeline, tiny_tokenizer


def sd15_small_pipeline() -> StableDiffusionPipeline:
    """SD1.5's layout at reduced width: 4-level UNet with 3 cross-attention levels, 4-level VAE (×8), 6-layer CLIP."""
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


PRESETS = {"tiny": (tiny_sd15_pipeline, 32), "sd15-small": (sd15_small_pipeline, 128)}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def run(preset: str, data_folder: str, cache_dir: str, precompute: bool, steps: int, batch_size: int) -> tuple[list[float], float, float]:
    make_pipeline, resolution = PRESETS[preset]
    args = DDEConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=batch_size,
                     save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=steps, credit="dde",
                     resolution=resolution, precompute_latents=precompute, precompute_cache_dir=cache_dir,
                     use_cpu=not torch.cuda.is_available(), seed=0)
    lora = LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = DDEDiffusionTrainer(make_pipeline(), args=args, train_dataset=load_from_disk(data_folder),
                                  peft_config=lora, callbacks=[timer])
    setup = time.perf_counter() - start
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    return timer.times[2:], setup, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="sd15-small")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    _, resolution = PRESETS[options.preset]
    work = tempfile.mkdtemp()
    tiny_preference_dataset(options.pairs, image_size=resolution, seed=0).save_to_disk(f"{work}/data")
    times = {False: [], True: []}
    setups, peaks = {False: [], True: []}, {False: [], True: []}
    for _ in range(options.rounds):
        for precompute in (False, True):
            step_times, setup, peak = run(options.preset, f"{work}/data", f"{work}/cache", precompute, options.steps, options.batch_size)
            times[precompute] += step_times
            setups[precompute].append(setup)
            peaks[precompute].append(peak)
    fly, cached = statistics.median(times[False]), statistics.median(times[True])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"preset={options.preset} resolution={resolution} pairs={options.pairs} batch={options.batch_size} "
          f"steps/run={options.steps} rounds={options.rounds} device={device} torch={torch.__version__}")
    print(f"median step, on the fly : {fly * 1000:8.1f} ms   ({len(times[False])} steps)")
    print(f"median step, precomputed: {cached * 1000:8.1f} ms   ({len(times[True])} steps)")
    print(f"speed-up (on the fly / precomputed): {fly / cached:.2f}x")
    print(f"trainer construction: on the fly {setups[False][0]:.1f} s; precomputed first run (encodes) "
          f"{setups[True][0]:.1f} s, later runs (cache hit) {statistics.median(setups[True][1:] or setups[True]):.1f} s")
    if torch.cuda.is_available():
        print(f"peak CUDA memory: on the fly {max(peaks[False]):.0f} MiB, precomputed {max(peaks[True]):.0f} MiB")
    else:
        print(f"process peak RSS (both modes): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
