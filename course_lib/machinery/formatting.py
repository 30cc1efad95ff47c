"""The one way a kept notebook output prints numbers: fixed decimals, the same text on every machine.

nbval compares a kept cell's text character by character, so that text must not depend on the CPU's kernels,
the thread count, the torch build, a GPU or the last bit of a float. torch's own repr does (a softmax row sum
prints ``1.`` on one CPU and ``1.00`` on another, because it is 1.0 exactly on one and 0.99999994 on the
other). Every number a kept cell prints goes through these helpers instead:

- ``format_number(x, decimals=4)``: ``"0.5333"``; ``-0.0000`` is written ``0.0000``;
- ``format_tensor(t, decimals=2)``: ``"[3.04, 4.27]"``, nested brackets for 2-D and more;
- ``significant=n`` instead of decimals (both functions): n significant digits, ``"0.0333333"``, ``"2.232e-07"``,
  for numbers whose size is not known in advance (the exercise checkers' messages);
- ``format_table(header, rows, decimals=4)``: aligned columns, numbers formatted as above.

Values are converted to float64 before rounding, so a float32 and a float64 tensor holding the same numbers
print the same text. Integer and boolean values print as integers and ``True``/``False``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _as_python_scalar(x: Any) -> bool | int | float:
    """A Python bool, int or float from a Python, numpy or one-element torch scalar."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"format_number expects a single number, got a tensor of shape {list(x.shape)}; "
                             f"use format_tensor")
        x = x.detach().cpu()
        x = x.double().item() if x.is_floating_point() else x.item()
    elif isinstance(x, np.ndarray):
        if x.size != 1:
            raise ValueError(f"format_number expects a single number, got an array of shape {list(x.shape)}; "
                             f"use format_tensor")
        x = x.reshape(()).item()
    elif isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, bool):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x)
    raise TypeError(f"format_number expects a real number (Python, numpy or torch scalar), got {type(x).__name__}")


def format_number(x: Any, decimals: int = 4, *, significant: int | None = None) -> str:
    """``x`` with exactly ``decimals`` decimals (``-0.0000`` normalised to ``0.0000``), or with ``significant``
    significant digits when given (``%g``: ``"0.0333333"``, ``"2.232e-07"``).

    Args:
        x: a Python int/float/bool, a numpy scalar or a one-element torch tensor of any dtype.
        decimals: digits after the decimal point, >= 0. Integers (and integer tensors) print without decimals.
        significant: significant digits, >= 1, instead of ``decimals``; None for fixed decimals.
    Returns:
        e.g. ``"0.5333"``; ``"inf"``, ``"-inf"``, ``"nan"`` for non-finite values.
    Raises:
        TypeError: x is not a real number; ValueError: x has more than one element, decimals < 0 or
        significant < 1.
    """
    if not isinstance(decimals, numbers.Integral) or decimals < 0:
        raise ValueError(f"decimals must be a non-negative integer, got {decimals!r}")
    if significant is not None and (not isinstance(significant, numbers.Integral) or significant < 1):
        raise ValueError(f"significant must be a positive integer or None, got {significant!r}")
    value = _as_python_scalar(x)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.{significant}g}" if significant is not None else f"{value:.{decimals}f}"
    if text.startswith("-") and float(text) == 0.0:
        text = text[1:]
    return text


def format_tensor(t: Any, decimals: int = 2, *, significant: int | None = None) -> str:
    """A tensor, array or (nested) list as ``"[3.04, 4.27]"``: nested brackets for 2-D and more, rows on one line.

    Args:
        t: a torch tensor (any dtype, any device, with or without grad), a numpy array or a nested list of numbers.
        decimals: digits after the decimal point for floating-point values; integers and booleans print as such.
        significant: significant digits instead of ``decimals`` (see ``format_number``).
    Returns:
        e.g. ``"[[0.06, 0.09], [0.59, 0.61]]"``; a 0-d tensor prints as its number.
    """
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        values = t.double().tolist() if t.is_floating_point() else t.tolist()
    elif isinstance(t, np.ndarray):
        values = t.astype(np.float64).tolist() if np.issubdtype(t.dtype, np.floating) else t.tolist()
    else:
        values = t
    return _format_nested(values, decimals, significant)


def _format_nested(values: Any, decimals: int, significant: int | None) -> str:
    if isinstance(values, (list, tuple)):
        return "[" + ", ".join(_format_nested(v, decimals, significant) for v in values) + "]"
    return format_number(values, decimals, significant=significant)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], decimals: int = 4) -> str:
    """An aligned text table: the first column left-aligned, the others right-aligned.

    Numbers are formatted with ``format_number(value, decimals)``, strings are printed as they are.

    Args:
        header: the column titles.
        rows: one sequence per row, each with ``len(header)`` cells.
        decimals: digits after the decimal point for floating-point cells.
    Raises:
        ValueError: a row has a different number of cells than the header.
    """
    cells = [list(header)]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells, but the header has {len(header)}")
        cells.append([c if isinstance(c, str) else format_number(c, decimals) for c in row])
    widths = [max(len(row[j]) for row in cells) for j in range(len(header))]
    lines = []
    for row in cells:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
