"""What a call reads back of integer tensors for a check: the shapes of the int64 tensors reduced to their range
(``torch.aminmax``, the one read-back of ``course_lib.model.arguments.check_token_ids``), in call order.

A boundary checks a user's tokens once where they enter; inside (the model calling its layers, a decoder feeding
the model its own samples) nothing is reduced for a check: on a GPU each such reduction is a host sync."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode


class _Record(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[list[int]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.aminmax and args and args[0].dtype == torch.int64:
            self.shapes.append(list(args[0].shape))
        return func(*args, **(kwargs or {}))


def id_reductions(fn: Callable[[], Any]) -> list[list[int]]:
    """Run ``fn()`` and return the shapes of the int64 tensors it reduced with torch.aminmax."""
    with _Record() as record:
        fn()
    return record.shapes
