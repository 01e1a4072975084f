"""Draw the pictures of docs/evaluation.md from tiny random models (no download, a few minutes on a CPU).

    OMP_NUM_THREADS=1 python docs/make_evaluation_images.py

1. trains tiny SD1.5-architecture LoRAs (random weights, synthetic preference pairs) with every built-in
   strategy wrapped in a GradientProbe, the dde run saving its credit state every 5 steps;
2. draws `trl-dde eval --diagnostics` for the dde run and the measured weights of all strategies;
3. generates paired images of the base and the dde adapter and writes their side-by-side grid.

Everything shown is made by tiny random models: the images are noise, the numbers show the machinery.
"""

import shutil
import tempfile
from pathlib import Path

from peft import LoraConfig

from trl_dde import DDEConfig, DDEDiffusionTrainer, get_credit
from trl_dde.evaluation.diagnostics import GradientProbe, load_alphas_cumprod, plot_credit_weights, run_diagnostics
from trl_dde.evaluation.generation import GenerationSettings, ModelSpec, generate_paired
from trl_dde.evaluation.scoring import comparison_grid
from trl_dde.tiny import tiny_preference_dataset, tiny_sd15_pipeline

images = Path(__file__).parent / "img"
work = Path(tempfile.mkdtemp(prefix="trl-dde-docs-"))
base = work / "base"
tiny_sd15_pipeline(seed=0).save_pretrained(base)
pairs = tiny_preference_dataset(num_pairs=64, seed=0)
alphas_cumprod, _ = load_alphas_cumprod()
measured = {}
for strategy in ("uniform", "discounted", "dde-single", "dde-step", "dde"):
    probe = GradientProbe(get_credit(strategy, alphas_cumprod=alphas_cumprod))
    args = DDEConfig(output_dir=str(work / strategy), max_steps=40, per_device_train_batch_size=8, learning_rate=1e-3,
                     lr_scheduler_type="constant", logging_steps=5, save_strategy="steps", save_steps=5,
                     report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
    lora = LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    trainer = DDEDiffusionTrainer(str(base), args=args, train_dataset=pairs, peft_config=lora, credit=probe)
    trainer.train()
    trainer.save_model()
    measured[strategy] = probe.measured_weights(num_bins=20)

label = "the SD1.5 schedule; measured: tiny random SD1.5-architecture LoRAs, 40 steps × 8 synthetic pairs each"
plot_credit_weights(alphas_cumprod, images / "eval_credit_weights.png", measured=measured, schedule_label=label)
written = run_diagnostics(work / "dde", output_dir=work / "diagnostics")
shutil.copy(written["correction_terms"], images / "eval_correction_terms.png")
shutil.copy(written["single_shot_coefficient"], images / "eval_single_shot_coefficient.png")

paired = generate_paired(str(base), [ModelSpec("dde (tiny)", adapter=str(work / "dde"))],
                         ["a red square", "a blue disc", "a green stripe"], work / "eval",
                         GenerationSettings(num_images_per_prompt=2, num_inference_steps=20), device="cpu")
comparison_grid(paired, rows=6, cell_size=96).save(images / "eval_grid.png")
print(f"wrote {sorted(p.name for p in images.glob('eval_*.png'))} (work folder {work})")
