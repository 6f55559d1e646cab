"""Field checks for the config dataclasses: the type first, then the value, each error naming
the field.

Comparing before checking the type turns ``alpha="16"`` into Python's "'>' not supported
between ..." and lets ``alpha=True`` (a bool is an int) or ``alpha=float("inf")`` through; a
string where a flag is meant (``rslora="yes"``) is truthy. Every check here rejects those with a
``ConfigError`` that says ``Owner.field must be ..., got ...``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


class ConfigError(ValueError, TypeError):
    """A config field of the wrong type or out of range; the message names the field. It is
    both a ``ValueError`` and a ``TypeError``, so callers that catch either still catch it."""


def _field(owner: str, name: str) -> str:
    """``Owner.field `` before a message; nothing for the command line, whose parser names the
    flag itself (``argument --rank: must be ...``)."""
    return f"{owner}.{name} " if owner else ""


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool | np.bool_)


def _of_type(owner: str, name: str, value: Any, kind: type, what: str) -> Any:
    """``value`` if it is a ``kind`` and not a bool (a bool is an int to Python)."""
    if _is_bool(value) or not isinstance(value, kind):
        raise ConfigError(f"{_field(owner, name)}must be {what}, got {value!r}"
                          f"{' (a bool)' if _is_bool(value) else ''}")
    return value


def integer(owner: str, name: str, value: Any, *, minimum: int | None = None,
            optional: bool = False) -> int | None:
    """An int (not a bool), at least ``minimum``; ``None`` only when ``optional``."""
    if value is None and optional:
        return None
    value = int(_of_type(owner, name, value, numbers.Integral, "an integer"))
    if minimum is not None and value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{_field(owner, name)}must be {what}, got {value}")
    return value


def real(owner: str, name: str, value: Any, *, low: float | None = None,
         low_open: bool = False, high: float | None = None, optional: bool = False
         ) -> float | None:
    """A finite number (int or float, not a bool, not NaN or infinite) as a float, in
    ``[low, high)`` (``(low, high)`` with ``low_open``); ``None`` only when ``optional``."""
    if value is None and optional:
        return None
    value = float(_of_type(owner, name, value, numbers.Real, "a number"))
    if not math.isfinite(value):
        raise ConfigError(f"{_field(owner, name)}must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value >= high):
        if high is not None:
            what = f"a number in {'(' if low_open else '['}{low:g}, {high:g})"
        elif low == 0 and low_open:
            what = "a positive number"
        else:
            what = f"a number {'>' if low_open else '>='} {low:g}"
        raise ConfigError(f"{_field(owner, name)}must be {what}, got {value:g}")
    return value


def boolean(owner: str, name: str, value: Any) -> bool:
    """``True`` or ``False`` exactly: ``"yes"``, ``"false"`` or ``1`` are not flags."""
    if not _is_bool(value):
        raise ConfigError(f"{_field(owner, name)}must be True or False, got {value!r}")
    return bool(value)


def choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{_field(owner, name)}must be one of {choices}, got {value!r}")
    return value


def names(owner: str, name: str, value: Any) -> tuple[str, ...]:
    """A non-empty tuple (or list) of strings, as a tuple; a bare string is refused (it would
    iterate as its characters)."""
    if isinstance(value, str) or not isinstance(value, tuple | list) or not value:
        raise ConfigError(f"{_field(owner, name)}must be a non-empty tuple of names, got {value!r}")
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"{owner}.{name} must hold strings, got {bad[0]!r}")
    return tuple(value)
