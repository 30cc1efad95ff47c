"""The device helper and the seeding helper."""

import random

import numpy as np
import pytest
import torch

from course_lib import get_device, seed_everything


def test_auto_picks_an_available_device():
    device = get_device("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.type == expected


def test_cpu_and_device_objects_are_accepted():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_gpu_gives_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        get_device("cuda")


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="expected one of"):
        get_device("tpu")


def test_seed_makes_every_generator_repeat():
    seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(3)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_bad_seed_is_rejected(bad):
    with pytest.raises(ValueError):
        seed_everything(bad)
