"""Credit diagnostics: analytic weights against their formulas, measured gradients against autograd, and the
paper's Fig. 2(a) and Fig. 7 drawn from a short tiny run's checkpoints and logs."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import lora_config, make_args
from diffusers import DDPMScheduler
from PIL import Image

from trl_dde import CreditAssigner, DDEDiffusionTrainer, DenoisingOutputs, get_credit
from trl_dde.cli import main
from trl_dde.evaluation.diagnostics import (
    GradientProbe,
    analytic_credit_weights,
    load_correction_history,
    plot_credit_weights,
    run_diagnostics,
    single_shot_coefficient,
)

ABAR = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod.double()
T = ABAR.numel()


def test_analytic_weights_match_the_formulas():
    ones = torch.ones(T)
    torch.testing.assert_close(analytic_credit_weights(get_credit("uniform", alphas_cumprod=ABAR)), ones)
    torch.testing.assert_close(analytic_credit_weights(get_credit("dde-step", alphas_cumprod=ABAR)), ones)
    single = ((1 - ABAR) / ABAR).float()  # (1-ā)/ā: dde-single's margin is uniform's times this
    torch.testing.assert_close(analytic_credit_weights(get_credit("dde-single", alphas_cumprod=ABAR)), single)
    torch.testing.assert_close(analytic_credit_weights(get_credit("dde", alphas_cumprod=ABAR)), single)
    k = torch.tensor([(T - 1 - tau) // (T // 50) for tau in range(T)], dtype=torch.float64)
    discount = (0.9**k / (0.9**k).mean()).float()  # γ^k, normalised to mean 1
    for mode in ("sample", "weight"):
        credit = get_credit("discounted", alphas_cumprod=ABAR, gamma=0.9, num_steps=50, mode=mode)
        torch.testing.assert_close(analytic_credit_weights(credit), discount, rtol=1e-5, atol=1e-6)
    ranged = analytic_credit_weights(get_credit("uniform", alphas_cumprod=ABAR, timestep_range=[200, 700]))
    assert ranged[:200].eq(0).all() and ranged[700:].eq(0).all() and torch.allclose(ranged[200:700], torch.tensor(2.0))
    torch.testing.assert_close(single_shot_coefficient(ABAR), -((1 - ABAR) / ABAR).sqrt())

    class Custom(CreditAssigner):
        def margin(self, outputs):
            return outputs.eps_w.sum()

    assert analytic_credit_weights(Custom(ABAR)) is None


def test_probe_records_the_gradient_of_each_pairs_loss():
    """Uniform's margin: ∂ℓ_i/∂ε̂_w = -β σ(-β z_i) (ε̂_w - ε)/D, so mean |·| = β σ(-β z_i) mean|ε̂_w - ε| / D."""
    torch.manual_seed(0)
    shape, beta = (3, 4, 2, 2), 50.0
    x0w, x0l, noise, xtw, xtl, eps_ref_w, eps_ref_l = (torch.randn(shape) for _ in range(7))
    eps_w, eps_l = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)
    timesteps = torch.tensor([10, 500, 990])
    probe = GradientProbe(get_credit("uniform", alphas_cumprod=ABAR))
    z = probe.margin(DenoisingOutputs(x0w, x0l, noise, timesteps, xtw, xtl, eps_w, eps_l, eps_ref_w, eps_ref_l))
    (-F.logsigmoid(beta * z)).mean().backward()
    weight = beta * torch.sigmoid(-beta * z.detach())
    elements = eps_w[0].numel()
    expected_w = weight * (eps_w.detach() - noise).abs().flatten(1).mean(1) / elements
    expected_l = weight * (eps_l.detach() - noise).abs().flatten(1).mean(1) / elements
    recorded = {tuple(v.tolist()) for _, v in probe._records}
    assert len(probe._records) == 2
    for expected in (expected_w, expected_l):
        assert any(torch.allclose(torch.tensor(r), expected, rtol=1e-5) for r in recorded)
    measured = probe.measured_weights(num_bins=10)
    assert measured.counts == [2, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    assert measured.mean_gradient[9] == pytest.approx(float((expected_w[2] + expected_l[2]) / 2), rel=1e-5)
    with torch.no_grad():  # evaluation: nothing recorded
        probe.margin(DenoisingOutputs(x0w, x0l, noise, timesteps, xtw, xtl, eps_w, eps_l, eps_ref_w, eps_ref_l))
    assert len(probe._records) == 2
    with pytest.raises(RuntimeError, match="recorded no gradient"):
        GradientProbe(get_credit("dde", alphas_cumprod=ABAR)).measured_weights()


@pytest.fixture(scope="module")
def dde_run(tmp_path_factory, pipeline_folder, pickapic):
    """A 3-step dde run through the probe, with a checkpoint (credit state) after every step."""
    folder = tmp_path_factory.mktemp("dde-run")
    probe = GradientProbe(get_credit("dde", alphas_cumprod=ABAR))
    args = make_args(folder, max_steps=3, save_strategy="steps", save_steps=1, output_dir=str(folder))
    trainer = DDEDiffusionTrainer(pipeline_folder, args=args, train_dataset=pickapic, peft_config=lora_config(), credit=probe)
    trainer.train()
    return folder, trainer, probe


def test_probe_measures_a_real_run_without_changing_it(dde_run, tmp_path):
    folder, trainer, probe = dde_run
    measured = probe.measured_weights(num_bins=20)
    assert sum(measured.counts) == 2 * 3 * 4  # winner and loser of 4 pairs in each of 3 steps
    assert trainer.credit is probe and probe.name == "dde" and "ratios" in probe.state_dict()
    path = plot_credit_weights(ABAR, tmp_path / "weights.png", measured={"dde": measured})
    assert Image.open(path).size[0] > 1000  # two panels


def test_correction_history_and_figures_from_checkpoints(dde_run, tmp_path):
    folder, trainer, probe = dde_run
    history = load_correction_history(folder, ABAR)
    assert history.credit == "dde" and history.steps == [1, 2, 3]
    torch.testing.assert_close(history.corrections[-1], probe.credit.corrections().cpu())
    assert len(history.logged_steps) == 3  # credit/correction logged at every step (logging_steps=1)
    written = run_diagnostics(folder)
    assert set(written) == {"single_shot_coefficient", "credit_weights", "correction_terms"}
    assert all(path.is_file() and path.parent == folder / "diagnostics" for path in written.values())

    main(["eval", "--diagnostics", str(folder), "--output_dir", str(tmp_path / "cli")])
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["correction_terms.png", "credit_weights.png",
                                                                     "single_shot_coefficient.png"]


def test_runs_without_correction_terms_or_checkpoints(tmp_path):
    (tmp_path / "uniform").mkdir()
    (tmp_path / "uniform" / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 1, "loss": 0.69}]}))
    written = run_diagnostics(tmp_path / "uniform")
    assert set(written) == {"single_shot_coefficient", "credit_weights"}  # Fig. 7 needs dde or dde-step
    with pytest.raises(FileNotFoundError, match="no checkpoint-\\*/credit_state.safetensors and no trainer_state.json"):
        run_diagnostics(tmp_path)
