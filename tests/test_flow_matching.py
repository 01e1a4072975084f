"""Flow matching: the process's identities, SD3's time sampling as exact masses, and every credit strategy's
flow-matching form checked against an independent computation."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from trl_dde import DDEConfig
from trl_dde.credit import DenoisingOutputs, get_credit
from trl_dde.processes import DDPMProcess, FlowMatchingProcess
from trl_dde.processes.flow_matching import time_sampling_masses


def process(**options) -> FlowMatchingProcess:
    return FlowMatchingProcess.from_scheduler_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config, **options)


def outputs(proc, batch=6, seed=0, timesteps=None):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 4, 3, 3)
    x0_w, x0_l, noise = (torch.randn(shape, generator=g) for _ in range(3))
    t = timesteps if timesteps is not None else torch.randint(0, proc.num_timesteps, (batch,), generator=g)
    xt_w, xt_l = proc.add_noise(x0_w, noise, t), proc.add_noise(x0_l, noise, t)
    preds = [noise - x0 + 0.3 * torch.randn(shape, generator=g) for x0 in (x0_w, x0_l, x0_w, x0_l)]
    return DenoisingOutputs(x0_w, x0_l, noise, t, xt_w, xt_l, preds[0], preds[1], preds[2], preds[3], proc)


def test_grid_is_the_schedulers_shifted_sigmas_and_model_times():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    proc = process()
    s = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(proc.sigmas.double(), 3 * s / (1 + 2 * s), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(proc.model_timesteps(torch.arange(1000)).flip(0), scheduler.timesteps.float())


def test_a_dynamically_shifting_scheduler_trains_on_unshifted_sigmas():
    """Flux's scheduler shifts by resolution only when sampling; diffusers' Flux training reads its unshifted sigmas."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    proc = FlowMatchingProcess.from_scheduler_config(scheduler.config)
    torch.testing.assert_close(proc.sigmas.double(), torch.arange(1, 1001, dtype=torch.float64) / 1000, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(proc.sigmas.flip(0), scheduler.sigmas.float())


def test_noising_velocity_epsilon_and_x0_identities():
    proc = process()
    g = torch.Generator().manual_seed(1)
    x0, eps, v_hat = (torch.randn(5, 4, 2, 2, generator=g) for _ in range(3))
    t = torch.tensor([0, 10, 500, 998, 999])
    sigma = proc.sigmas[t].reshape(-1, 1, 1, 1)
    x_t = proc.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * eps)
    torch.testing.assert_close(proc.target(x0, eps, t), eps - x0)
    # the true velocity recovers x0 and ε exactly
    torch.testing.assert_close(proc.x0(eps - x0, x_t, t), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(proc.epsilon(eps - x0, x_t, t), eps, atol=1e-5, rtol=0)
    # any v̂: x̂0 and ε̂ are consistent with x_t and with v̂ = ε̂ - x̂0
    x0_hat, eps_hat = proc.x0(v_hat, x_t, t), proc.epsilon(v_hat, x_t, t)
    torch.testing.assert_close((1 - sigma) * x0_hat + sigma * eps_hat, x_t, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_hat - x0_hat, v_hat, atol=1e-5, rtol=0)
    assert proc.x0_undefined_timesteps() == []


@pytest.mark.parametrize("scheme,options", [("none", {}), ("logit_normal", {"logit_mean": 0.5, "logit_std": 0.8}),
                                            ("mode", {"mode_scale": 1.29})])
def test_time_sampling_masses_match_diffusers_sampling(scheme, options):
    """The exact masses against 400k draws of diffusers' own sampler mapped to indices as its SD3 script does."""
    masses = time_sampling_masses(1000, scheme, **{"logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29, **options})
    assert masses.shape == (1000,) and math.isclose(masses.sum().item(), 1.0, rel_tol=1e-12)
    torch.manual_seed(0)
    u = compute_density_for_timestep_sampling(scheme, 400_000, logit_mean=options.get("logit_mean", 0.0),
                                              logit_std=options.get("logit_std", 1.0), mode_scale=options.get("mode_scale"))
    scheduler_index = (u * 1000).long()
    tau = 999 - scheduler_index
    bins = torch.bincount(tau, minlength=1000).double().reshape(20, 50).sum(1) / 400_000  # 20 bins of 50
    expected = masses.reshape(20, 50).sum(1)
    assert torch.allclose(bins, expected, atol=4e-3), (bins - expected).abs().max()


def test_logit_normal_masses_against_the_closed_form_cdf():
    masses = time_sampling_masses(10, "logit_normal", logit_mean=0.3, logit_std=1.5)
    phi = lambda u: 0.5 * (1 + math.erf((math.log(u / (1 - u)) - 0.3) / (1.5 * math.sqrt(2))))
    cdf = [0.0] + [phi(i / 10) for i in range(1, 10)] + [1.0]
    expected = [cdf[i + 1] - cdf[i] for i in range(10)][::-1]  # τ = T-1-i
    torch.testing.assert_close(masses, torch.tensor(expected, dtype=torch.float64))


def test_loss_weighting_is_diffusers_sd3_weighting():
    for scheme in ("none", "sigma_sqrt", "cosmap"):
        proc = process(weighting_scheme=scheme)
        expected = compute_loss_weighting_for_sd3(scheme, proc.sigmas.double()).double()
        torch.testing.assert_close(proc.loss_weights.double(), expected, rtol=1e-5, atol=0)


def test_credit_samples_with_the_process_masses():
    credit = get_credit("uniform", process=process(weighting_scheme="logit_normal"), timestep_range=[100, 900])
    probabilities = credit.sampling_probabilities()
    masses = time_sampling_masses(1000, "logit_normal")
    assert probabilities[:100].sum() == 0 and probabilities[900:].sum() == 0
    torch.testing.assert_close(probabilities[100:900], masses[100:900] / masses[100:900].sum())
    draws = credit.sample_timesteps(20_000, generator=torch.Generator().manual_seed(0))
    assert draws.min() >= 100 and draws.max() < 900


def velocity_margin(out):
    """Diffusion-DPO's margin on the velocity error, computed here from the raw tensors."""
    v_w, v_l = out.noise - out.x0_w, out.noise - out.x0_l
    err = lambda p, v: ((p - v) ** 2).flatten(1).mean(1)
    return -0.5 * ((err(out.pred_w, v_w) - err(out.pred_ref_w, v_w)) - (err(out.pred_l, v_l) - err(out.pred_ref_l, v_l)))


def test_uniform_is_the_velocity_margin_times_the_loss_weight():
    for scheme in ("none", "cosmap", "sigma_sqrt"):
        proc = process(weighting_scheme=scheme)
        out = outputs(proc)
        weight = compute_loss_weighting_for_sd3(scheme, proc.sigmas[out.timesteps].double()).float()
        torch.testing.assert_close(get_credit("uniform", process=proc).margin(out), weight * velocity_margin(out))


def test_dde_single_is_sigma_squared_times_uniform():
    proc = process()
    out = outputs(proc)
    sigma = proc.sigmas[out.timesteps]
    single = get_credit("dde-single", process=proc).margin(out)
    torch.testing.assert_close(single, sigma**2 * get_credit("uniform", process=proc).margin(out), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="alpha_bar_0='scheduler' is defined for DDPM"):
        get_credit("dde-single", process=proc, alpha_bar_0="scheduler")


def test_discounted_counts_steps_of_a_k_step_flow_sampler():
    credit = get_credit("discounted", process=process(), gamma=0.5, num_steps=10, mode="weight")
    # τ = 999 (σ = 1) is the sampler's first step, τ = 0 its last: γ^0 .. γ^9
    assert credit.discounts[999] == 1.0 and credit.discounts[0] == pytest.approx(0.5**9)
    out = outputs(credit.process, timesteps=torch.tensor([999, 850, 500, 0, 420, 77]))
    expected = velocity_margin(out) * credit.margin_weights[out.timesteps]
    torch.testing.assert_close(credit.margin(out), expected)


def sde_step_mean(x, v, sigma, sigma_next, a):
    """Flow-GRPO's SDE sampler step mean from σ to σ' (written out independently)."""
    s2 = a**2 * sigma / (1 - sigma)
    return x + (sigma_next - sigma) * (v + s2 / (2 * sigma) * (x + (1 - sigma) * v))


def test_transition_coefficient_is_the_sde_step_mean_error():
    proc = process()
    coefficient = proc.transition_x0_error_coefficient()
    g = torch.Generator().manual_seed(3)
    x0, eps, v_hat = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(3))
    sigmas = proc.sigmas.double()
    for tau in (1, 17, 400, 998):
        sigma, sigma_next = sigmas[tau].item(), sigmas[tau - 1].item()
        x_t = (1 - sigma) * x0 + sigma * eps
        v_true = (x_t - x0) / sigma
        mean_gap = sde_step_mean(x_t, v_hat, sigma, sigma_next, 0.7) - sde_step_mean(x_t, v_true, sigma, sigma_next, 0.7)
        x0_gap = (x_t - sigma * v_hat) - x0
        assert (mean_gap**2).sum().item() == pytest.approx(coefficient[tau].item() * (x0_gap**2).sum().item(), rel=1e-9)
    # the true-velocity step is the conditional reverse SDE: its score term is -ε/σ
    x_t = (1 - sigmas[400]) * x0 + sigmas[400] * eps
    v_true = eps - x0
    torch.testing.assert_close((x_t + (1 - sigmas[400]) * v_true) / sigmas[400], eps / sigmas[400])


@pytest.mark.parametrize("name", ["dde-step", "dde"])
def test_stepwise_correction_on_flow_against_a_direct_sum(name):
    proc = process()
    credit = get_credit(name, process=proc, momentum=0.0)
    first = outputs(proc, timesteps=torch.tensor([900, 800, 700, 600, 500, 400]))
    credit.update(first)
    coefficient = proc.transition_x0_error_coefficient()

    def half_error(pred, x_t, x0, t):
        x0_hat = x_t - proc.sigmas[t].reshape(-1, 1, 1, 1) * pred
        return 0.5 * coefficient[t].float() * ((x0_hat - x0) ** 2).flatten(1).sum(1)

    t = first.timesteps
    d = (half_error(first.pred_w, first.xt_w, first.x0_w, t) - half_error(first.pred_ref_w, first.xt_w, first.x0_w, t)
         - half_error(first.pred_l, first.xt_l, first.x0_l, t) + half_error(first.pred_ref_l, first.xt_l, first.x0_l, t))
    second = outputs(proc, seed=5, timesteps=torch.tensor([650, 450, 950, 0, 399, 700]))
    base = velocity_margin(second) if name == "dde-step" else get_credit("dde-single", process=proc).margin(second)
    expected = torch.stack([base[i] + d[t > second.timesteps[i]].sum() for i in range(6)])
    torch.testing.assert_close(credit.margin(second), expected, atol=1e-5, rtol=1e-4)


def test_ddpm_coefficient_hook_is_the_posterior_mean_coefficient():
    from trl_dde.processes.ddpm import posterior_mean_x0_error_coefficient

    proc = DDPMProcess(torch.linspace(0.999, 0.01, 50))
    torch.testing.assert_close(proc.transition_x0_error_coefficient(), posterior_mean_x0_error_coefficient(proc.alphas_cumprod.double()))
    assert torch.equal(proc.loss_weights, torch.ones(50))


def test_bad_time_sampling_is_refused_before_loading(tmp_path):
    base = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True}
    with pytest.raises(ValueError, match="DDEConfig.weighting_scheme must be one of"):
        DDEConfig(**base, weighting_scheme="logit-normal")
    with pytest.raises(ValueError, match="mode_scale must be in"):
        DDEConfig(**base, weighting_scheme="mode", mode_scale=2.0)
    with pytest.raises(ValueError, match="logit_std must be > 0"):
        DDEConfig(**base, logit_std=0.0)
    assert DDEConfig(**base, weighting_scheme="logit_normal", logit_std=1.2).process_options() == {
        "weighting_scheme": "logit_normal", "logit_std": 1.2}


def test_ddpm_refuses_flow_time_sampling():
    from diffusers import DDIMScheduler

    with pytest.raises(ValueError, match="takes no time-sampling options"):
        DDPMProcess.from_scheduler_config(DDIMScheduler().config, weighting_scheme="logit_normal")


def test_process_mismatch_includes_time_sampling():
    assert process().same_as(process()) and not process().same_as(process(weighting_scheme="mode"))


def test_a_ddpm_only_strategy_is_refused_on_flow_at_construction():
    from trl_dde.credit import CreditAssigner

    class DDPMOnly(CreditAssigner):
        supported_processes = ("ddpm",)

    with pytest.raises(ValueError, match=r"derived for the noise process\(es\) \['ddpm'\], not 'flow_matching'"):
        DDPMOnly(process())
