"""Where the course's code runs (``get_device``) and how it is made repeatable (``seed_everything``)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device to run on.

    ``"auto"`` picks CUDA when a GPU is visible, then Apple's MPS, then the CPU. An explicit name
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) is checked for availability, so a notebook
    parameterised for a GPU fails at once with a clear message on a machine without one.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto' or 'cpu', got {type(device).__name__}")
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICE_CHOICES)} (or 'cuda:N')")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use device='auto' or 'cpu'")
    if kind == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} was asked for, but MPS is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's random generators, and return a torch.Generator seeded the same.

    Call it at the top of a notebook and before each cell whose printed numbers must be repeatable.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
