"""A registry of named things (methods, ways of sampling Q, fallback rules) that the config selects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to things, in registration order; :meth:`get` of an unknown name is a one-line error
    that lists the names there are."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name")``."""
        return lambda item: self.add(name, item)

    def names(self) -> list[str]:
        """Every registered name, in registration order (the first is the default)."""
        return list(self._items)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"Unknown {self.what} {name!r}; available: {', '.join(self._items)}.") from None

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())
