"""Before/after of the LoRA-reference switch, side by side in one process.

    python benchmarks/lora_reference_switch.py --sizes tiny,small --rounds 3

*Before*: each step walks every module of the denoiser to disable the adapters and again to re-enable them
(``model.disable_adapters()`` / ``enable_adapters()``). *After*: ``AdapterSwitch``, the adapter layers found
once at set-up. Runs of the two alternate (before, after, before, ...) on the same LoRA, data and seed;
prints the median step time of each and their ratio, and the median cost of one switch (off and on again).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

from run import SIZES, Group, StepTimer, build_trainer

from trl_dde.families import unwrap_model
from trl_dde.tiny import tiny_preference_dataset


class WholeModelWalk:
    """The former LoRA reference: diffusers' ``disable_adapters()`` walks all modules on every call."""

    def __init__(self, model):
        self.model = unwrap_model(model)

    @contextlib.contextmanager
    def disabled(self):
        self.model.disable_adapters()
        try:
            yield
        finally:
            self.model.enable_adapters()


def switch_time(switch, repeats: int = 50) -> float:
    """Median seconds to switch the adapters off and on again."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with switch.disabled():
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    options = parser.parse_args()
    for size in options.sizes.split(","):
        group = Group(size, SIZES[size][1], "lora", True, ["dde"], 2, options.steps, 2, False, "adamw_torch", 1)
        work = tempfile.mkdtemp()
        tiny_preference_dataset(group.batch_size * (group.steps + group.warmup), image_size=group.resolution,
                                seed=0).save_to_disk(f"{work}/data")
        times = {"before": [], "after": []}
        for _ in range(options.rounds):
            for variant in times:
                timer = StepTimer()
                trainer = build_trainer(group, "dde", f"{work}/data", f"{work}/cache", timer)
                if variant == "before":
                    trainer.reference_adapters = WholeModelWalk(trainer.model)
                trainer.train()
                times[variant] += timer.times[group.warmup:]
        before, after = statistics.median(times["before"]), statistics.median(times["after"])
        switch_before, switch_after = switch_time(WholeModelWalk(trainer.model)), switch_time(trainer.reference_adapters)
        print(f"{size} ({group.resolution} px, LoRA, cached latents, batch {group.batch_size}): before {before * 1000:.1f} ms, "
              f"after {after * 1000:.1f} ms, before/after {before / after:.3f} ({len(times['before'])} steps each); "
              f"one switch: before {switch_before * 1000:.2f} ms, after {switch_after * 1000:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
