"""The credit registry: names and ``package.module:ClassName`` specs, strategy options read from constructors."""

import inspect
import sys
import textwrap

import pytest
import torch
from diffusers import DDPMScheduler

from trl_dde import DenoisingOutputs, credit_options, get_credit, resolve_credit_class
from trl_dde.credit import DDECredit, UniformCredit, available_credits, registry

SCHEDULE = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod

USER_MODULE = '''
import torch

from trl_dde import CreditAssigner, register_credit
from trl_dde.credit.uniform import epsilon_margin


class ScaledUniform(CreditAssigner):
    """Uniform's margin times ``scale``; the schedule argument has the refactor's name."""

    def __init__(self, process, timestep_range=None, scale: float = 0.5, *, label: str):
        super().__init__(process, timestep_range)
        self.scale, self.label = scale, label

    def margin(self, outputs):
        return self.scale * epsilon_margin(outputs)


@register_credit("registered-by-its-module")
class AlreadyNamed(CreditAssigner):
    def margin(self, outputs):
        return epsilon_margin(outputs)


class AnyOptions(CreditAssigner):
    def __init__(self, alphas_cumprod, timestep_range=None, **options):
        super().__init__(alphas_cumprod, timestep_range)
        self.options = options

    def margin(self, outputs):
        return epsilon_margin(outputs)


not_a_class = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``user_credits.py`` on ``sys.path``; registry and module cache restored afterwards."""
    (tmp_path / "user_credits.py").write_text(USER_MODULE)
    (tmp_path / "broken_credits.py").write_text("import a_package_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry.CREDITS, "_classes", dict(registry.CREDITS._classes))
    yield "user_credits"
    for name in ("user_credits", "broken_credits"):
        sys.modules.pop(name, None)


def random_outputs(batch=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x0_w, x0_l, noise, eps_w, eps_l, eps_ref_w, eps_ref_l = (torch.randn(batch, 4, 8, 8, generator=generator)
                                                              for _ in range(7))
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    return DenoisingOutputs(x0_w, x0_l, noise, timesteps, x0_w, x0_l, eps_w, eps_l, eps_ref_w, eps_ref_l)


def test_builtin_options_are_read_from_the_constructors():
    assert credit_options("uniform") == {"error_space": None}
    assert credit_options("discounted") == {"gamma": 0.9, "num_steps": 50, "mode": "sample", "error_space": None}
    assert credit_options("dde-single") == {"alpha_bar_0": "one"}
    assert credit_options("dde-step") == {"momentum": 0.1, "correction_reduction": "sum", "update_cadence": "micro_batch",
                                          "error_space": None}
    assert credit_options("dde") == {"alpha_bar_0": "one", "momentum": 0.1, "correction_reduction": "sum",
                                     "update_cadence": "micro_batch"}
    assert resolve_credit_class("dde") is DDECredit


def test_a_class_spec_is_imported_registered_and_built(user_module):
    spec = "user_credits:ScaledUniform"
    cls = resolve_credit_class(spec)
    assert cls.__name__ == "ScaledUniform" and cls.name == spec and spec in available_credits()
    # the first parameter is skipped whatever its name; required options show as empty
    assert credit_options(spec) == {"scale": 0.5, "label": inspect.Parameter.empty}
    credit = get_credit(spec, process=SCHEDULE, scale=0.25, label="x")
    outputs = random_outputs()
    expected = 0.25 * get_credit("uniform", alphas_cumprod=SCHEDULE).margin(outputs)
    torch.testing.assert_close(credit.margin(outputs), expected)


def test_a_class_registered_by_its_module_keeps_its_name(user_module):
    cls = resolve_credit_class("user_credits:AlreadyNamed")
    assert cls.name == "registered-by-its-module"
    assert resolve_credit_class("registered-by-its-module") is cls


@pytest.mark.parametrize(
    "spec, error, words",
    [
        ("unifrom", ValueError, ["Did you mean 'uniform'", "Available: ", "dde-single", "discounted",
                                 "package.module:ClassName"]),
        ("no_such_module_anywhere:X", ModuleNotFoundError, ["no module named 'no_such_module_anywhere'", "PYTHONPATH"]),
        ("broken_credits:X", ImportError, ["importing 'broken_credits' failed", "a_package_that_is_not_installed"]),
        ("user_credits:ScaledUnifrom", AttributeError, ["no attribute 'ScaledUnifrom'", "Did you mean 'ScaledUniform'"]),
        ("user_credits:not_a_class", TypeError, ["not a CreditAssigner subclass"]),
        ("trl_dde.credit:get_credit", TypeError, ["not a CreditAssigner subclass"]),
        ("user_credits:", ValueError, ["must look like 'package.module:ClassName'"]),
    ],
)
def test_unusable_specs_say_what_is_wrong(user_module, spec, error, words):
    with pytest.raises(error) as raised:
        resolve_credit_class(spec)
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_options_are_checked_before_the_strategy_is_built(user_module):
    """Bug 4 at the Python level: a raw TypeError from the constructor becomes a list of accepted options."""
    with pytest.raises(ValueError, match=r"'dde' has no option 'gamma'\. It accepts: alpha_bar_0='one', momentum=0.1"):
        get_credit("dde", alphas_cumprod=SCHEDULE, gamma=0.9)
    with pytest.raises(ValueError, match="no option 'momentun'. Did you mean 'momentum'"):
        get_credit("dde-step", alphas_cumprod=SCHEDULE, momentun=0.2)
    with pytest.raises(ValueError, match=r"takes gamma=0.9, a float; got '0.9' \(str\)"):
        get_credit("discounted", alphas_cumprod=SCHEDULE, gamma="0.9")
    with pytest.raises(ValueError, match="needs the option\\(s\\) label"):
        get_credit("user_credits:ScaledUniform", process=SCHEDULE)
    # **options accepts anything; an int where a float is expected is fine
    assert get_credit("user_credits:AnyOptions", alphas_cumprod=SCHEDULE, whatever=1).options == {"whatever": 1}
    assert get_credit("discounted", alphas_cumprod=SCHEDULE, gamma=1).gamma == 1.0


def test_get_credit_still_builds_builtins_with_their_options():
    credit = get_credit("dde", alphas_cumprod=SCHEDULE, timestep_range=[200, 700], correction_reduction="mean")
    assert isinstance(credit, DDECredit) and credit.timestep_range == (200, 700)
    assert isinstance(get_credit("uniform", alphas_cumprod=SCHEDULE), UniformCredit)


def test_registry_lives_in_its_own_module():
    from trl_dde.credit import base

    assert not any(hasattr(base, name) for name in ("CREDITS", "register_credit", "get_credit", "available_credits"))
    assert textwrap.dedent(registry.__doc__).strip().startswith("The registry of credit strategies")
