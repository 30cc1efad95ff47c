"""The machinery every exercise checker is built from.

A checker runs the learner's function on fixed and random cases and compares it with the reference:

- right on every case: prints a success line;
- still the stub (raises NotImplementedError): prints a friendly "not implemented yet" line, so the
  notebook goes on with the reference implementation;
- wrong: raises ``CheckFailed`` (an AssertionError) whose message says what was seen, what was expected and,
  when the wrong answer matches a known mistake, the likely cause with a hint. In a notebook it shows as that
  message alone, without a traceback through the course's code (``CheckFailed._render_traceback_``). A
  learner's exception, a wrong type or a wrong shape is explained in the same way, with the learner's own
  line: a checker never crashes on a learner's bug.

A checker returns None, so a check cell prints nothing but the checker's own line (no ``True`` echoed as the
cell's value). Tests ask ``outcome(check, *args)`` for True (passed) or False (still the stub).

For a differentiable quantity (a loss, gate weights, a module's output), the checker also compares gradients:
autograd on the learner's output against the reference's, with respect to the differentiable inputs
(``check_function(..., differentiable=(0,))``). It names the three ways a right value can hide a wrong
gradient: no gradient at all (``.detach()``, ``.item()``, ``torch.tensor(...)`` of a result), a gradient
scaled wrongly, and a gradient that flows where it should not (for a balance loss: through the hit counts f);
a mistake of the exercise's catalogue whose gradient matches the learner's names the cause.

Two ways to write a checker:

``check_function(...)``
    for an exercise that is a pure function: give the reference, the cases and the catalogue of mistakes
    (each a deliberately wrong version of the function with its hint). When the learner's output differs
    from the reference, the checker runs each mistake on the same input; the first one the learner's output
    agrees with names the cause.

``@checker("name")``
    for anything else (a module, a stateful update): write the body with ``call_learner`` and ``expect``;
    the decorator turns the learner's NotImplementedError into the friendly line and prints the success line.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import math
import numbers
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

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
    the boolean answer for tests and scripts.
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


# --------------------------------------------------------------------------------------------- describing
def describe_value(value: Any, max_items: int = 6) -> str:
    """A short, readable rendering of a value for a checker message (tensors show shape, dtype, values)."""
    if isinstance(value, torch.Tensor):
        head = f"tensor of shape {list(value.shape)}, dtype {str(value.dtype).replace('torch.', '')}"
        if value.numel() <= max_items:
            return f"{head}: {format_numbers(value)}"
        return head
    if isinstance(value, np.ndarray):
        return f"array of shape {list(value.shape)}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)) and len(value) > max_items:
        return f"{type(value).__name__} of {len(value)} items"
    return repr(value)


def format_numbers(value: Any, digits: int = 4) -> str:
    """Format a tensor, array or number compactly: [0.5412, 0.4588]."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bool:
            return str(value.tolist())
        value = value.double().numpy() if value.is_floating_point() else value.numpy()
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.floating):
            return np.array2string(value, precision=digits, separator=", ", suppress_small=True)
        return np.array2string(value, separator=", ")
    if isinstance(value, float):
        return f"{value:.{digits + 2}g}"
    return repr(value)


# --------------------------------------------------------------------------------------------- comparing
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
            return f"{what} is {got!r}, but a finite number was expected (close to {format_numbers(float(expected))})"
        if math.isclose(float(got), float(expected), rel_tol=rtol, abs_tol=atol):
            return None
        return f"{what} is {format_numbers(float(got))}, but it should be {format_numbers(float(expected))}"
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
            return f"{what} contains NaN; it should be {format_numbers(_first_rows(exp_c))}"
        if torch.allclose(got_c.double(), exp_c.double(), rtol=rtol, atol=atol, equal_nan=True):
            return None
    elif torch.equal(got_c.to(exp_c.dtype), exp_c):
        return None
    if got_c.dim() == 0:
        return f"{what} is {format_numbers(got_c)}, but it should be {format_numbers(exp_c)}"
    # Point at the first row that differs: it is what a learner can compare by hand.
    if expected.is_floating_point():
        wrong = ~torch.isclose(got_c.double(), exp_c.double(), rtol=rtol, atol=atol, equal_nan=True)
    else:
        wrong = got_c.to(exp_c.dtype) != exp_c
    first = torch.nonzero(wrong)[0].tolist()
    if got_c.dim() > 2:  # one vector along the last dimension, so the message stays one line
        lead = tuple(first[:-1])
        return (f"at index {list(lead)}, {what} is {format_numbers(got_c[lead])}, but it should be "
                f"{format_numbers(exp_c[lead])}")
    row = first[0]
    where = f"row {row}" if got_c.dim() > 1 else f"position {row}"
    return f"at {where}, {what} is {format_numbers(got_c[row])}, but it should be {format_numbers(exp_c[row])}"


def _first_rows(t: torch.Tensor, n: int = 2) -> torch.Tensor:
    while t.dim() > 2:
        t = t[0]
    return t[:n] if t.dim() > 0 else t


# --------------------------------------------------------------------------------------------- calling
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


def _learner_frame(exc: BaseException) -> str:
    """The last line of the learner's own code in a traceback (a notebook cell or their file), if any."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "course_lib" not in f.filename and "site-packages" not in f.filename]
    if not own:
        return ""
    frame = own[-1]
    where = "your cell" if frame.filename.startswith("<") or "ipykernel" in frame.filename else frame.filename
    return f"\n  in {where}, line {frame.lineno}: {frame.line}" if frame.line else ""


def call_learner(fn: Callable[..., Any], *args: Any, name: str = "your function", label: str = "", **kwargs: Any) -> Any:
    """Call the learner's code; turn NotImplementedError and any other exception into a checker outcome."""
    if not callable(fn):
        raise CheckFailed(f"{name} should be a function, but it is {describe_value(fn)}. "
                             f"Did you assign the result of a call instead of defining the function?")
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # a learner's bug: explain it, never crash
        if isinstance(exc, NotImplementedError) and _raised_by_the_stub(exc):
            raise LearnerNotImplemented from None
        # (torch's own NotImplementedError, "... not implemented for 'Float'", is a bug like any other)
        on = f" on the input {label}" if label else ""
        raise CheckFailed(
            f"{name} raised {type(exc).__name__}: {exc}{on}.{_learner_frame(exc)}\n"
            f"Hint: run it by hand on the example in the markdown above and look at what each line produces."
        ) from None


def _raised_by_the_stub(exc: NotImplementedError) -> bool:
    """Whether a NotImplementedError comes from a ``raise NotImplementedError`` statement (the stub), rather than
    from a library call that does not support its input (torch: "... not implemented for 'Float'")."""
    frames = traceback.extract_tb(exc.__traceback__)
    line = (frames[-1].line or "").lstrip() if frames else ""
    return not line or line.startswith("raise")  # a source line we cannot read counts as the stub


def expect(condition: bool, message: str) -> None:
    """Fail the check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def _not_implemented_line(name: str) -> str:
    return (f"{TODO_MARK} {name}: not implemented yet. Write it in the cell above and run this cell again; "
            f"meanwhile the notebook goes on with the reference implementation.")


def checker(name: str) -> Callable[[Callable[..., str | None]], Callable[..., None]]:
    """Decorate a checker body: NotImplementedError from the learner prints the friendly line; finishing
    prints the success line (with the body's summary, if it returns one). The checker returns None; an
    AssertionError from the body reaches the learner as CheckFailed (the message alone in a notebook);
    ``outcome`` gives tests the boolean answer."""

    def wrap(body: Callable[..., str | None]) -> Callable[..., None]:
        @functools.wraps(body)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                summary = body(*args, **kwargs)
            except LearnerNotImplemented:
                print(_not_implemented_line(name))
                _OUTCOME.set(False)
                return None
            except CheckFailed:
                raise
            except AssertionError as error:  # a body that raised a plain AssertionError: the same rendering
                raise CheckFailed(str(error)) from None
            print(f"{PASS_MARK} {name} is correct" + (f": {summary}" if summary else "."))
            _OUTCOME.set(True)
            return None

        return run

    return wrap


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
) -> None:
    """Check a learner's pure function against the reference on every case.

    Prints a success line when fn agrees with ``reference`` on all ``cases``, and a friendly line while fn
    raises NotImplementedError; otherwise raises CheckFailed naming the input, what fn returned, what was
    expected, and the likely mistake when one of ``mistakes`` gives the same wrong answer.

    Args:
        differentiable: positions of the arguments (tensors, or lists of tensors) the output is differentiable
            in. When given, a right value must also have the right gradient with respect to them: autograd on
            ``objective(output)`` for the learner's fn and for the reference (see ``gradient_problem``).
        objective: the scalar whose gradient is compared, from an output (default: the output itself when it
            is a single number, else its sum weighted by fixed random numbers).
        gradient_hint: what a gradient that differs in another way than missing or scaled most likely means
            for this exercise.
    """
    compare_fn = compare_fn or compare

    @checker(name)
    def body() -> str:
        for case in cases:
            learner_args, learner_kwargs = clone_args(case.args), clone_args(case.kwargs)
            got = call_learner(fn, *learner_args, name=f"Your {name}", label=case.describe(), **learner_kwargs)
            expect_inputs_unchanged(case, learner_args, learner_kwargs, name)
            expected = reference(*clone_args(case.args), **clone_args(case.kwargs))
            problem = compare_fn(got, expected)
            if problem is None:
                if differentiable:
                    problem = gradient_problem(fn, reference, case, differentiable, name=name, mistakes=mistakes,
                                               compare_fn=compare_fn, objective=objective, hint=gradient_hint)
                    if problem:
                        raise CheckFailed(problem)
                continue
            message = f"For the input {case.describe()}: {problem}."
            cause = diagnose(got, case, mistakes, compare_fn)
            raise CheckFailed(f"{message}\nLikely cause: {cause}" if cause else f"{message}\nHint: {generic_hint}")
        checked = ", values and gradients," if differentiable else ""
        return f"it agrees with the reference{checked} on all {len(cases)} cases"

    return body()


def diagnose(got: Any, case: Case, mistakes: Sequence[Mistake], compare_fn: Callable[[Any, Any], str | None] = compare) -> str | None:
    """The hint of the first mistake whose output on ``case`` equals ``got``, or None."""
    for mistake in mistakes:
        try:
            wrong = mistake.fn(*clone_args(case.args), **clone_args(case.kwargs))
        except Exception:  # a mistake model may not apply to every input
            continue
        if compare_fn(got, wrong) is None:
            return mistake.hint
    return None


# --------------------------------------------------------------------------------------------- gradients
def default_objective(output: Any) -> Any:
    """The scalar whose gradient a checker compares: the output itself when it is one number, else its sum
    weighted by fixed random numbers (so that every element's gradient counts, each differently)."""
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return output
    if output.numel() == 1:
        return output.reshape(())
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (output * weights.to(output.dtype)).sum()


def _with_grad(args: tuple, positions: Sequence[int]) -> tuple[tuple, list[torch.Tensor]]:
    """A copy of ``args`` whose tensors at ``positions`` (or lists of tensors there) are fresh leaves that
    require gradients, and the list of those leaves."""
    args = list(clone_args(args))
    leaves: list[torch.Tensor] = []
    for i in positions:
        if isinstance(args[i], torch.Tensor):
            args[i] = args[i].detach().clone().requires_grad_(True)
            leaves.append(args[i])
        else:
            args[i] = type(args[i])(t.detach().clone().requires_grad_(True) for t in args[i])
            leaves.extend(args[i])
    return tuple(args), leaves


def input_gradient(fn: Callable[..., Any], case: Case, positions: Sequence[int],
                   objective: Callable[[Any], Any] = default_objective) -> torch.Tensor | None:
    """The gradient of ``objective(fn(*case.args))`` with respect to the arguments at ``positions``, flattened
    into one float64 vector (zeros where the output does not depend on an input); None when the output carries
    no gradient at all (not a tensor, or cut from the inputs' graph)."""
    args, leaves = _with_grad(case.args, positions)
    scalar = objective(fn(*args, **clone_args(case.kwargs)))
    if not isinstance(scalar, torch.Tensor) or not scalar.requires_grad:
        return None
    grads = torch.autograd.grad(scalar, leaves, allow_unused=True)
    return torch.cat([(torch.zeros_like(x) if g is None else g).detach().double().flatten()
                      for g, x in zip(grads, leaves)])


def _grad_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-6 * max(1.0, scale))


def gradient_problem(fn: Callable[..., Any], reference: Callable[..., Any], case: Case, positions: Sequence[int], *,
                     name: str, mistakes: Sequence[Mistake] = (),
                     compare_fn: Callable[[Any, Any], str | None] = compare,
                     objective: Callable[[Any], Any] | None = None, hint: str = "") -> str | None:
    """None when the learner's ``fn`` has the reference's gradient on ``case``, else a message that names what
    is wrong: no gradient at all, a mistake of the catalogue with the same gradient, a gradient scaled by a
    constant, or another difference (explained by ``hint``)."""
    objective = objective or default_objective
    what = f"Your {name} gives the right value for the input {case.describe()}, but"
    learner = _learner_call(lambda: input_gradient(fn, case, positions, objective), name, case)
    expected = input_gradient(reference, case, positions, objective)
    if expected is None or (learner is not None and _grad_close(learner, expected)):
        return None
    if learner is None or not bool(learner.any()):
        return (f"{what} it carries no gradient: training could not learn through it.\n"
                f"Likely cause: the computation left autograd's graph: .detach(), .item(), float(...), .numpy(), "
                f"torch.tensor(...) of a result, or torch.no_grad(). Keep every step a torch operation on the input "
                f"tensors.")
    for mistake in mistakes:
        try:
            if compare_fn(mistake.fn(*clone_args(case.args), **clone_args(case.kwargs)),
                          reference(*clone_args(case.args), **clone_args(case.kwargs))) is not None:
                continue  # a mistake of the value: the learner's value is right
            wrong = input_gradient(mistake.fn, case, positions, objective)
        except Exception:  # a mistake model may not apply to every input
            continue
        if wrong is not None and _grad_close(learner, wrong):
            return f"{what} its gradient is wrong.\nLikely cause: {mistake.hint}"
    factor = float(learner @ expected / (expected @ expected))
    if _grad_close(learner, factor * expected):
        return (f"{what} its gradient is {factor:.4g} times the reference's: training would take steps "
                f"{factor:.4g} times too {'large' if abs(factor) > 1 else 'small'}"
                f"{' and in the wrong direction' if factor < 0 else ''}.\n"
                f"Likely cause: a factor applied to a detached part (x.detach() * c, or a value rebuilt from "
                f".item()), so that the value is right but the graph is scaled differently.")
    return f"{what} its gradient differs from the reference's.\nLikely cause: {hint or 'a part of the computation carries a gradient it should not have, or lost one it should have; compare which tensors you .detach().'}"


def _learner_call(run: Callable[[], Any], name: str, case: Case) -> Any:
    """Run a computation on the learner's function (its forward and backward), explaining any exception."""
    try:
        return run()
    except NotImplementedError:
        raise LearnerNotImplemented from None
    except Exception as exc:  # a learner's bug, in the forward or in the backward pass
        raise CheckFailed(
            f"Your {name} raised {type(exc).__name__} while its gradient was computed on the input "
            f"{case.describe()}: {exc}.{_learner_frame(exc)}\n"
            f"Hint: an in-place change of a tensor autograd needs (x += ..., x[...] = ...) breaks the backward "
            f"pass; compute new tensors instead.") from None


def expect_inputs_unchanged(case: Case, learner_args: tuple, learner_kwargs: Mapping[str, Any], name: str) -> None:
    originals = list(case.args) + list(case.kwargs.values())
    after = list(learner_args) + list(learner_kwargs.values())
    for i, (before, now) in enumerate(zip(originals, after)):
        if isinstance(before, torch.Tensor) and isinstance(now, torch.Tensor):
            if before.shape != now.shape or not torch.equal(before.detach(), now.detach()):
                raise CheckFailed(
                    f"Your {name} changed its input number {i + 1} ({describe_value(before)}) in place. "
                    f"Hint: compute new tensors (x = x + b) instead of writing into the inputs (x += b, x[...] = ...).")
