"""Rewards as plain callables, the way TRL's ``GRPOTrainer(reward_funcs=...)`` takes them.

A reward is any callable ``f(images, prompts) -> list[float] | Tensor``: one score per image, higher is
better, ``images`` a list of ``PIL.Image.Image`` and ``prompts`` the list of their prompts (same length).
Wherever a scorer name is accepted, such a callable is too, and on the command line
``"module.path:function"`` (or ``"path/to/file.py:function"``) imports one, so scoring with your own
reward never needs a change to the package.

* ``register_reward(name)`` makes a scorer class or factory available by name;
* ``load_reward(spec, **kwargs)`` builds a ``Reward`` from a registered name, a callable or an import string;
* ``combine_rewards(rewards, weights)`` is their weighted sum.

Every ``Reward`` returns a float32 CPU tensor ``[N]`` and carries a ``description`` (for scorers: model,
version and scale) that reports print next to the numbers.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable, Sequence

import torch

__all__ = ["Reward", "RewardFunction", "available_rewards", "combine_rewards", "load_reward", "register_reward"]

RewardFunction = Callable[[list, list], Any]  # (images: list[PIL.Image.Image], prompts: list[str]) -> list[float] | Tensor
_REGISTRY: dict[str, Callable[..., RewardFunction]] = {}


class Reward:
    """A reward callable with a name and a description, normalising every output to ``Tensor[N]`` (float32, CPU).

    Args:
        function: the callable ``f(images, prompts)``.
        name: a short label for tables (default: the callable's name).
        description: what it measures and on which scale (default: ``name``).
    """

    def __init__(self, function: RewardFunction, name: str | None = None, description: str | None = None):
        if not callable(function):
            raise TypeError(f"A reward must be callable as f(images, prompts); got {type(function).__name__}.")
        self.function = function
        self.name = name or getattr(function, "name", None) or _callable_name(function)
        self.description = description or getattr(function, "description", None) or self.name

    def __call__(self, images: Sequence, prompts: Sequence[str]) -> torch.Tensor:
        images, prompts = list(images), list(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"Reward {self.name!r} got {len(images)} images but {len(prompts)} prompts; pass one "
                             "prompt per image.")
        scores = self.function(images, prompts)
        scores = torch.as_tensor(scores.detach() if torch.is_tensor(scores) else scores, dtype=torch.float32).cpu()
        scores = scores.reshape(-1)
        if scores.numel() != len(images):
            raise ValueError(f"Reward {self.name!r} returned {scores.numel()} scores for {len(images)} images; a reward "
                             "must return one score per image.")
        if not torch.isfinite(scores).all():
            bad = int((~torch.isfinite(scores)).nonzero()[0])
            raise ValueError(f"Reward {self.name!r} returned {scores[bad].item()} for image {bad} (prompt {prompts[bad]!r}); "
                             "scores must be finite.")
        return scores

    def __repr__(self) -> str:
        return f"Reward({self.name!r}: {self.description})"


def _callable_name(function: Callable) -> str:
    return getattr(function, "__name__", None) or type(function).__name__


def register_reward(name: str) -> Callable:
    """Decorator registering a scorer class (or a factory function) under ``name``.

    The registered object is called with ``load_reward``'s keyword arguments and must return a reward
    callable; it may set ``name``/``description`` attributes on what it returns.
    """

    def decorator(factory: Callable[..., RewardFunction]) -> Callable[..., RewardFunction]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"A reward named {name!r} is already registered ({_REGISTRY[name]!r}).")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_rewards() -> list[str]:
    """Names ``load_reward`` accepts, sorted."""
    return sorted(_REGISTRY)


def _import_object(spec: str) -> Any:
    """``"package.module:attribute"`` or ``"path/to/file.py:attribute"``; the current folder is importable."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise ValueError(f"{spec!r} is not an import string; use 'module.path:function' or 'file.py:function'.")
    if module_name.endswith(".py"):
        if not os.path.isfile(module_name):
            raise FileNotFoundError(f"Reward file {module_name} (from {spec!r}) does not exist.")
        module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(module_name))[0], module_name)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        added = os.getcwd() not in sys.path
        if added:  # like `python -m`, let a module in the working folder be found by the console script too
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name.split(".")[0] and error.name != module_name:
                raise  # the reward's module exists but one of its own imports is missing: report that as is
            raise ModuleNotFoundError(f"No module named {module_name!r} (from the reward {spec!r}): run from the folder "
                                      f"holding {module_name.replace('.', '/')}.py, put it on PYTHONPATH, or pass "
                                      f"'path/to/file.py:{attribute}'.", name=error.name) from None
        finally:
            if added:
                sys.path.remove(os.getcwd())
    if not hasattr(module, attribute):
        raise AttributeError(f"{module_name} has no attribute {attribute!r} (from the reward {spec!r}).")
    return getattr(module, attribute)


def load_reward(spec: str | RewardFunction | Reward, **kwargs) -> Reward:
    """A ``Reward`` from a registered name (``available_rewards()``), a callable, or an import string.

    ``kwargs`` configure registered scorers (weights location, ``device``, ``batch_size``, ...) and classes
    named by an import string (they are instantiated with them); a plain function takes none.
    """
    if isinstance(spec, Reward):
        if kwargs:
            raise TypeError(f"Reward {spec.name!r} is already built; it takes no options (got {sorted(kwargs)}).")
        return spec
    target, label = spec, None
    if isinstance(spec, str):
        if spec in _REGISTRY:
            target, label = _REGISTRY[spec](**kwargs), spec
            kwargs = {}
        elif ":" in spec:
            target, label = _import_object(spec), spec.rpartition(":")[2]
        else:
            raise ValueError(f"Unknown reward {spec!r}. Registered: {', '.join(available_rewards())}; or pass a callable "
                             "f(images, prompts), or 'module.path:function' / 'file.py:function'.")
    if inspect.isclass(target):
        target = target(**kwargs)
    elif kwargs:
        raise TypeError(f"The reward function {_callable_name(target)!r} takes no options; got {sorted(kwargs)}.")
    return Reward(target, name=getattr(target, "name", None) or label)


def combine_rewards(rewards: Sequence[str | RewardFunction | Reward], weights: Sequence[float] | None = None) -> Reward:
    """The weighted sum ``Σ w_i · r_i(images, prompts)`` (equal weights of 1 by default).

    Scorers live on different scales (PickScore ≈ 20, HPS ≈ 0.27, aesthetic ≈ 5): choose weights accordingly.
    """
    rewards = [load_reward(reward) for reward in rewards]
    weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
    if not rewards or len(weights) != len(rewards):
        raise ValueError(f"combine_rewards needs one weight per reward; got {len(rewards)} rewards and {len(weights)} weights.")

    def combined(images, prompts):
        return sum(weight * reward(images, prompts) for weight, reward in zip(weights, rewards))

    terms = " + ".join(f"{weight:g}·{reward.name}" for weight, reward in zip(weights, rewards))
    return Reward(combined, name=terms, description=f"weighted sum {terms} ({'; '.join(r.description for r in rewards)})")


from . import scorers  # noqa: E402,F401  (registers the built-in scorers; they import this module's decorator)
