"""Train several credit strategies on equal terms (same config, data, seed, steps) and tabulate them.

    python examples/compare_credit_strategies.py --config examples/sd15_lora.yaml \
        --strategies uniform discounted dde-single dde-step dde --output_dir runs/compare

Every strategy gets the same YAML config; only `--credit` (and the output folder) changes. With an
`eval_split` in the config the table shows held-out metrics (evaluation noise and timesteps are seeded,
so all strategies are scored on the same draws); otherwise the last logged training metrics.
Extra arguments after `--` go to every run, e.g. `-- --max_steps 500`.
"""

import argparse
import json
import os

from trl_dde.cli import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config of `trl-dde train`")
    parser.add_argument("--strategies", nargs="+", default=["uniform", "discounted", "dde-single", "dde-step", "dde"])
    parser.add_argument("--output_dir", required=True)
    options, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    results = {}
    for credit in options.strategies:
        trainer = train(["--config", options.config, "--credit", credit,
                         "--output_dir", os.path.join(options.output_dir, credit), *extra])
        metrics = trainer.evaluate() if trainer.eval_dataset is not None else next(
            e for e in reversed(trainer.state.log_history) if "loss" in e and "implicit_acc" in e)
        results[credit] = {k.removeprefix("eval_"): v for k, v in metrics.items()
                           if k.removeprefix("eval_") in ("loss", "implicit_acc", "margin", "beta_margin")}
    print(f"\n{'strategy':<12} {'loss':>9} {'implicit_acc':>13} {'beta_margin':>12}")
    for credit, r in results.items():
        print(f"{credit:<12} {r['loss']:>9.4f} {r['implicit_acc']:>13.3f} {r['beta_margin']:>12.4f}")
    with open(os.path.join(options.output_dir, "comparison.json"), "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
