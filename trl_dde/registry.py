"""Named classes of one kind — credit strategies, model families, noise processes — registered by decorator.

The pattern PEFT uses for its tuners: each extension is one module whose class registers itself under a
name; the package looks it up by that name.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """A name → class table for subclasses of ``base``; ``kind`` names them in messages ("credit strategy")."""

    def __init__(self, kind: str, base: type):
        self.kind, self.base = kind, base
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make ``cls`` available as ``name`` (and set ``cls.name``)."""

        def decorator(cls: T) -> T:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"Registering the {self.kind} {name!r} needs a {self.base.__name__} subclass, got {cls!r}.")
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"A {self.kind} named {name!r} is already registered ({self._classes[name].__name__}).")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorator

    def add(self, name: str, cls: T) -> None:
        """Register ``cls`` under ``name`` without changing ``cls.name`` (an alias)."""
        self._classes[name] = cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def classes(self) -> list[T]:
        return list(self._classes.values())

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def get(self, name: str) -> T:
        if name not in self._classes:
            raise ValueError(f"Unknown {self.kind} {name!r}. Available: {', '.join(self.names())}.")
        return self._classes[name]

    def lookup(self, name: str) -> T | None:
        return self._classes.get(name)
