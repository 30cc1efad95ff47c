"""Comparing a learner's value with the expected one, and describing values in a checker's messages.

``compare(got, expected)`` returns None when they agree (numbers and tensors within tolerance, tuples item by
item), else one sentence saying what was seen and what was expected; tensors are compared by shape, kind, then
values, pointing at the first row that differs. Numbers print through ``course_lib.machinery.formatting`` with
significant digits (``describe_value``, ``format_value``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from course_lib.machinery.formatting import format_number, format_tensor

DIGITS = 4  # significant digits of a tensor's values in a message (a single number gets DIGITS + 2)
HALF_PRECISION = (torch.float16, torch.bfloat16)  # a result in these cannot meet a float32 tolerance


def format_value(value: Any) -> str:
    """A tensor, array or number for a checker message: ``[0.5412, 0.4588]``, ``0.0333333``."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim > 0:
        return format_tensor(value, significant=DIGITS)
    if isinstance(value, (torch.Tensor, np.ndarray, numbers.Real)):
        return format_number(value, significant=DIGITS + 2)
    return repr(value)


def describe_value(value: Any, max_items: int = 6) -> str:
    """A short, readable rendering of a value for a checker message (tensors show shape, dtype, values)."""
    if isinstance(value, torch.Tensor):
        head = f"tensor of shape {list(value.shape)}, dtype {str(value.dtype).replace('torch.', '')}"
        if value.numel() <= max_items:
            return f"{head}: {format_value(value)}"
        return head
    if isinstance(value, np.ndarray):
        return f"array of shape {list(value.shape)}"
    if isinstance(value, float):
        return format_number(value, significant=DIGITS + 2)
    if isinstance(value, (list, tuple)) and len(value) > max_items:
        return f"{type(value).__name__} of {len(value)} items"
    return repr(value)


def compare(got: Any, expected: Any, *, rtol: float = 1e-4, atol: float = 1e-6, what: str = "your result") -> str | None:
    """Compare a learner's value with the expected one.

    Returns None when they agree (numbers and tensors within tolerance), otherwise one sentence that says
    what was seen and what was expected. Tensors are compared by shape first, then by values; a tuple is
    compared item by item.
    """
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)):
            return f"{what} is a {type(got).__name__}, but a tuple of {len(expected)} items was expected"
        if len(got) != len(expected):
            return f"{what} has {len(got)} items, but {len(expected)} were expected"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = compare(g, e, rtol=rtol, atol=atol, what=f"item {i} of {what}")
            if problem:
                return problem
        return None
    if isinstance(expected, torch.Tensor):
        return _compare_tensors(got, expected, rtol=rtol, atol=atol, what=what)
    if isinstance(expected, bool):
        return None if got is expected or got == expected else f"{what} is {got!r}, expected {expected!r}"
    if isinstance(expected, numbers.Number):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, np.generic):
            got = got.item()
        if not isinstance(got, numbers.Number) or isinstance(got, bool):
            return f"{what} is {describe_value(got)}, but a number was expected"
        if isinstance(got, complex) or not math.isfinite(float(got)):
            return f"{what} is {got!r}, but a finite number was expected (close to {format_value(float(expected))})"
        if math.isclose(float(got), float(expected), rel_tol=rtol, abs_tol=atol):
            return None
        return f"{what} is {format_value(float(got))}, but it should be {format_value(float(expected))}"
    if got == expected:
        return None
    return f"{what} is {describe_value(got)}, but it should be {describe_value(expected)}"


def _compare_tensors(got: Any, expected: torch.Tensor, *, rtol: float, atol: float, what: str) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"{what} is {describe_value(got)}, but a torch tensor of shape {list(expected.shape)} was expected"
    if got.shape != expected.shape:
        return (f"{what} has shape {list(got.shape)}, but shape {list(expected.shape)} was expected")
    if expected.is_floating_point() != got.is_floating_point() and expected.dtype != torch.bool:
        kind = "floating-point" if expected.is_floating_point() else "integer"
        return f"{what} has dtype {got.dtype}, but a {kind} tensor ({expected.dtype}) was expected"
    got_c, exp_c = got.detach().cpu(), expected.detach().cpu()
    if expected.is_floating_point():
        if torch.isnan(got_c).any() and not torch.isnan(exp_c).any():
            return f"{what} contains NaN; it should be {format_value(_first_rows(exp_c))}"
        if torch.allclose(got_c.double(), exp_c.double(), rtol=rtol, atol=atol, equal_nan=True):
            return None
    elif torch.equal(got_c.to(exp_c.dtype), exp_c):
        return None
    if got.dtype in HALF_PRECISION and expected.dtype in (torch.float32, torch.float64):
        return (f"{what} has dtype {got.dtype}, whose ~3 significant digits cannot hold the {expected.dtype} result "
                f"to the checker's tolerance; compute and return it in {expected.dtype}")
    if got_c.dim() == 0:
        return f"{what} is {format_value(got_c)}, but it should be {format_value(exp_c)}"
    # Point at the first row that differs: it is what a learner can compare by hand.
    if expected.is_floating_point():
        wrong = ~torch.isclose(got_c.double(), exp_c.double(), rtol=rtol, atol=atol, equal_nan=True)
    else:
        wrong = got_c.to(exp_c.dtype) != exp_c
    first = torch.nonzero(wrong)[0].tolist()
    if got_c.dim() > 2:  # one vector along the last dimension, so the message stays one line
        lead = tuple(first[:-1])
        return (f"at index {list(lead)}, {what} is {format_value(got_c[lead])}, but it should be "
                f"{format_value(exp_c[lead])}")
    row = first[0]
    where = f"row {row}" if got_c.dim() > 1 else f"position {row}"
    return f"at {where}, {what} is {format_value(got_c[row])}, but it should be {format_value(exp_c[row])}"


def _first_rows(t: torch.Tensor, n: int = 2) -> torch.Tensor:
    while t.dim() > 2:
        t = t[0]
    return t[:n] if t.dim() > 0 else t
