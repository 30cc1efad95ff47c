"""The kept-output formatting helpers: fixed decimals, no -0, the same text whatever the dtype."""

import numpy as np
import pytest
import torch

from course_lib.machinery.formatting import format_number, format_table, format_tensor


@pytest.mark.parametrize("x, expected", [
    (0.53333333, "0.5333"), (1.0, "1.0000"), (-0.00001, "0.0000"), (-0.0, "0.0000"), (-0.5, "-0.5000"),
    (np.float32(0.1), "0.1000"), (np.float64(2.5), "2.5000"), (torch.tensor(0.99999994), "1.0000"),
    (torch.tensor([3.0]), "3.0000"), (7, "7"), (np.int64(7), "7"), (torch.tensor(7), "7"), (True, "True"),
    (float("inf"), "inf"), (float("-inf"), "-inf"), (float("nan"), "nan"),
])
def test_format_number(x, expected):
    assert format_number(x) == expected


def test_format_number_decimals_and_errors():
    assert format_number(3.14159, 2) == "3.14"
    assert format_number(-0.004, 2) == "0.00"
    assert format_number(2.5, 0) == "2"
    with pytest.raises(ValueError, match="single number"):
        format_number(torch.ones(2))
    with pytest.raises(ValueError, match="decimals"):
        format_number(1.0, -1)
    with pytest.raises(TypeError, match="real number"):
        format_number("1.0")


def test_format_tensor_1d_2d_and_dtypes():
    assert format_tensor(torch.tensor([3.04, 4.27])) == "[3.04, 4.27]"
    assert format_tensor(torch.tensor([[1.0, -0.001], [0.5, 2.0]])) == "[[1.00, 0.00], [0.50, 2.00]]"
    assert format_tensor(torch.tensor([1, 2, 3])) == "[1, 2, 3]"
    assert format_tensor(torch.tensor([True, False])) == "[True, False]"
    assert format_tensor(np.array([0.25, 0.75]), 1) == "[0.2, 0.8]"  # Python's round-half-even on exact halves
    assert format_tensor(torch.tensor(0.5)) == "0.50"
    assert format_tensor([[0.1, 0.2]]) == "[[0.10, 0.20]]"
    x = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert format_tensor(x) == format_tensor(x.float()) == format_tensor(x.requires_grad_())


def test_softmax_row_sums_print_the_same_whatever_the_last_bit():
    """The issue's example: 1.0 on one CPU, 0.99999994 on another."""
    assert format_tensor(torch.tensor([1.0, 0.99999994, 1.0000001])) == "[1.00, 1.00, 1.00]"


def test_format_table():
    text = format_table(["name", "loss", "n"], [["a", 1.23456, 3], ["longer", -0.00001, 12]], decimals=3)
    assert text.splitlines() == ["name     loss   n", "a       1.235   3", "longer  0.000  12"]
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        format_table(["a", "b"], [["x"]])


def test_significant_digits_for_numbers_of_any_size():
    """What the exercise checkers print: significant digits, whatever the size (a scale of 2e-7 is not 0.0000)."""
    assert format_number(1e-4 / 448, significant=4) == "2.232e-07"
    assert format_number(1 / 30, significant=6) == "0.0333333"
    assert format_number(-1e-20, significant=3) == "-1e-20" and format_number(-0.0, significant=3) == "0"
    assert format_number(7, significant=2) == "7" and format_number(True, significant=2) == "True"
    assert format_tensor(torch.tensor([0.54123, 0.5, 2e-7]), significant=4) == "[0.5412, 0.5, 2e-07]"
    assert format_tensor(torch.tensor([[1, 2]]), significant=4) == "[[1, 2]]"
    with pytest.raises(ValueError, match="significant must be a positive integer"):
        format_number(1.0, significant=0)
