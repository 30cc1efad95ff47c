"""Validation at the boundary: where a user's input enters, it is checked once; inside, the math runs unchecked.

``@boundary(validator)`` marks a function or a module's ``forward`` as a boundary. The validator takes the
function's parameters by name (defaults filled in) and raises TypeError for a wrong type, ValueError for a wrong
value, each message naming the argument, the expectation and the value given. It runs when a user calls the
function; a call made while another boundary runs (the model's forward calling an MoE layer, the layer calling
``topk_route``) skips it: the outer boundary and the constructors have checked what flows inside, so a forward pass
reads no tensor back to the host for a check. ``check_int`` / ``check_number`` check plain arguments in one message
format. NaN or inf in a user's tensor raise ``NonFiniteError``, a ValueError.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_INSIDE = contextvars.ContextVar("course_lib_inside_a_boundary", default=False)


def boundary(validator: Callable[..., None]) -> Callable[[F], F]:
    """Decorate a function whose arguments come from a user: ``validator(**arguments)`` checks them first, unless
    the call comes from inside another boundary. The decorated function keeps its name, docstring and signature
    (``fn.__wrapped__`` is the unchecked math; ``fn.validator`` the check)."""
    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if _INSIDE.get():
                return fn(*args, **kwargs)
            arguments = signature.bind(*args, **kwargs)
            arguments.apply_defaults()
            validator(**arguments.arguments)
            token = _INSIDE.set(True)
            try:
                return fn(*args, **kwargs)
            finally:
                _INSIDE.reset(token)

        checked.validator = validator  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]
    return decorate


class NonFiniteError(ValueError):
    """NaN or inf where a layer needs finite values (hidden states, router scores, FP8 operands): the input, or
    during training the weights or activations before it, diverged. ``training.step.train_step`` turns it into
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
