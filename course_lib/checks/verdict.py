"""How a checker ends: a success line, the friendly "not implemented yet" line, or ``CheckFailed``.

``CheckFailed`` is the one way a checker fails: its message says what was seen, what was expected and the likely
cause, and a notebook shows that message alone (``CheckFailed._render_traceback_``), without a traceback through
the course's code. ``@checker(name)`` wraps a checker's body: the learner's stub (``LearnerNotImplemented``, raised
by ``call_learner``) prints the friendly line, finishing prints the success line. A checker returns None (nothing
echoed under a check cell); ``outcome(check, *args)`` gives tests True (passed) or False (still the stub).
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Any

PASS_MARK = "✓"
TODO_MARK = "○"
FAIL_MARK = "✗"


class LearnerNotImplemented(Exception):
    """Raised inside a checker when the learner's code is still the stub."""


class CheckFailed(AssertionError):
    """A wrong answer. The message says what was seen, what was expected and the likely cause.

    IPython renders an exception through ``_render_traceback_`` when it has one: here the message alone, so a
    learner sees the explanation at once instead of a traceback through the course's code.
    """

    def _render_traceback_(self) -> list[str]:
        lines = str(self).splitlines() or [""]
        return [f"{FAIL_MARK} {lines[0]}", *lines[1:]]


# The outcome of the last checker run in this context: True passed, False still the stub (see ``outcome``).
_OUTCOME: contextvars.ContextVar[bool | None] = contextvars.ContextVar("check_outcome", default=None)


def outcome(check: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """Run ``check(*args, **kwargs)`` and return True when it passed, False when the learner's code is the stub.

    A wrong answer raises CheckFailed as usual. Checkers return None (nothing echoed in a notebook cell); this is
    the boolean answer for tests and scripts. Raises RuntimeError for a function not built with ``@checker``.
    """
    token = _OUTCOME.set(None)
    try:
        check(*args, **kwargs)
        result = _OUTCOME.get()
    finally:
        _OUTCOME.reset(token)
    if result is None:
        raise RuntimeError(f"{getattr(check, '__name__', check)!r} is not a checker built with @checker")
    return result


def expect(condition: bool, message: str) -> None:
    """Fail the check with ``message`` (CheckFailed) unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def not_implemented_line(name: str) -> str:
    """The line a checker prints while the learner's function is still the stub."""
    return (f"{TODO_MARK} {name}: not implemented yet. Write it in the cell above and run this cell again; "
            f"meanwhile the notebook goes on with the reference implementation.")


def checker(name: str) -> Callable[[Callable[..., str | None]], Callable[..., None]]:
    """Decorate a checker body: the learner's stub prints the friendly line; finishing prints the success line
    (with the body's summary, if it returns one). The checker returns None; a wrong answer is the body's
    CheckFailed; ``outcome`` gives tests the boolean answer."""

    def wrap(body: Callable[..., str | None]) -> Callable[..., None]:
        @functools.wraps(body)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                summary = body(*args, **kwargs)
            except LearnerNotImplemented:
                print(not_implemented_line(name))
                _OUTCOME.set(False)
                return None
            print(f"{PASS_MARK} {name} is correct" + (f": {summary}" if summary else "."))
            _OUTCOME.set(True)
            return None

        return run

    return wrap
