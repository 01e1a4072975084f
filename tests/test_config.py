"""DDEConfig validates what it can before any model loads; errors name the field, the value and the fix."""

import os
import subprocess
import sys

import pytest
import transformers.integrations

from trl_dde import DDEConfig
from trl_dde.credit import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(tmp_path, **fields):
    return DDEConfig(**{"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none", **fields})


@pytest.mark.parametrize(
    "fields, words",
    [
        # bug 8: unknown strategies and impossible timestep ranges used to pass until the pipeline had loaded
        ({"credit": "dde-singel"}, ["DDEConfig.credit='dde-singel'", "Did you mean 'dde-single'", "Available:"]),
        ({"credit": "nowhere_module:Credit"}, ["DDEConfig.credit='nowhere_module:Credit'", "no module named"]),
        ({"timestep_range": [700, 200]}, ["DDEConfig.timestep_range=[700, 200]", "0 <= lo < hi", "200 700"]),
        ({"timestep_range": [-5, 200]}, ["timestep_range=[-5, 200]", "0 <= lo < hi"]),
        ({"timestep_range": [200]}, ["timestep_range must be [lo, hi)", "[200]"]),
        ({"timestep_range": [200.5, 700]}, ["timestep_range=[200.5, 700]", "integer"]),
        # bug 4: options the strategy does not take, refused with the ones it does
        ({"credit_kwargs": '{"gamma": 0.9}'}, ["DDEConfig.credit_kwargs={'gamma': 0.9}", "'dde' has no option 'gamma'",
                                               "alpha_bar_0='one', momentum=0.1, correction_reduction='sum'"]),
        ({"credit": "discounted", "credit_kwargs": {"gama": 0.9}}, ["Did you mean 'gamma'"]),
        ({"credit_kwargs": "{'momentum': 0.2}"}, ["DDEConfig.credit_kwargs=\"{'momentum': 0.2}\" is not valid JSON",
                                                  "double quotes"]),
        ({"credit_kwargs": "[0.2]"}, ["credit_kwargs must be a dict or a JSON object", "[0.2]"]),
        ({"loss_type": "dpo"}, ["DDEConfig.loss_type", "'dpo'", "sigmoid"]),
        ({"beta": -1.0}, ["DDEConfig.beta", "-1.0", "5000"]),
        ({"learning_rate_per_pair": 0.0}, ["DDEConfig.learning_rate_per_pair must be positive"]),
        ({"learning_rate_per_pair": 1e-8, "learning_rate": 3e-5}, ["both set the learning rate", "Set only one"]),
        ({"report_to": "tensorbord"}, ["DDEConfig.report_to='tensorbord' is not a logging integration"]),
    ],
)
def test_bad_values_are_refused_when_the_config_is_built(tmp_path, fields, words):
    with pytest.raises(ValueError) as raised:
        config(tmp_path, **fields)
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_valid_values_are_normalised(tmp_path):
    args = config(tmp_path, credit="discounted", credit_kwargs='{"gamma": 0.9, "mode": "weight"}',
                  timestep_range=[200.0, 700])
    assert args.credit_kwargs == {"gamma": 0.9, "mode": "weight"} and args.timestep_range == [200, 700]
    assert config(tmp_path).credit_kwargs == {}


def test_a_credit_class_spec_is_accepted_with_its_own_options(tmp_path, monkeypatch):
    (tmp_path / "config_credits.py").write_text(
        "from trl_dde import CreditAssigner\n\n"
        "class Halved(CreditAssigner):\n"
        "    def __init__(self, alphas_cumprod, timestep_range=None, factor: float = 0.5):\n"
        "        super().__init__(alphas_cumprod, timestep_range)\n"
        "        self.factor = factor\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry.CREDITS, "_classes", dict(registry.CREDITS._classes))
    args = config(tmp_path, credit="config_credits:Halved", credit_kwargs={"factor": 0.25})
    assert args.credit == "config_credits:Halved"
    with pytest.raises(ValueError, match="has no option 'factr'. Did you mean 'factor'"):
        config(tmp_path, credit="config_credits:Halved", credit_kwargs={"factr": 0.25})
    sys.modules.pop("config_credits", None)


@pytest.mark.parametrize("value, expected", [("true", True), ("True", True), ("false", None),
                                             ("out/checkpoint-4", "out/checkpoint-4"), (None, None)])
def test_resume_from_checkpoint_true_means_the_latest_checkpoint(tmp_path, value, expected):
    """Bug 5: transformers' idiom `--resume_from_checkpoint true` reaches trainer.train() as True."""
    assert config(tmp_path, resume_from_checkpoint=value).resume_from_checkpoint == expected


def test_learning_rate_per_pair_scales_with_the_total_batch(tmp_path):
    """Bug 3: Diffusion-DPO's `--scale_lr` as an explicit option (1e-8 per pair)."""
    args = config(tmp_path, learning_rate_per_pair=1e-8, per_device_train_batch_size=4, gradient_accumulation_steps=8)
    assert args.learning_rate == pytest.approx(1e-8 * 4 * 8)
    # the scaled value written back (as in a saved config) is accepted again
    again = config(tmp_path, learning_rate_per_pair=1e-8, learning_rate=args.learning_rate,
                   per_device_train_batch_size=4, gradient_accumulation_steps=8)
    assert again.learning_rate == args.learning_rate


def test_learning_rate_per_pair_counts_every_process(tmp_path):
    """Two gloo processes: the total batch includes the world size."""
    script = tmp_path / "worker.py"
    script.write_text(
        "from trl_dde import DDEConfig\n"
        f"args = DDEConfig(output_dir={str(tmp_path / 'out')!r}, use_cpu=True, report_to='none', "
        "learning_rate_per_pair=1e-8, per_device_train_batch_size=2, gradient_accumulation_steps=3)\n"
        "assert args.world_size == 2, args.world_size\n"
        "assert abs(args.learning_rate - 1e-8 * 2 * 3 * 2) < 1e-20, args.learning_rate\n"
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_port=29541", str(script)], env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_missing_logging_integration_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """Bug 11: `report_to: tensorboard` without tensorboard used to fail inside Trainer, after the pipeline loaded."""
    available = transformers.integrations.get_available_reporting_integrations
    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations",
                        lambda: [name for name in available() if name != "tensorboard"])
    with pytest.raises(ValueError, match=r"report_to='tensorboard': tensorboard is not installed. Install it or set"):
        config(tmp_path, report_to="tensorboard")
