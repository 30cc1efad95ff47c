"""``check_function``: the checker of an exercise that is a pure function.

It runs the learner's function on every case and compares it with the reference: right on every case (values
and, for a differentiable quantity, gradients), it prints the success line; still the stub, the friendly line;
wrong, it raises CheckFailed naming the input, what the function returned, what was expected and, when a mistake
of the catalogue gives the same wrong answer, its hint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from course_lib.checks.cases import Case, Mistake, diagnose
from course_lib.checks.comparison import compare
from course_lib.checks.gradients import gradient_problem
from course_lib.checks.learner import call_learner, clone_args, expect_inputs_unchanged
from course_lib.checks.verdict import CheckFailed, checker


def check_function(
    fn: Callable[..., Any],
    *,
    name: str,
    reference: Callable[..., Any],
    cases: Sequence[Case],
    mistakes: Sequence[Mistake] = (),
    compare_fn: Callable[[Any, Any], str | None] | None = None,
    generic_hint: str = "Compare your code with the equation in the markdown above, term by term.",
    differentiable: Sequence[int] = (),
    objective: Callable[[Any], Any] | None = None,
    gradient_hint: str = "",
    crash_hints: Mapping[str, str] | None = None,
) -> None:
    """Check a learner's pure function against the reference on every case.

    Prints a success line when fn agrees with ``reference`` on all ``cases``, and a friendly line while fn
    raises NotImplementedError; otherwise raises CheckFailed naming the input, what fn returned, what was
    expected, and the likely mistake when one of ``mistakes`` gives the same wrong answer.

    Args:
        compare_fn: ``(got, expected) -> None or what differs`` (default ``compare``).
        differentiable: positions of the arguments (tensors, or lists of tensors) the output is differentiable
            in. When given, a right value must also have the right gradient with respect to them: autograd on
            ``objective(output)`` for the learner's fn and for the reference (see ``gradient_problem``).
        objective: the scalar whose gradient is compared, from an output (default: the output itself when it
            is a single number, else its sum weighted by fixed random numbers).
        gradient_hint: what a gradient that differs in another way than missing or scaled most likely means
            for this exercise.
        crash_hints: {pattern: hint}: when fn raises an exception whose type and message contain the pattern,
            the hint is the likely cause (see ``call_learner``).
    """
    compare_fn = compare_fn or compare

    @checker(name)
    def body() -> str:
        for case in cases:
            learner_args, learner_kwargs = clone_args(case.args), clone_args(case.kwargs)
            got = call_learner(fn, *learner_args, name=f"Your {name}", label=case.describe(),
                               crash_hints=crash_hints, **learner_kwargs)
            expect_inputs_unchanged([*case.args, *case.kwargs.values()],
                                    [*learner_args, *learner_kwargs.values()], name)
            problem = compare_fn(got, case.run(reference))
            if problem is None:
                if differentiable:
                    problem = gradient_problem(fn, reference, case, differentiable, name=name, mistakes=mistakes,
                                               compare_fn=compare_fn, objective=objective, hint=gradient_hint,
                                               crash_hints=crash_hints)
                    if problem:
                        raise CheckFailed(problem)
                continue
            message = f"For the input {case.describe()}: {problem}."
            cause = diagnose(got, case, mistakes, compare_fn)
            raise CheckFailed(f"{message}\nLikely cause: {cause}" if cause else f"{message}\nHint: {generic_hint}")
        checked = ", values and gradients," if differentiable else ""
        return f"it agrees with the reference{checked} on all {len(cases)} cases"

    return body()
