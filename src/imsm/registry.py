"""Name-to-object registries whose lookup errors suggest the nearest valid name."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from imsm.errors import IMSMError

T = TypeVar("T")


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """`unknown task 'gsm8': did you mean 'gsm8k'? (available: cola, gsm8k, ...)`."""
    message = f"unknown {kind} {name!r}"
    close = difflib.get_close_matches(name.lower(), [a.lower() for a in available], n=1, cutoff=0.6)
    if close:
        suggestion = next(a for a in available if a.lower() == close[0])
        message += f": did you mean {suggestion!r}?"
    return message + f" (available: {', '.join(sorted(available))})"


class Registry(Generic[T]):
    """A case-insensitive mapping from names to entries, with did-you-mean errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[key] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name.lower()]
        except KeyError:
            raise IMSMError(unknown_name_message(self.kind, name, self.names())) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)
