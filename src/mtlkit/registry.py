"""A tiny name -> factory registry, used for backbones, losses and balancers.

Example:
    >>> reg = Registry("widget")
    >>> @reg.register("square")
    ... def square(x):
    ...     return x * x
    >>> reg.get("square")(3)
    9
    >>> reg.get("cube")
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: unknown widget 'cube'; choose one of: square
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mtlkit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def unregister(self, name: str) -> T:
        """Remove ``name`` (a plug-in unloaded, a test's temporary entry) and return what it held."""
        return self._items.pop(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
