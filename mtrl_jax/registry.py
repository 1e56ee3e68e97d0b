"""Small typed registries: swappable learner pieces chosen by name in config.

A loss or an advantage estimator is a plain function registered under a short name
(``policy_loss="cispo"``, ``advantage="rloo"``), so an ablation is a config change. Configs
check their names against the registry in ``__post_init__``, so a typo fails when the config is
built, not deep inside a jitted step.

Non-goals: plugin discovery, entry points, or registering anything other than plain callables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> value map with a decorator to fill it and a helpful error on a missing name.

    Example:
        >>> ops: Registry[int] = Registry("op")
        >>> @ops.register("one")
        ... def one():
        ...     return 1
        >>> ops.get("one")()
        1
        >>> "two" in ops
        False
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Returns a decorator that registers its argument under ``name`` (once only)."""

        def decorator(value: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = value
            return value

        return decorator

    def get(self, name: str) -> T:
        """Returns the value registered under ``name``; ``KeyError`` lists the known names."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def check(self, name: str) -> None:
        """Raises ``ValueError`` (for config validation) unless ``name`` is registered."""
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self.names())})"
