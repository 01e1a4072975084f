"""Draw docs/img/credit_schedules.png: how each strategy spreads credit over τ on the SD1.5 schedule.

    python docs/plot_credit_schedules.py      # needs matplotlib (not a trl-dde dependency)
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

from trl_dde import get_credit  # noqa: E402
from trl_dde.processes.ddpm import posterior_mean_error_coefficient  # noqa: E402

schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
tau = torch.arange(len(schedule))
figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))

for name, kwargs in [("uniform", {}), ("discounted", {"gamma": 0.9, "num_steps": 50}),
                     ("uniform", {"timestep_range": [200, 700]})]:
    probabilities = get_credit(name, alphas_cumprod=schedule, **kwargs).sampling_probabilities()
    label = name + (f" {kwargs}" if kwargs else "")
    left.plot(tau, probabilities, label=label)
left.set(title="Sampling distribution p(τ)", xlabel="τ (diffusers index; 999 = pure noise)", ylabel="probability")
left.legend(fontsize=8)

abar = schedule.double()
middle.semilogy(tau, (1 - abar) / abar, label="dde-single: z / z_uniform = (1-ā)/ā")
middle.axhline(1.0, color="grey", lw=0.8)
middle.set(title="Single-shot margin scale (Eq. 10, ā0 = 1)", xlabel="τ", ylabel="scale (log)")
middle.legend(fontsize=8)

coefficient = posterior_mean_error_coefficient(abar)
right.semilogy(tau, 0.5 * coefficient, label="½·b²/(a(1-ā)) per unit of mean ε-error ('mean')")
right.semilogy(tau, 0.5 * coefficient * 4 * 64 * 64, label="same, summed over a 4×64×64 SD1.5 latent ('sum')")
right.set(title="Stepwise ratio R[τ] per unit squared ε-error", xlabel="τ", ylabel="R[τ] (log)")
right.legend(fontsize=8)

figure.tight_layout()
output = Path(__file__).parent / "img" / "credit_schedules.png"
figure.savefig(output, dpi=110)
print(f"wrote {output}")
