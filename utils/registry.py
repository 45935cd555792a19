"""One registry helper for every named choice (models, SDEs, losses, samplers, ...).

Registries are filled at import time by decorators; a duplicate name is an error, an unknown
name raises a ``KeyError`` that lists what is known, and tests can register throw-away entries
with :meth:`Registry.temporary`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """A name -> object table with a decorator interface."""

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: ``@REG.register('name')`` adds the decorated object under ``name``."""

        def decorate(obj: Any) -> Any:
            if name in self._table:
                raise ValueError(f'{self.kind} {name!r} is already registered')
            self._table[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> Any:
        try:
            return self._table[name]
        except KeyError:
            raise KeyError(f'unknown {self.kind} {name!r}; known: {sorted(self._table)}') from None

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        return name in self._table

    @contextlib.contextmanager
    def temporary(self, name: str, obj: Any) -> Iterator[None]:
        """Registers ``obj`` under ``name`` for the duration of a ``with`` block (tests)."""
        self.register(name)(obj)
        try:
            yield
        finally:
            del self._table[name]
