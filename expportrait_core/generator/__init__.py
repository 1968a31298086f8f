"""Normal-map-controlled video DiT generator (paper §5) on diffusers' Wan 2.1 modules.

Public API (imported lazily so that ``import expportrait_core.generator`` stays cheap):

* :func:`load_generator`, :func:`save_generator`, :class:`Generator` (``Generator.sample``)
* :func:`build_generator`, :func:`tiny_config`, :class:`GeneratorConfig`
* :func:`save_prompt_embeds`, :func:`read_prompt_embeds`
* frame/size rules: :func:`snap_video_size`, :func:`snap_frame_count`, :func:`latent_frames`
* training CLI: :mod:`expportrait_core.generator.train` (``add_cli``, ``add_generate_cli``)
"""
from __future__ import annotations

from typing import Any

from .video_rules import latent_frames, pixel_frames, snap_frame_count, snap_video_size

_LAZY = {
    "Generator": ".model",
    "build_generator": ".model",
    "GeneratorConfig": ".config",
    "tiny_config": ".config",
    "load_generator": ".loading",
    "save_generator": ".loading",
    "save_prompt_embeds": ".loading",
    "read_prompt_embeds": ".loading",
    "fit_control_video": ".control",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(_LAZY[name], __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Generator",
    "GeneratorConfig",
    "build_generator",
    "fit_control_video",
    "latent_frames",
    "load_generator",
    "pixel_frames",
    "read_prompt_embeds",
    "save_generator",
    "save_prompt_embeds",
    "snap_frame_count",
    "snap_video_size",
    "tiny_config",
]
