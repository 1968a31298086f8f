"""Frame-count and size rules of the Wan video family, in one place.

The Wan VAE compresses time by 4 (causally: the first frame alone, then groups of 4) and space by
8; the transformer patches latents by 2×2. So a clip must have ``4k + 1`` frames and sides that are
multiples of 16. ComfyUI's ``WanFunControlToVideo`` / ``WanVaceToVideo`` nodes use the same rules
(``length`` step 4 starting at 1, ``width``/``height`` step 16). Every other module calls these
helpers instead of retyping the numbers; each helper logs when it changes a value.

Pure Python (no torch) so that importing it is free.
"""
from __future__ import annotations

import logging
from typing import Tuple

log = logging.getLogger("expportrait.generator")

#: temporal compression of the Wan 2.1 VAE (frames per latent frame after the first)
TEMPORAL_STRIDE = 4
#: spatial compression of the Wan 2.1 VAE (pixels per latent pixel)
SPATIAL_STRIDE = 8
#: transformer patch size in latent pixels (height, width)
PATCH = 2
#: sides of a clip must be multiples of this (VAE stride × patch)
SIDE_MULTIPLE = SPATIAL_STRIDE * PATCH


def latent_frames(n: int) -> int:
    """Latent frames for ``n`` pixel frames: ``(n - 1) // 4 + 1`` (``n >= 1``)."""
    if n < 1:
        raise ValueError(f"frame count must be >= 1, got {n}")
    return (n - 1) // TEMPORAL_STRIDE + 1


def pixel_frames(n_latent: int) -> int:
    """Pixel frames represented by ``n_latent`` latent frames: ``4 * (n_latent - 1) + 1``."""
    if n_latent < 1:
        raise ValueError(f"latent frame count must be >= 1, got {n_latent}")
    return TEMPORAL_STRIDE * (n_latent - 1) + 1


def is_valid_frame_count(n: int) -> bool:
    """True when ``n`` is of the form ``4k + 1``."""
    return n >= 1 and (n - 1) % TEMPORAL_STRIDE == 0


def snap_frame_count(n: int, mode: str = "up", what: str = "clip") -> int:
    """Nearest valid frame count (``4k + 1``) to ``n``.

    ``mode``: ``"up"`` (pad; the caller repeats the last frame), ``"down"`` (trim) or
    ``"nearest"``. Logs when the value changes.
    """
    if n < 1:
        raise ValueError(f"{what}: frame count must be >= 1, got {n}")
    if is_valid_frame_count(n):
        return n
    down = pixel_frames(latent_frames(n))
    up = down + TEMPORAL_STRIDE
    if mode == "up":
        out = up
    elif mode == "down":
        out = down
    elif mode == "nearest":
        out = up if (up - n) <= (n - down) else down  # ties pad (no frame is lost)
    else:
        raise ValueError(f"snap mode must be 'up', 'down' or 'nearest', got {mode!r}")
    log.info("%s: %d frames is not 4k+1 (Wan rule); using %d frames", what, n, out)
    return out


def snap_side(x: int, mode: str = "nearest") -> int:
    """A side length snapped to a multiple of 16 (at least 16)."""
    m = SIDE_MULTIPLE
    if mode == "nearest":
        out = int(round(x / m)) * m
    elif mode == "down":
        out = (x // m) * m
    elif mode == "up":
        out = -(-x // m) * m
    else:
        raise ValueError(f"snap mode must be 'nearest', 'down' or 'up', got {mode!r}")
    return max(m, out)


def snap_video_size(height: int, width: int, mode: str = "nearest", what: str = "clip") -> Tuple[int, int]:
    """``(height, width)`` snapped to multiples of 16; logs when either changes."""
    h, w = snap_side(height, mode), snap_side(width, mode)
    if (h, w) != (height, width):
        log.info("%s: size %dx%d (w×h) is not a multiple of %d; using %dx%d", what, width, height, SIDE_MULTIPLE, w, h)
    return h, w


def latent_size(height: int, width: int) -> Tuple[int, int]:
    """Latent ``(h, w)`` of a clip whose sides already follow the rules."""
    if height % SIDE_MULTIPLE or width % SIDE_MULTIPLE:
        raise ValueError(f"sides must be multiples of {SIDE_MULTIPLE}, got {height}x{width}; call snap_video_size first")
    return height // SPATIAL_STRIDE, width // SPATIAL_STRIDE


def latent_frame_span(index: int) -> Tuple[int, int]:
    """Pixel-frame range ``[start, stop)`` that latent frame ``index`` stands for (causal VAE grouping)."""
    if index == 0:
        return 0, 1
    return TEMPORAL_STRIDE * (index - 1) + 1, TEMPORAL_STRIDE * index + 1


__all__ = [
    "PATCH",
    "SIDE_MULTIPLE",
    "SPATIAL_STRIDE",
    "TEMPORAL_STRIDE",
    "is_valid_frame_count",
    "latent_frame_span",
    "latent_frames",
    "latent_size",
    "pixel_frames",
    "snap_frame_count",
    "snap_side",
    "snap_video_size",
]
