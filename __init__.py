"""ComfyUI-ExpPortrait: ComfyUI entry point.

ComfyUI imports this folder as a module; the method lives in ``expportrait_core`` (a plain library)
and the node adapters in ``nodes``.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    # Appended, not prepended: ComfyUI's own ``nodes`` module must keep winning ``import nodes``.
    sys.path.append(_HERE)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
