"""The checker framework itself: success, stub, crash, wrong type, wrong shape, in-place edits, diagnosis."""

import pytest
import torch

from course_lib.checks import CheckFailed, Case, Mistake, call_learner, check_function, checker, expect, outcome
from course_lib.checks.comparison import compare


def reference_double(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


CASES = [Case((torch.tensor([1.0, 2.0, 3.0]),), label="x = [1, 2, 3]"),
         Case((torch.arange(6.0).reshape(2, 3),), label="x of shape [2, 3]")]
MISTAKES = [Mistake("you squared x instead of doubling it.", lambda x: x * x)]


def check_double(fn) -> bool:
    return check_function(fn, name="double", reference=reference_double, cases=CASES, mistakes=MISTAKES)


def test_correct_function_passes_and_prints_success(capsys):
    assert outcome(check_double, lambda x: x + x) is True
    assert "✓ double is correct" in capsys.readouterr().out


def test_stub_returns_false_with_friendly_line(capsys):
    def stub(x):
        raise NotImplementedError()

    assert outcome(check_double, stub) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "reference implementation" in out


def test_known_mistake_is_named():
    with pytest.raises(CheckFailed, match="you squared x"):
        check_double(lambda x: x ** 2)


def test_unknown_mistake_shows_seen_and_expected():
    with pytest.raises(CheckFailed) as info:
        check_double(lambda x: x + 1)
    message = str(info.value)
    assert "x = [1, 2, 3]" in message and "should be" in message and "Hint:" in message


def test_learner_exception_is_explained_not_raised():
    def buggy(x):
        return x @ torch.ones(5)

    with pytest.raises(CheckFailed, match="raised RuntimeError"):
        check_double(buggy)


def test_wrong_type_and_shape_are_explained():
    with pytest.raises(CheckFailed, match="torch tensor"):
        check_double(lambda x: (2 * x).tolist())
    with pytest.raises(CheckFailed, match="shape"):
        check_double(lambda x: (2 * x).reshape(-1, 1))


def test_in_place_edit_of_input_is_reported():
    def in_place(x):
        x *= 2
        return x

    with pytest.raises(CheckFailed, match="in place"):
        check_double(in_place)


def test_not_callable_is_explained():
    with pytest.raises(CheckFailed, match="should be a function"):
        check_double(torch.tensor([2.0]))


def test_checker_decorator_handles_stub_and_success(capsys):
    @checker("module")
    def check_module(fn):
        out = call_learner(fn, 3, name="Your module")
        expect(out == 6, f"expected 6, got {out}")

    def stub(x):
        raise NotImplementedError

    assert outcome(check_module, lambda x: 2 * x) is True
    assert outcome(check_module, stub) is False
    with pytest.raises(CheckFailed, match="expected 6, got 4"):
        check_module(lambda x: x + 1)
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("got, expected, fragment", [
    (1.0, 1.0 + 1e-9, None),
    (2.0, 1.0, "should be 1"),
    (float("nan"), 1.0, "finite number"),
    ((1, 2), (1, 3), "item 1"),
    ([1, 2, 3], (1, 2), "3 items"),
    (torch.zeros(2, dtype=torch.long), torch.zeros(2), "floating-point"),
    (torch.tensor([0.0, float("nan")]), torch.zeros(2), "NaN"),
    (torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "row 1"),
])
def test_compare_messages(got, expected, fragment):
    problem = compare(got, expected)
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None and fragment in problem


def test_torch_not_implemented_for_a_dtype_is_a_bug_not_the_stub():
    from course_lib.checks import check_function

    def float_bincount(x):
        return torch.bincount(x / 2)  # torch: "bincount_cpu" not implemented for 'Float' (NotImplementedError)

    with pytest.raises(CheckFailed, match="not implemented for"):
        check_function(float_bincount, name="f", reference=lambda x: torch.bincount(x // 2),
                       cases=[Case((torch.tensor([0, 2, 3]),))])


# ------------------------------------------------------------------ what a learner sees in a notebook
def test_a_wrong_answer_shows_the_message_alone_in_ipython(capsys):
    """No traceback through the course's code, the learner's own line when their code raised, no True echoed."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns.update(check_double=check_double, torch=torch)
    result = shell.run_cell("check_double(lambda x: x ** 2)")
    out = capsys.readouterr().out
    assert not result.success
    assert "✗ For the input x = [1, 2, 3]" in out and "you squared x" in out, out
    assert "Traceback" not in out and "_core.py" not in out and "course_lib" not in out, out
    assert len(out.strip().splitlines()) <= 3, out

    result = shell.run_cell("def buggy(x):\n    return x @ torch.ones(5)\ncheck_double(buggy)")
    out = capsys.readouterr().out
    assert "raised RuntimeError" in out and "return x @ torch.ones(5)" in out and "_core.py" not in out, out

    result = shell.run_cell("check_double(lambda x: x + x)")
    out = capsys.readouterr().out
    assert result.success and result.result is None and "✓ double is correct" in out and "True" not in out


def test_outcome_gives_tests_a_boolean():

    def stub(x):
        raise NotImplementedError

    assert outcome(check_double, lambda x: x + x) is True
    assert outcome(check_double, stub) is False
    assert check_double(lambda x: x + x) is None
    with pytest.raises(CheckFailed):
        outcome(check_double, lambda x: x ** 2)
    with pytest.raises(RuntimeError, match="not a checker"):
        outcome(lambda fn: None, stub)


# ------------------------------------------------------------------ gradients
def check_double_with_grad(fn) -> None:
    return check_function(fn, name="double", reference=reference_double, cases=CASES, mistakes=MISTAKES,
                          differentiable=(0,), gradient_hint="the factor 2 must reach the gradient.")


@pytest.mark.parametrize("wrong, phrase", [
    (lambda x: (2 * x).detach(), "carries no gradient"),
    (lambda x: torch.tensor((2 * x).tolist()), "carries no gradient"),
    (lambda x: 2 * x.detach() + 0 * x, "carries no gradient"),
    (lambda x: x + x.detach(), "0.5 times the reference's"),
    (lambda x: 3 * x - x.detach(), "1.5 times the reference's"),
    (lambda x: x * x.detach() / x.detach() * 2 + (x ** 2 - (x ** 2).detach()), "the factor 2 must reach"),
])
def test_right_value_with_wrong_gradient_is_named(wrong, phrase):
    with pytest.raises(CheckFailed, match=phrase) as info:
        check_double_with_grad(wrong)
    assert "gives the right value" in str(info.value)


def test_gradient_checked_and_reported_on_success(capsys):
    check_double_with_grad(lambda x: x + x)
    assert "agrees with the reference, values and gradients, on all 2 cases" in capsys.readouterr().out


# ------------------------------------------------------------------ one wrapper around the learner's call
def test_torch_not_implemented_while_the_gradient_is_computed_is_the_learners_error():
    """The gradient path goes through the same wrapper as the value: torch's own NotImplementedError raised from
    the learner's code is explained, not taken for the stub."""
    def float_bincount_on_the_gradient_path(x):
        if x.requires_grad:
            torch.bincount(x / 2)  # torch: "bincount_cpu" not implemented for 'Float' (NotImplementedError)
        return 2 * x

    with pytest.raises(CheckFailed, match="raised NotImplementedError while its gradient was computed"):
        check_double_with_grad(float_bincount_on_the_gradient_path)


def test_a_stub_on_the_gradient_path_is_still_the_stub():
    def stub_when_differentiated(x):
        if x.requires_grad:
            raise NotImplementedError
        return 2 * x

    assert outcome(check_double_with_grad, stub_when_differentiated) is False


def test_crash_hints_name_the_cause_of_a_crash_in_the_value_and_in_the_gradient():
    hints = {"cannot be multiplied": "x is a vector: no matrix product here."}

    def check(fn):
        return check_function(fn, name="double", reference=reference_double, cases=CASES, differentiable=(0,),
                              crash_hints=hints)

    with pytest.raises(CheckFailed, match="raised RuntimeError(.|\n)*Likely cause: x is a vector"):
        check(lambda x: x.reshape(1, -1) @ torch.ones(5, 5))
    with pytest.raises(CheckFailed, match="while its gradient was computed(.|\n)*Likely cause: x is a vector"):
        check(lambda x: 2 * x if not x.requires_grad else x.reshape(1, -1) @ torch.ones(5, 5))
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError(.|\n)*Hint: run it by hand"):
        check(lambda x: 1 / 0)


def test_every_checker_fails_with_check_failed_only():
    """No checker module raises a plain AssertionError: CheckFailed is the one way to fail."""
    import pathlib

    import course_lib.checks

    for path in pathlib.Path(course_lib.checks.__file__).parent.glob("*.py"):
        assert "raise AssertionError" not in path.read_text(), path.name


# ------------------------------------------------------------------ what importing a notebook's checkers loads
def test_importing_notebook_01s_checker_loads_no_parallel_training_or_fp8():
    """Notebook 01 imports check_topk_route: the checkers of the other notebooks (expert parallelism on
    torch.distributed, training, FP8, attention, ...) stay unimported until a notebook asks for them."""
    import os
    import pathlib
    import subprocess
    import sys

    code = ("import sys\nfrom course_lib.checks import check_topk_route\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('course_lib'))))")
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                            env=env).stdout.split()
    assert "course_lib.checks.routing" in loaded
    for absent in ("course_lib.parallel", "course_lib.parallel.distributed", "course_lib.parallel.expert_parallel",
                   "course_lib.training", "course_lib.training.train", "course_lib.precision",
                   "course_lib.precision.fp8", "course_lib.checks.expert_parallel", "course_lib.checks.training",
                   "course_lib.checks.fp8"):
        assert absent not in loaded, (absent, loaded)
