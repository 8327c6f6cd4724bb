"""Marking planner functions as constant under ``torch.compile`` without importing the compiler."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

#: The flag :func:`torch.compiler.assume_constant_result` sets; Dynamo reads it when it traces a call.
_DYNAMO_FLAG = "_dynamo_marked_constant"


def assume_constant_result(fn: F) -> F:
    """Same as :func:`torch.compiler.assume_constant_result`, minus the import of ``torch._dynamo``.

    Torch's version imports the whole compiler stack (about 1.2 s here) only to set one flag on
    ``fn``; setting it directly keeps ``import bayestensor`` and every CLI command that much faster.
    ``tests/test_linear.py`` checks that both mark a function identically and that the planners
    stay constants under ``torch.compile(fullgraph=True)``.
    """
    setattr(fn, _DYNAMO_FLAG, True)
    return fn
