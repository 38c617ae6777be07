"""Command-line override values as the bundle receives them.

``python -m monai.bundle run --resume true`` passes the *string* 'true' (python-fire only turns
``True``/``False``/``None`` into Python values), and a string is always truthy, so every switch and
optional number the configs expose goes through these functions.
"""

from __future__ import annotations

from typing import Any

from medsemgan.errors import InputError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", ""}
_NONE = {"none", "null", ""}


def as_bool(value: Any, name: str = "value") -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError(None, f"--{name} must be true or false, got {value!r}")


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE)


def as_optional_int(value: Any, name: str = "value") -> int | None:
    if _is_none(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(None, f"--{name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise InputError(None, f"--{name} must be an integer, got {value!r}")
    return int(number)


def as_optional_float(value: Any, name: str = "value") -> float | None:
    if _is_none(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(None, f"--{name} must be a number, got {value!r}") from None


def as_optional_str(value: Any) -> str | None:
    return None if _is_none(value) else str(value)
