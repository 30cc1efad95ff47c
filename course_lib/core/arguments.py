"""The checks at the boundaries of the shared layers (``layers.RMSNorm`` and ``layers.SwiGLU``: their constructors
and forwards): one validator per boundary, named after it, taking the boundary's parameters by name
(``validation.boundary``)."""

from __future__ import annotations

from typing import Any

import torch

from course_lib.core.validation import check_int, check_number


def features(layer: str, x: Any, dim: int) -> None:
    """Raise TypeError unless ``x`` is a floating-point tensor, ValueError unless its last dimension is ``dim``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point tensor [..., {dim}], got {x!r:.80}")
    if x.dim() < 1 or x.shape[-1] != dim:
        raise ValueError(f"{layer} expects inputs [..., {dim}], got {list(x.shape)}")


def rms_norm(dim: Any, eps: Any) -> None:
    """``RMSNorm(dim, eps)``: dim an int >= 1, eps a finite number > 0."""
    check_int("dim", dim, 1)
    check_number("eps", eps, 0, strict=True)


def rms_norm_forward(self: Any, x: Any) -> None:
    """``RMSNorm.forward(x)``: x float [..., dim]."""
    features("RMSNorm", x, self.weight.shape[0])


def swiglu_layer(dim: Any, hidden: Any) -> None:
    """``SwiGLU(dim, hidden)``: ints >= 1."""
    check_int("dim", dim, 1)
    check_int("hidden", hidden, 1)


def swiglu_forward(self: Any, x: Any) -> None:
    """``SwiGLU.forward(x)``: x float [..., dim]."""
    features("SwiGLU", x, self.w_gate.in_features)
