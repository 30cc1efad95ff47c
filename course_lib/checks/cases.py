"""A checker's inputs and its catalogue of mistakes: ``Case`` and ``Mistake``, and ``diagnose``.

Every catalogue of the checkers is a list of ``Mistake(hint, fn)``: a deliberately wrong version of the exercise
(called on a case's arguments) and the hint that explains it. The learner's wrong output is explained by the first
mistake whose output agrees with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from course_lib.checks.comparison import compare, describe_value
from course_lib.checks.learner import clone_args


@dataclass(frozen=True)
class Mistake:
    """A common mistake: a deliberately wrong version of the exercise and the hint that explains it."""

    hint: str
    fn: Callable[..., Any]


@dataclass
class Case:
    """One input of a checker: positional and keyword arguments, and how to describe them to the learner."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""

    def describe(self) -> str:
        if self.label:
            return self.label
        parts = [describe_value(a) for a in self.args]
        parts += [f"{k}={describe_value(v)}" for k, v in self.kwargs.items()]
        return "(" + ", ".join(parts) + ")"

    def run(self, fn: Callable[..., Any]) -> Any:
        """``fn`` on fresh copies of the case's arguments."""
        return fn(*clone_args(self.args), **clone_args(self.kwargs))


def diagnose(got: Any, case: Case, mistakes: Sequence[Mistake],
             compare_fn: Callable[[Any, Any], str | None] = compare) -> str | None:
    """The hint of the first mistake whose output on ``case`` agrees with ``got`` (``compare_fn`` None), or None."""
    for mistake in mistakes:
        try:
            wrong = case.run(mistake.fn)
        except Exception:  # a mistake model may not apply to every input
            continue
        if compare_fn(got, wrong) is None:
            return mistake.hint
    return None
