"""Calling the learner's code: ``call_learner``, the one wrapper around every call a checker makes to it.

A stub's ``raise NotImplementedError`` means "not written yet" (the checker prints the friendly line); any other
exception, torch's own NotImplementedError from inside the learner's code included ("... not implemented for
'Float'"), is the learner's bug: it becomes a CheckFailed that names the exception, the input, the learner's own
line, and a hint (a crash hint whose pattern the exception's text contains, else the caller's generic one).
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from course_lib.checks.comparison import describe_value
from course_lib.checks.verdict import CheckFailed, LearnerNotImplemented

RUN_BY_HAND = "run it by hand on the example in the markdown above and look at what each line produces."


def clone_args(value: Any) -> Any:
    """A deep copy of a checker input, so that neither side can change what the other one sees."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value)
    if isinstance(value, (list, tuple)):
        return type(value)(clone_args(v) for v in value)
    if isinstance(value, dict):
        return {k: clone_args(v) for k, v in value.items()}
    return copy.deepcopy(value)


def learner_line(exc: BaseException) -> str:
    """The last line of the learner's own code in ``exc``'s traceback (a notebook cell or their file), as
    ``"\\n  in your cell, line 3: ..."``; "" when the traceback holds none."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "course_lib" not in f.filename and "site-packages" not in f.filename]
    if not own:
        return ""
    frame = own[-1]
    where = "your cell" if frame.filename.startswith("<") or "ipykernel" in frame.filename else frame.filename
    return f"\n  in {where}, line {frame.lineno}: {frame.line}" if frame.line else ""


def raised_by_the_stub(exc: NotImplementedError) -> bool:
    """Whether a NotImplementedError comes from a ``raise NotImplementedError`` statement (the stub), rather than
    from a library call that does not support its input (torch: "... not implemented for 'Float'")."""
    frames = traceback.extract_tb(exc.__traceback__)
    line = (frames[-1].line or "").lstrip() if frames else ""
    return not line or line.startswith("raise")  # a source line we cannot read counts as the stub


def call_learner(fn: Callable[..., Any], *args: Any, name: str = "your function", label: str = "",
                 doing: str = "", hint: str = RUN_BY_HAND, crash_hints: Mapping[str, str] | None = None,
                 **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``: the learner's function, or a computation that runs it (its backward pass).

    Raises:
        LearnerNotImplemented: the stub's ``raise NotImplementedError`` (the checker prints the friendly line).
        CheckFailed: ``fn`` is not callable, or raised anything else: "{name} raised {type}{doing}: {message}
            on the input {label}." with the learner's own line, then "Likely cause: " the hint of the first
            pattern of ``crash_hints`` ({pattern: hint}) found in the exception's type and message, else
            "Hint: " ``hint``.
    """
    if not callable(fn):
        raise CheckFailed(f"{name} should be a function, but it is {describe_value(fn)}. "
                          f"Did you assign the result of a call instead of defining the function?")
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # a learner's bug: explain it, never crash
        if isinstance(exc, NotImplementedError) and raised_by_the_stub(exc):
            raise LearnerNotImplemented from None
        error = f"{type(exc).__name__}: {exc}"
        cause = next((h for pattern, h in (crash_hints or {}).items() if pattern in error), None)
        on = f" on the input {label}" if label else ""
        raise CheckFailed(
            f"{name} raised {type(exc).__name__}{doing}: {exc}{on}.{learner_line(exc)}\n"
            + (f"Likely cause: {cause}" if cause else f"Hint: {hint}")) from None


def expect_inputs_unchanged(originals: Sequence[Any], after: Sequence[Any], name: str,
                            names: Sequence[str] = ()) -> None:
    """Fail (CheckFailed) when the learner's function changed one of its input tensors in place: ``originals`` are
    the arguments as the checker made them, ``after`` the copies the learner's function received, ``names`` the
    inputs' names for the message (default: "number i (a tensor of shape ...)")."""
    for i, (before, now) in enumerate(zip(originals, after)):
        if isinstance(before, torch.Tensor) and isinstance(now, torch.Tensor):
            if before.shape != now.shape or not torch.equal(_comparable(before), _comparable(now)):
                what = names[i] if i < len(names) else f"number {i + 1} ({describe_value(before)})"
                raise CheckFailed(
                    f"Your {name} changed its input {what} in place (an in-place operation such as +=, /=, mul_ or "
                    f"x[...] = on the input, or on a view of it). Hint: compute new tensors (x = x + b, "
                    f"tiles = tiles / s) instead of writing into the inputs.")


def _comparable(t: torch.Tensor) -> torch.Tensor:
    """``t`` in a dtype torch.equal supports (FP8 tensors widened to float32)."""
    return t.detach().float() if t.is_floating_point() and t.element_size() == 1 else t.detach()
