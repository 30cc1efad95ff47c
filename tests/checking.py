"""What the checker tests share: a learner's stub, and ``rejected_with`` (a wrong answer fails with its hint)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from course_lib.checks import CheckFailed


def stub(*args: Any, **kwargs: Any) -> Any:
    """An exercise as a learner receives it: the stub raises NotImplementedError."""
    raise NotImplementedError()


def rejected_with(check: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """Run ``check`` on the learner's functions among ``args`` (and on ``kwargs``), assert that it fails with
    CheckFailed whose message holds every string among ``args``, and return the message."""
    functions = [a for a in args if not isinstance(a, str)]
    phrases = [a for a in args if isinstance(a, str)]
    with pytest.raises(CheckFailed) as info:
        check(*functions, **kwargs)
    message = str(info.value)
    for phrase in phrases:
        assert phrase in message, message
    return message
