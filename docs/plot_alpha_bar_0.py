"""Draw docs/img/alpha_bar_0.png and print the table of docs/credit_strategies.md: how much dde-single's margin
changes between `alpha_bar_0="one"` and `"scheduler"` on the SD1.5 schedule.

    python docs/plot_alpha_bar_0.py      # needs matplotlib (not a trl-dde dependency)

Setup (synthetic, seeded): clean latents and noise ~ N(0, 1); every prediction of the policy and the reference,
winner and loser, is the true noise plus independent N(0, s²) errors, s = the prediction error size. For each τ
the figure is the median over pairs of |z_scheduler - z_one| / |z_one|. tests/test_docs.py checks that the
table in the docs is what `table()` prints.
"""

from pathlib import Path

import torch
from diffusers import DDPMScheduler

from trl_dde import DenoisingOutputs, get_credit

SCHEDULE = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
ERROR_SIZES = (0.05, 0.1, 0.3)
TABLE_TIMESTEPS = (0, 100, 354, 500, 900, 999)


def relative_changes(timesteps, error_size: float, pairs: int = 2048, seed: int = 0) -> torch.Tensor:
    """Median |z_scheduler - z_one| / |z_one| of dde-single at each τ in ``timesteps``."""
    one = get_credit("dde-single", alphas_cumprod=SCHEDULE, alpha_bar_0="one")
    scheduler = get_credit("dde-single", alphas_cumprod=SCHEDULE, alpha_bar_0="scheduler")
    generator = torch.Generator().manual_seed(seed)
    medians = []
    for tau in timesteps:
        shape = (pairs, 4, 8, 8)
        x0_w, x0_l, noise = (torch.randn(shape, generator=generator) for _ in range(3))
        t = torch.full((pairs,), int(tau))
        abar = SCHEDULE[int(tau)]
        xt_w, xt_l = (abar.sqrt() * x0 + (1 - abar).sqrt() * noise for x0 in (x0_w, x0_l))
        predictions = [noise + error_size * torch.randn(shape, generator=generator) for _ in range(4)]
        outputs = DenoisingOutputs(x0_w, x0_l, noise, t, xt_w, xt_l, *predictions)
        z_one, z_scheduler = one.margin(outputs), scheduler.margin(outputs)
        medians.append(((z_scheduler - z_one).abs() / z_one.abs()).median())
    return torch.stack(medians)


def table() -> str:
    """The Markdown table of docs/credit_strategies.md."""
    rows = ["| prediction error size | " + " | ".join(f"τ = {t}" for t in TABLE_TIMESTEPS) + " |",
            "|---|" + "---|" * len(TABLE_TIMESTEPS)]
    for size in ERROR_SIZES:
        changes = relative_changes(TABLE_TIMESTEPS, size)
        rows.append(f"| {size} | " + " | ".join(f"{100 * c:.0f}%" for c in changes.tolist()) + " |")
    return "\n".join(rows)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timesteps = torch.arange(0, 1000, 5)
    figure, axis = plt.subplots(figsize=(7, 4))
    for size in ERROR_SIZES:
        axis.semilogy(timesteps, 100 * relative_changes(timesteps, size, pairs=512), label=f"prediction error size {size}")
    axis.axhline(100, color="grey", lw=0.8)
    axis.set(title='dde-single: alpha_bar_0="scheduler" vs "one" (SD1.5 schedule)',
             xlabel="τ (diffusers index; 999 = pure noise)", ylabel="median |Δz| / |z_one|  (%)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    output = Path(__file__).parent / "img" / "alpha_bar_0.png"
    figure.savefig(output, dpi=110)
    print(table())
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
