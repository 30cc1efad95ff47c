"""The checker framework itself: success, stub, crash, wrong type, wrong shape, in-place edits, diagnosis."""

import pytest
import torch

from course_lib.checks import Case, Mistake, call_learner, check_function, checker, expect
from course_lib.checks._core import compare


def reference_double(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


CASES = [Case((torch.tensor([1.0, 2.0, 3.0]),), label="x = [1, 2, 3]"),
         Case((torch.arange(6.0).reshape(2, 3),), label="x of shape [2, 3]")]
MISTAKES = [Mistake("you squared x instead of doubling it.", lambda x: x * x)]


def check_double(fn) -> bool:
    return check_function(fn, name="double", reference=reference_double, cases=CASES, mistakes=MISTAKES)


def test_correct_function_passes_and_prints_success(capsys):
    assert check_double(lambda x: x + x) is True
    assert "✅ double is correct" in capsys.readouterr().out


def test_stub_returns_false_with_friendly_line(capsys):
    def stub(x):
        raise NotImplementedError()

    assert check_double(stub) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "reference implementation" in out


def test_known_mistake_is_named():
    with pytest.raises(AssertionError, match="you squared x"):
        check_double(lambda x: x ** 2)


def test_unknown_mistake_shows_seen_and_expected():
    with pytest.raises(AssertionError) as info:
        check_double(lambda x: x + 1)
    message = str(info.value)
    assert "x = [1, 2, 3]" in message and "should be" in message and "Hint:" in message


def test_learner_exception_is_explained_not_raised():
    def buggy(x):
        return x @ torch.ones(5)

    with pytest.raises(AssertionError, match="raised RuntimeError"):
        check_double(buggy)


def test_wrong_type_and_shape_are_explained():
    with pytest.raises(AssertionError, match="torch tensor"):
        check_double(lambda x: (2 * x).tolist())
    with pytest.raises(AssertionError, match="shape"):
        check_double(lambda x: (2 * x).reshape(-1, 1))


def test_in_place_edit_of_input_is_reported():
    def in_place(x):
        x *= 2
        return x

    with pytest.raises(AssertionError, match="in place"):
        check_double(in_place)


def test_not_callable_is_explained():
    with pytest.raises(AssertionError, match="should be a function"):
        check_double(torch.tensor([2.0]))


def test_checker_decorator_handles_stub_and_success(capsys):
    @checker("module")
    def check_module(fn):
        out = call_learner(fn, 3, name="Your module")
        expect(out == 6, f"expected 6, got {out}")

    def stub(x):
        raise NotImplementedError

    assert check_module(lambda x: 2 * x) is True
    assert check_module(stub) is False
    with pytest.raises(AssertionError, match="expected 6, got 4"):
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

    with pytest.raises(AssertionError, match="not implemented for"):
        check_function(float_bincount, name="f", reference=lambda x: torch.bincount(x // 2),
                       cases=[Case((torch.tensor([0, 2, 3]),))])


def test_a_failed_check_renders_as_its_message_alone():
    from course_lib.checks import check_function
    from course_lib.checks._core import CheckFailed

    with pytest.raises(CheckFailed) as info:
        check_function(lambda x: x + 1, name="double", reference=lambda x: 2 * x, cases=[Case((3,))])
    lines = info.value._render_traceback_()
    assert lines[0].endswith("double is not right yet:") and "should be 6" in "\n".join(lines)
    assert len(lines) < 6
