"""The credit strategies against independent float64 computations of DESIGN §3 (no trainer, no model)."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from trl_dde import DenoisingOutputs, available_credits, get_credit
from trl_dde.processes import DDPMProcess
from trl_dde.processes.ddpm import model_posterior_mean, posterior_mean

T = 1000


@pytest.fixture(scope="module")
def alphas_cumprod():
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=T)
    return scheduler.alphas_cumprod.clone()


def make_outputs(alphas_cumprod, batch=6, shape=(4, 8, 8), seed=0, timesteps=None):
    g = torch.Generator().manual_seed(seed)
    x0_w, x0_l, noise = (torch.randn(batch, *shape, generator=g) for _ in range(3))
    if timesteps is None:
        timesteps = torch.randint(0, T, (batch,), generator=g)
    process = DDPMProcess(alphas_cumprod)
    xt_w = process.add_noise(x0_w, noise, timesteps)
    xt_l = process.add_noise(x0_l, noise, timesteps)
    eps = [noise + 0.3 * torch.randn(batch, *shape, generator=g) for _ in range(4)]
    return DenoisingOutputs(x0_w, x0_l, noise, timesteps, xt_w, xt_l, *eps)


def coefficients(ac, t):
    """Scalar schedule values at τ = t, in float64, straight from the definitions."""
    abar = float(ac[t].double())
    abar_prev = float(ac[t - 1].double()) if t > 0 else 1.0
    b = 1.0 - abar / abar_prev
    return abar, abar_prev, b, 1.0 - b


def official_diffusion_dpo_inside_term(o, beta):
    """The official Diffusion-DPO loss body (train.py), re-typed: concat [w; l], mse per sample, scale -½β."""
    target = torch.cat([o.noise, o.noise]).double()
    model_pred = torch.cat([o.eps_w, o.eps_l]).double()
    ref_pred = torch.cat([o.eps_ref_w, o.eps_ref_l]).double()
    model_losses = (model_pred - target).pow(2).mean(dim=[1, 2, 3])
    model_losses_w, model_losses_l = model_losses.chunk(2)
    model_diff = model_losses_w - model_losses_l
    ref_losses = (ref_pred - target).pow(2).mean(dim=[1, 2, 3])
    ref_losses_w, ref_losses_l = ref_losses.chunk(2)
    ref_diff = ref_losses_w - ref_losses_l
    scale_term = -0.5 * beta
    return scale_term * (model_diff - ref_diff)


def single_shot_reference(o, ac, alpha_bar_0):
    """Eq. 10/11 per pair with python-float coefficients, float64 tensors."""
    z = []
    for i, t in enumerate(o.timesteps.tolist()):
        abar, _, b, _ = coefficients(ac, t)
        abar0 = 1.0 if alpha_bar_0 == "one" else float(ac[0].double())
        sigma_sq = (1 - abar0) / (1 - abar) * b**2
        cx = math.sqrt(abar0) / math.sqrt(abar)
        ce = math.sqrt(1 - abar0 - sigma_sq) - math.sqrt(abar0) * math.sqrt(1 - abar) / math.sqrt(abar)

        def ll(x0, xt, eps, eps_ref):
            x0, xt, eps, eps_ref = (v[i].double() for v in (x0, xt, eps, eps_ref))
            mse = ((x0 - (cx * xt + ce * eps)) ** 2).mean()
            mse_ref = ((x0 - (cx * xt + ce * eps_ref)) ** 2).mean()
            return -0.5 * (mse - mse_ref)

        z.append(ll(o.x0_w, o.xt_w, o.eps_w, o.eps_ref_w) - ll(o.x0_l, o.xt_l, o.eps_l, o.eps_ref_l))
    return torch.stack(z)


def test_registry_lists_the_five_strategies():
    assert {"uniform", "discounted", "dde-single", "dde-step", "dde"} <= set(available_credits())
    with pytest.raises(ValueError, match="Available: .*dde-single"):
        get_credit("nope", alphas_cumprod=torch.linspace(0.99, 0.01, 10))


def test_uniform_equals_official_diffusion_dpo_inside_term(alphas_cumprod):
    o = make_outputs(alphas_cumprod)
    beta = 5000.0
    z = get_credit("uniform", alphas_cumprod=alphas_cumprod).margin(o)
    torch.testing.assert_close(beta * z.double(), official_diffusion_dpo_inside_term(o, beta), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("alpha_bar_0", ["one", "scheduler"])
def test_dde_single_matches_eq10(alphas_cumprod, alpha_bar_0):
    o = make_outputs(alphas_cumprod, timesteps=torch.tensor([0, 1, 17, 500, 998, 999]))
    z = get_credit("dde-single", alphas_cumprod=alphas_cumprod, alpha_bar_0=alpha_bar_0).margin(o)
    torch.testing.assert_close(z.double(), single_shot_reference(o, alphas_cumprod, alpha_bar_0), rtol=2e-4, atol=1e-6)


def test_dde_single_with_unit_alpha_bar_0_is_scaled_uniform(alphas_cumprod):
    o = make_outputs(alphas_cumprod, batch=16, seed=3)
    uniform = get_credit("uniform", alphas_cumprod=alphas_cumprod).margin(o).double()
    single = get_credit("dde-single", alphas_cumprod=alphas_cumprod).margin(o).double()
    abar = alphas_cumprod.double()[o.timesteps]
    torch.testing.assert_close(single, uniform * (1 - abar) / abar, rtol=2e-4, atol=1e-7)


def test_posterior_mean_error_is_scaled_epsilon_error(alphas_cumprod):
    o = make_outputs(alphas_cumprod, batch=5, seed=4, timesteps=torch.tensor([0, 3, 250, 700, 999]))
    ac = alphas_cumprod.double()
    x0, xt, eps, noise = o.x0_w.double(), o.xt_w.double(), o.eps_w.double(), o.noise.double()
    gap = (model_posterior_mean(eps, xt, o.timesteps, ac) - posterior_mean(x0, xt, o.timesteps, ac)).pow(2).flatten(1).sum(1)
    for i, t in enumerate(o.timesteps.tolist()):
        abar, abar_prev, b, a = coefficients(alphas_cumprod, t)
        # Eq. 3 written out, and the DDPM model mean, with python floats
        mu_true = math.sqrt(abar_prev) * b / (1 - abar) * x0[i] + math.sqrt(a) * (1 - abar_prev) / (1 - abar) * xt[i]
        mu_model = (xt[i] - b / math.sqrt(1 - abar) * eps[i]) / math.sqrt(a)
        torch.testing.assert_close(gap[i], (mu_model - mu_true).pow(2).sum(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(gap[i], b**2 / (a * (1 - abar)) * (eps[i] - noise[i]).pow(2).sum(), rtol=1e-6, atol=1e-12)


def test_prediction_conversions_recover_epsilon(alphas_cumprod):
    o = make_outputs(alphas_cumprod, batch=4, seed=5)
    abar = alphas_cumprod[o.timesteps].view(-1, 1, 1, 1)
    v = abar.sqrt() * o.noise - (1 - abar).sqrt() * o.x0_w
    v_process, x0_process = DDPMProcess(alphas_cumprod, "v_prediction"), DDPMProcess(alphas_cumprod, "sample")
    torch.testing.assert_close(v_process.epsilon(v, o.xt_w, o.timesteps), o.noise, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v_process.x0(v, o.xt_w, o.timesteps), o.x0_w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v_process.target(o.x0_w, o.noise, o.timesteps), v)
    torch.testing.assert_close(x0_process.epsilon(o.x0_w, o.xt_w, o.timesteps), o.noise, rtol=1e-3, atol=1e-3)
    eps_process = DDPMProcess(alphas_cumprod)
    assert eps_process.epsilon(o.eps_w, o.xt_w, o.timesteps) is o.eps_w
    torch.testing.assert_close(eps_process.x0(o.noise, o.xt_w, o.timesteps), o.x0_w, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMProcess(alphas_cumprod, "flow")


def test_add_noise_matches_diffusers_scheduler(alphas_cumprod):
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=T)
    o = make_outputs(alphas_cumprod, batch=4, seed=6)
    process = DDPMProcess.from_scheduler_config(scheduler.config)
    torch.testing.assert_close(process.add_noise(o.x0_w, o.noise, o.timesteps), scheduler.add_noise(o.x0_w, o.noise, o.timesteps))


def expected_step_value(o, ac, i, which, reduction):
    """½·b²/(a(1-ā))·red((ε̂-ε)²) for pair i and array `which` ∈ {0: θw, 1: refw, 2: θl, 3: refl}."""
    eps = (o.eps_w, o.eps_ref_w, o.eps_l, o.eps_ref_l)[which][i].double()
    sq = (eps - o.noise[i].double()) ** 2
    _, _, b, a = coefficients(ac, int(o.timesteps[i]))
    abar = float(ac[int(o.timesteps[i])].double())
    return 0.5 * b**2 / (a * (1 - abar)) * float(sq.sum() if reduction == "sum" else sq.mean())


@pytest.mark.parametrize("name", ["dde-step", "dde"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_stepwise_ema_and_correction_match_hand_computation(name, reduction):
    small_t = 12
    ac = torch.cumprod(1 - torch.linspace(0.02, 0.3, small_t), 0)
    momentum = 0.25
    credit = get_credit(name, alphas_cumprod=ac, momentum=momentum, correction_reduction=reduction)
    expected = [[0.0] * small_t for _ in range(4)]
    batches = [torch.tensor([3, 3, 7, 11]), torch.tensor([0, 7, 5, 3]), torch.tensor([11, 2, 2, 9])]
    for step, timesteps in enumerate(batches):
        o = make_outputs(ac, batch=4, seed=10 + step, timesteps=timesteps)
        # correction is read before this step's update: C(τ) = Σ_{k=τ+1}^{T-1} D[k]
        d = [expected[0][k] - expected[1][k] - expected[2][k] + expected[3][k] for k in range(small_t)]
        want_correction = torch.tensor([sum(d[k] for k in range(t + 1, small_t)) for t in timesteps.tolist()], dtype=torch.float64)
        base_credit = "uniform" if name == "dde-step" else "dde-single"
        base = get_credit(base_credit, alphas_cumprod=ac).margin(o).double()
        torch.testing.assert_close(credit.margin(o).double() - base, want_correction, rtol=1e-5, atol=1e-6)
        credit.update(o)
        for t in set(timesteps.tolist()):
            rows = [i for i, ti in enumerate(timesteps.tolist()) if ti == t]
            for which in range(4):
                mean_value = sum(expected_step_value(o, ac, i, which, reduction) for i in rows) / len(rows)
                expected[which][t] = momentum * expected[which][t] + (1 - momentum) * mean_value
        torch.testing.assert_close(credit.ratios.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    assert credit.ratios[:, [1, 4, 6, 8, 10]].abs().sum() == 0  # unvisited τ never change


def test_sum_reduction_is_mean_times_element_count(alphas_cumprod):
    o = make_outputs(alphas_cumprod, batch=8, seed=2)
    ratios = {}
    for reduction in ("sum", "mean"):
        credit = get_credit("dde-step", alphas_cumprod=alphas_cumprod, correction_reduction=reduction)
        credit.update(o)
        ratios[reduction] = credit.ratios
    torch.testing.assert_close(ratios["sum"], ratios["mean"] * o.noise[0].numel(), rtol=1e-5, atol=1e-6)


def test_stepwise_state_round_trips(alphas_cumprod):
    credit = get_credit("dde", alphas_cumprod=alphas_cumprod)
    credit.update(make_outputs(alphas_cumprod, seed=8))
    restored = get_credit("dde", alphas_cumprod=alphas_cumprod)
    restored.load_state_dict(credit.state_dict())
    assert torch.equal(restored.ratios, credit.ratios) and credit.ratios.abs().sum() > 0
    o = make_outputs(alphas_cumprod, seed=9)
    torch.testing.assert_close(restored.margin(o), credit.margin(o))


def test_fresh_stepwise_strategies_reduce_to_their_base(alphas_cumprod):
    o = make_outputs(alphas_cumprod, seed=11)
    torch.testing.assert_close(get_credit("dde-step", alphas_cumprod=alphas_cumprod).margin(o), get_credit("uniform", alphas_cumprod=alphas_cumprod).margin(o))
    torch.testing.assert_close(get_credit("dde", alphas_cumprod=alphas_cumprod).margin(o), get_credit("dde-single", alphas_cumprod=alphas_cumprod).margin(o))


def discount_bucket(tau, num_steps=50):
    return (T - 1 - tau) // (T // num_steps)


def test_discounted_sampling_frequencies_follow_gamma_power(alphas_cumprod):
    gamma, n = 0.9, 400_000
    credit = get_credit("discounted", alphas_cumprod=alphas_cumprod, gamma=gamma, num_steps=50)
    tau = credit.sample_timesteps(n, generator=torch.Generator().manual_seed(0))
    observed = torch.bincount(discount_bucket(tau), minlength=50).double() / n
    expected = torch.tensor([gamma**k for k in range(50)], dtype=torch.float64)
    expected /= expected.sum()
    # binomial standard error per bucket; 5 sigma
    assert torch.all((observed - expected).abs() <= 5 * (expected * (1 - expected) / n).sqrt() + 1e-9)
    # step 0 (τ in [980, 1000)) is 1/γ more likely than step 1
    assert observed[0] / observed[1] == pytest.approx(1 / gamma, rel=0.03)


def test_discounted_weight_mode_multiplies_uniform_margin(alphas_cumprod):
    gamma = 0.8
    credit = get_credit("discounted", alphas_cumprod=alphas_cumprod, gamma=gamma, mode="weight")
    weights = torch.tensor([gamma ** discount_bucket(t) for t in range(T)], dtype=torch.float64)
    weights /= weights.mean()
    assert credit.sampling_probabilities().allclose(torch.full((T,), 1 / T, dtype=torch.float64))
    o = make_outputs(alphas_cumprod, seed=12)
    uniform = get_credit("uniform", alphas_cumprod=alphas_cumprod).margin(o).double()
    torch.testing.assert_close(credit.margin(o).double(), uniform * weights[o.timesteps], rtol=1e-5, atol=1e-7)
    sample_mode = get_credit("discounted", alphas_cumprod=alphas_cumprod, gamma=gamma)
    torch.testing.assert_close(sample_mode.margin(o), get_credit("uniform", alphas_cumprod=alphas_cumprod).margin(o))


@pytest.mark.parametrize("name", ["uniform", "discounted", "dde-single", "dde-step", "dde"])
def test_timestep_range_restricts_sampling_for_every_strategy(alphas_cumprod, name):
    credit = get_credit(name, alphas_cumprod=alphas_cumprod, timestep_range=[200, 700])
    tau = credit.sample_timesteps(50_000, generator=torch.Generator().manual_seed(1))
    assert tau.dtype == torch.long and tau.min() == 200 and tau.max() == 699
    with pytest.raises(ValueError, match="timestep_range"):
        get_credit(name, alphas_cumprod=alphas_cumprod, timestep_range=[700, 200])


def test_uniform_sampling_is_uniform(alphas_cumprod):
    credit = get_credit("uniform", alphas_cumprod=alphas_cumprod)
    tau = credit.sample_timesteps(200_000, generator=torch.Generator().manual_seed(2))
    counts = torch.bincount(tau // 100, minlength=10).double()
    assert torch.all((counts / 200_000 - 0.1).abs() < 0.005)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("discounted", {"gamma": 0.0}, "gamma"),
        ("discounted", {"mode": "both"}, "mode"),
        ("dde", {"alpha_bar_0": "zero"}, "alpha_bar_0"),
        ("dde-step", {"correction_reduction": "max"}, "correction_reduction"),
        ("dde", {"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_options_are_refused(alphas_cumprod, name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_credit(name, alphas_cumprod=alphas_cumprod, **kwargs)


def test_epsilon_space_margin_is_the_v_space_margin_times_alpha_bar(alphas_cumprod):
    """For a v-prediction model ε̂ - ε = √ā·(v̂ - v): error_space="epsilon" weighs each pair by ā[τ] relative to the
    official v-space ("prediction") margin."""
    process = DDPMProcess(alphas_cumprod, "v_prediction")
    g = torch.Generator().manual_seed(21)
    shape, timesteps = (8, 4, 8, 8), torch.tensor([0, 1, 90, 300, 500, 700, 900, 999])
    x0_w, x0_l, noise = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    xt_w, xt_l = process.add_noise(x0_w, noise, timesteps), process.add_noise(x0_l, noise, timesteps)
    v_w, v_l = process.target(x0_w, noise, timesteps), process.target(x0_l, noise, timesteps)
    preds = [v + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64) for v in (v_w, v_l, v_w, v_l)]
    outputs = DenoisingOutputs(x0_w, x0_l, noise, timesteps, xt_w, xt_l, *preds, process=process)
    epsilon = get_credit("uniform", process=process, error_space="epsilon").margin(outputs).double()
    prediction = get_credit("uniform", process=process, error_space="prediction").margin(outputs).double()
    abar = alphas_cumprod.double()[timesteps]
    torch.testing.assert_close(epsilon, prediction * abar, rtol=1e-4, atol=1e-10)
    # an ε-prediction model: the two spaces are one
    o = make_outputs(alphas_cumprod, seed=22)
    torch.testing.assert_close(get_credit("uniform", alphas_cumprod=alphas_cumprod, error_space="prediction").margin(o),
                               get_credit("uniform", alphas_cumprod=alphas_cumprod).margin(o))


def test_optimizer_step_cadence_applies_one_update_for_all_micro_batches():
    small_t, momentum = 8, 0.5
    ac = torch.cumprod(1 - torch.linspace(0.05, 0.4, small_t), 0)
    per_micro = get_credit("dde-step", alphas_cumprod=ac, momentum=momentum)
    per_step = get_credit("dde-step", alphas_cumprod=ac, momentum=momentum, update_cadence="optimizer_step")
    micro_batches = [make_outputs(ac, batch=3, seed=30 + i, timesteps=t)
                     for i, t in enumerate([torch.tensor([1, 5, 5]), torch.tensor([5, 2, 7])])]
    for o in micro_batches:
        per_micro.update(o)
        per_step.update(o)
        assert per_step.ratios.abs().sum() == 0  # nothing applied before the optimizer step
    per_step.on_optimizer_step()
    values = torch.cat([per_step.step_values(o) for o in micro_batches], dim=1).double()
    timesteps = torch.cat([o.timesteps for o in micro_batches])
    expected = torch.zeros(4, small_t, dtype=torch.float64)
    for t in timesteps.unique().tolist():  # one EMA step from 0 with the mean over both micro-batches
        expected[:, t] = (1 - momentum) * values[:, timesteps == t].mean(dim=1)
    torch.testing.assert_close(per_step.ratios.double(), expected, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(per_micro.ratios.double(), expected)  # τ = 5 was updated twice per micro-batch
    per_micro.on_optimizer_step()  # a no-op for the micro-batch cadence
