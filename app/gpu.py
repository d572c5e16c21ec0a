"""Hugging Face ZeroGPU: a Space on ZeroGPU hardware lends a GPU only to functions wrapped in `spaces.GPU`. The
handlers that run a model are wrapped when the `spaces` package is installed (ZeroGPU Spaces have it); elsewhere
they are left as they are, and off ZeroGPU `spaces.GPU` itself returns the function unchanged."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

try:
    import spaces
except ImportError:   # not on a Space: nothing to ask for
    spaces = None

F = TypeVar("F", bound=Callable)


def on_gpu(fn: F) -> F:
    """`fn`, run on a ZeroGPU GPU when the Space has one (`spaces.GPU`); `fn` itself without the package."""
    return fn if spaces is None else spaces.GPU(fn)
