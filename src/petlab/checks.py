"""Checks of configured values: a wrong one is a PetlabError that names the key and what is valid."""

from __future__ import annotations

from typing import Any

from petlab.errors import PetlabError


def whole_number(name: str, value: Any, minimum: int, maximum: int | None = None, hint: str = "") -> int:
    """``value`` if it is a whole number in [minimum, maximum]; else a PetlabError naming the key and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum and value > maximum):
        valid = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise PetlabError(f"{name}={value!r} is not valid: it must be a whole number {valid}{hint}")
    return value


def switch(name: str, value: Any) -> bool:
    """``value`` if it is true or false; else a PetlabError naming the key."""
    if not isinstance(value, bool):
        raise PetlabError(f"{name}={value!r} is not valid: give true or false")
    return value


def real_number(name: str, value: Any, minimum: float, below: float | None = None) -> float:
    """``value`` if it is a number >= minimum (and < ``below``); else a PetlabError naming the key and the range."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < minimum
        or (below is not None and value >= below)
    ):
        valid = f">= {minimum:g}" if below is None else f"from {minimum:g} to below {below:g}"
        raise PetlabError(f"{name}={value!r} is not valid: it must be a number {valid}")
    return float(value)
