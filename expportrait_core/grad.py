"""Autograd on demand, whatever grad mode the caller is in.

ComfyUI runs every node inside ``torch.inference_mode()`` (``execution.py``), and library users
often call inference code under ``torch.no_grad()``. The optimizations of this package (identity
fitting, detail tracking, training) need autograd, so their entry points switch it back on.
Tensors *created* in inference mode cannot be saved for backward, which is why the ComfyUI
adapters also run each node outside inference mode (``nodes/_comfy.py``): the head proxy, the
identity and the motion they build are then ordinary tensors.
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)

__all__ = ["autograd_enabled"]


def autograd_enabled(fn: F) -> F:
    """Decorator: run ``fn`` with inference mode off and gradient recording on."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
