"""Comparing the gradient of a learner's differentiable function with the reference's.

Autograd on ``objective(output)`` with respect to the differentiable inputs, for the learner's function and for
the reference. ``gradient_problem`` names the three ways a right value can hide a wrong gradient: no gradient at
all (``.detach()``, ``.item()``, ``torch.tensor(...)`` of a result), a gradient scaled wrongly, and a gradient
that flows where it should not (for a balance loss: through the hit counts f), the last through the mistake of the
exercise's catalogue whose gradient matches the learner's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from course_lib.checks.cases import Case, Mistake
from course_lib.checks.comparison import compare
from course_lib.checks.learner import call_learner, clone_args

IN_PLACE_HINT = ("an in-place change of a tensor autograd needs (x += ..., x[...] = ...) breaks the backward pass; "
                 "compute new tensors instead.")


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
                     objective: Callable[[Any], Any] | None = None, hint: str = "",
                     crash_hints: Mapping[str, str] | None = None) -> str | None:
    """None when the learner's ``fn`` has the reference's gradient on ``case``, else a message that names what
    is wrong: no gradient at all, a mistake of the catalogue with the same gradient, a gradient scaled by a
    constant, or another difference (explained by ``hint``). The learner's forward and backward run through
    ``call_learner`` (a crash is explained, with ``crash_hints``)."""
    objective = objective or default_objective
    what = f"Your {name} gives the right value for the input {case.describe()}, but"
    learner = call_learner(input_gradient, fn, case, positions, objective, name=f"Your {name}",
                           label=case.describe(), doing=" while its gradient was computed", hint=IN_PLACE_HINT,
                           crash_hints=crash_hints)
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
            if compare_fn(case.run(mistake.fn), case.run(reference)) is not None:
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
