"""The registry of credit strategies: names (and ``"package.module:ClassName"`` specs) → ``CreditAssigner`` classes.

It mirrors PEFT's method registry: each strategy module registers itself under a name with
``@register_credit(name)`` and ``get_credit(name, **kwargs)`` builds it. A user's own strategy needs no
registration to be used from a config or the command line: ``credit="my_pkg.my_module:MyCredit"`` imports
the class, checks it is a ``CreditAssigner`` and registers it under that spec string.

``credit_options(spec)`` reads the keyword options a strategy accepts from its constructor, so a
misspelled ``credit_kwargs`` entry is refused (with the closest accepted name) before any model loads.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, TypeVar

import torch

from ..processes import NoiseProcess
from ..registry import Registry
from .base import CreditAssigner

__all__ = ["available_credits", "check_credit_options", "credit_options", "get_credit", "register_credit",
           "resolve_credit_class"]

_CreditType = TypeVar("_CreditType", bound=type[CreditAssigner])
CREDITS: Registry = Registry("credit strategy", CreditAssigner)

# Constructor parameters that are not options: the schedule (or noise process) comes first, whatever its
# name; ``timestep_range`` is a DDEConfig field of its own.
_NOT_OPTIONS = ("timestep_range",)


def register_credit(name: str) -> Callable[[_CreditType], _CreditType]:
    """Class decorator that makes a ``CreditAssigner`` subclass available as ``get_credit(name)``."""
    return CREDITS.register(name)


def available_credits() -> list[str]:
    """Names accepted by ``get_credit``, sorted (class specs resolved so far included)."""
    return CREDITS.names()


def _closest(word: str, candidates: list[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest candidate, or ``""``."""
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" Did you mean {matches[0]!r}?" if matches else ""


def _import_class(spec: str) -> type:
    """Import ``ClassName`` from ``package.module`` for a ``"package.module:ClassName"`` spec."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise ValueError(f"Credit strategy spec {spec!r} must look like 'package.module:ClassName'.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name + ".").startswith(error.name + "."):  # it, not one it imports
            raise ModuleNotFoundError(
                f"Credit strategy {spec!r}: no module named {module_name!r}. It is imported like any Python module: "
                "install its package, or run from the folder that holds it (the trl-dde command searches the "
                "current folder) or add that folder to PYTHONPATH.",
                name=error.name,
            ) from error
        raise ImportError(f"Credit strategy {spec!r}: importing {module_name!r} failed: {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        public = sorted(name for name, value in vars(module).items()
                        if isinstance(value, type) and issubclass(value, CreditAssigner) and value is not CreditAssigner)
        found = f" CreditAssigner subclasses in it: {', '.join(public)}." if public else ""
        raise AttributeError(
            f"Credit strategy {spec!r}: module {module_name!r} has no attribute {attribute!r}."
            f"{_closest(attribute, public)}{found}"
        ) from None


def resolve_credit_class(spec: str) -> type[CreditAssigner]:
    """The strategy class for a registered name or a ``"package.module:ClassName"`` spec.

    A spec's class is imported, must subclass ``CreditAssigner``, and is registered under the spec string
    (unless ``@register_credit`` already registered it under a name of its own, which it keeps), so
    ``get_credit(spec, ...)`` works afterwards too.
    """
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"A credit strategy is named by a non-empty string, got {spec!r}.")
    if spec in CREDITS:
        return CREDITS.get(spec)
    if ":" not in spec:
        raise ValueError(
            f"Unknown credit strategy {spec!r}.{_closest(spec, available_credits())} Available: "
            f"{', '.join(available_credits())}; or your own class as 'package.module:ClassName'."
        )
    cls = _import_class(spec)
    if not (isinstance(cls, type) and issubclass(cls, CreditAssigner)):
        raise TypeError(
            f"Credit strategy {spec!r} is {cls!r}, not a CreditAssigner subclass. Subclass "
            "trl_dde.CreditAssigner and implement margin(outputs)."
        )
    if CREDITS.lookup(cls.name) is not cls:  # not registered under a name of its own: the spec becomes its name
        cls.name = spec
    CREDITS.add(spec, cls)
    return cls


def credit_options(spec: str) -> dict[str, Any]:
    """The keyword options a strategy accepts and their defaults, read from its constructor.

    The first parameter (the noise schedule or process) and ``timestep_range`` are not options. An option
    without a default maps to ``inspect.Parameter.empty`` (required).
    """
    parameters = list(inspect.signature(resolve_credit_class(spec).__init__).parameters.values())[2:]  # self, schedule
    return {
        parameter.name: parameter.default
        for parameter in parameters
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        and parameter.name not in _NOT_OPTIONS
    }


def _accepts_any_option(spec: str) -> bool:
    parameters = inspect.signature(resolve_credit_class(spec).__init__).parameters.values()
    return any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters)


def _describe(options: dict[str, Any]) -> str:
    if not options:
        return "no options"
    return ", ".join(name if default is inspect.Parameter.empty else f"{name}={default!r}"
                     for name, default in options.items())


def _check_option_type(spec: str, key: str, value: Any, default: Any) -> None:
    """An option whose default is a bool, int, float or str takes a value of that kind (an int for a float)."""
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
    expected = kinds.get(type(default))
    if expected is None:
        return
    if not isinstance(value, expected) or (isinstance(value, bool) and type(default) is not bool):
        raise ValueError(f"The credit strategy {spec!r} takes {key}={default!r}, a {type(default).__name__}; "
                         f"got {value!r} ({type(value).__name__}).")


def check_credit_options(spec: str, options: dict[str, Any]) -> None:
    """Refuse options the strategy does not accept, values of the wrong kind and missing required options,
    naming what it accepts.

    A strategy whose constructor takes ``**kwargs`` accepts any option; only its required ones are checked.
    """
    accepted = credit_options(spec)
    unknown = [] if _accepts_any_option(spec) else [key for key in options if key not in accepted]
    if unknown:
        key = unknown[0]
        raise ValueError(
            f"The credit strategy {spec!r} has no option {key!r}.{_closest(key, list(accepted))} "
            f"It accepts: {_describe(accepted)}."
        )
    for key, value in options.items():
        _check_option_type(spec, key, value, accepted.get(key))
    missing = [name for name, default in accepted.items() if default is inspect.Parameter.empty and name not in options]
    if missing:
        raise ValueError(f"The credit strategy {spec!r} needs the option(s) {', '.join(missing)}. "
                         f"It accepts: {_describe(accepted)}.")


def get_credit(name: str, process: NoiseProcess | None = None, alphas_cumprod: torch.Tensor | None = None,
               **kwargs) -> CreditAssigner:
    """Build the strategy registered as ``name`` (or a ``"package.module:ClassName"`` spec) for ``process`` (or an
    ε-predicting DDPM ``alphas_cumprod``).

    ``kwargs`` are optionally ``timestep_range`` and the strategy's options, which are checked first
    (``check_credit_options``). The process is passed positionally, so a user strategy may name that parameter as
    it likes (``alphas_cumprod``, ``process``, ...).
    """
    cls = resolve_credit_class(name)
    if (process is None) == (alphas_cumprod is None):
        raise TypeError("get_credit needs exactly one of process= (a NoiseProcess) or alphas_cumprod=.")
    check_credit_options(name, {key: value for key, value in kwargs.items() if key not in _NOT_OPTIONS})
    return cls(process if process is not None else alphas_cumprod, **kwargs)
