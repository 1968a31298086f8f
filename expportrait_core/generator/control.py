"""Make a control IMAGE batch follow the Wan rules (4k+1 frames, sides multiple of 16).

The result feeds our sampler and ComfyUI's own ``WanFunControlToVideo`` / ``WanVaceToVideo``
unchanged (their ``length``/``width``/``height`` inputs take the returned numbers).
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..errors import ExpPortraitError
from .encoders import resize_frames
from .video_rules import snap_frame_count, snap_video_size


def fit_control_video(
    frames: torch.Tensor, height: int = 0, width: int = 0, frame_mode: str = "pad"
) -> Tuple[torch.Tensor, int, int, int]:
    """frames ``[F, H, W, C]`` (IMAGE, 0..1) → ``(frames [F', H', W', 3], H', W', F')``.

    ``height``/``width`` 0 keep the input size; every side is snapped to a multiple of 16 and the
    frames resized (bilinear). ``frame_mode``: ``"pad"`` repeats the last frame up to 4k+1,
    ``"trim"`` drops frames down to 4k+1. Both log what changed.
    """
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ExpPortraitError(f"control video must be an IMAGE batch [F, H, W, 3] with F >= 1, got {tuple(frames.shape)}")
    if frame_mode not in ("pad", "trim"):
        raise ExpPortraitError(f"frame_mode must be 'pad' or 'trim', got {frame_mode!r}")
    x = frames[..., :3].float()
    n = x.shape[0]
    h, w = snap_video_size(height or x.shape[1], width or x.shape[2], what="control video")
    m = snap_frame_count(n, "up" if frame_mode == "pad" else "down", what="control video")
    if m > n:
        x = torch.cat([x, x[-1:].expand(m - n, -1, -1, -1)], dim=0)
    else:
        x = x[:m]
    x = resize_frames(x.permute(3, 0, 1, 2)[None], h, w)[0].permute(1, 2, 3, 0).clamp(0, 1)
    return x.contiguous(), h, w, m


__all__ = ["fit_control_video"]
