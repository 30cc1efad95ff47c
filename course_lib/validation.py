"""Checks of plain arguments shared by the course's modules: an int in range, a finite number in range.

Wrong types raise TypeError, values out of range (NaN and inf included) raise ValueError; each message names the
argument, the expectation and the value given. NaN or inf met inside a model's forward pass (hidden states, router
scores, an FP8 layer's operands) raise ``NonFiniteError``, a ValueError that ``train.train_step`` reports as
``TrainingDiverged``.
"""

from __future__ import annotations

import math


class NonFiniteError(ValueError):
    """NaN or inf where a layer needs finite values (hidden states, router scores, FP8 operands): the input, or
    during training the weights or activations before it, diverged. ``train.train_step`` turns it into
    ``TrainingDiverged``."""


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) >= ``minimum``; raise TypeError or ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_number(name: str, value: object, minimum: float | None = None, strict: bool = False) -> float:
    """Return ``value`` if it is a finite real number (not a bool) >= ``minimum`` (> when ``strict``); raise
    TypeError or ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if minimum is None:
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    elif not (math.isfinite(value) and (value > minimum if strict else value >= minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g} and finite, got {value}")
    return value
