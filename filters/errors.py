"""The exceptions `filters` raises on purpose, so `app/` maps one family to problem responses.

Each message names the field or key at fault and what to do about it.
"""

from __future__ import annotations

from collections.abc import Hashable


class FilterError(Exception):
    """Base class of everything this library raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidFilterConfig(FilterError, ValueError):
    """A filter option has an impossible value; `field` names it (dotted for nested options)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class DuplicateKey(FilterError, ValueError):
    """A novelty-index key was added twice; keys identify tasks, so this is a caller bug."""

    def __init__(self, key: Hashable) -> None:
        super().__init__(
            f"key {key!r} is already in the novelty index; remove it first to replace its text, "
            "or use a unique key per task"
        )
        self.key = key


class UnknownKey(FilterError, LookupError):
    """A novelty-index key was asked for but was never added (or was removed)."""

    def __init__(self, key: Hashable) -> None:
        super().__init__(
            f"key {key!r} is not in the novelty index; check `key in index` before removing"
        )
        self.key = key
