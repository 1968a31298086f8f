"""Sampling helpers: flow-matching schedulers, temporal windows and their blend weights.

Long clips are denoised as overlapping windows of latent frames over *one* global latent: at every
step each window predicts the velocity for its frames, predictions are blended with weights that
ramp linearly across each overlap, and a single scheduler step updates the whole latent. No window
is ever decoded on its own, so there are no seams to stitch, and memory is bounded by the window
length (the global latent itself is ~1/48 of the pixel video).
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from .video_rules import latent_frames, snap_frame_count

SCHEDULERS = ("unipc", "euler")
BLENDS = ("linear", "none")


def make_scheduler(name: str = "unipc", shift: float = 3.0):
    """A diffusers flow-matching scheduler: ``"unipc"`` (Wan's default) or ``"euler"``."""
    if name == "unipc":
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler(
            num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=float(shift)
        )
    if name == "euler":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=float(shift))
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")


def window_latents(window: int, overlap: int) -> Tuple[int, int]:
    """Pixel ``window``/``overlap`` (frames) → latent ``(Lw, Lo)``; the window is snapped down to 4k+1."""
    if window < 5:
        raise ValueError(f"window must be at least 5 frames, got {window}")
    lw = latent_frames(snap_frame_count(window, mode="down", what="window"))
    lo = max(0, int(overlap)) // 4
    if lo >= lw:
        raise ValueError(f"overlap ({overlap} frames = {lo} latent frames) must be smaller than the window ({lw} latent frames)")
    return lw, lo


def plan_windows(n_latent: int, lw: int, lo: int) -> List[Tuple[int, int]]:
    """Windows ``[(start, stop), ...]`` of ``lw`` latent frames, stride ``lw - lo``, covering ``n_latent``.

    All windows have the same length (the last one is aligned to the end, overlapping more if
    needed), so per-window conditions are computed once. One window when the clip fits.
    """
    if n_latent <= lw:
        return [(0, n_latent)]
    stride = lw - lo
    starts = list(range(0, n_latent - lw + 1, stride))
    if starts[-1] + lw < n_latent:
        starts.append(n_latent - lw)
    return [(s, s + lw) for s in starts]


def window_weights(windows: List[Tuple[int, int]], blend: str = "linear") -> List[torch.Tensor]:
    """Per-window blend weights ``[stop - start]`` (float32); they sum to 1 on every latent frame.

    ``linear``: ramps across each actual overlap (``(j + 1) / (ov + 1)`` up, mirrored down), so
    neighbouring windows cross-fade. ``none``: hard cut at the middle of each overlap (a baseline
    that shows seams; for diagnostics).
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    n = windows[-1][1]
    ws: List[torch.Tensor] = []
    for k, (s, e) in enumerate(windows):
        j = torch.arange(e - s, dtype=torch.float32)
        w = torch.ones(e - s)
        if blend == "linear":
            if k > 0:
                ov = windows[k - 1][1] - s
                w = torch.minimum(w, (j + 1) / (ov + 1))
            if k + 1 < len(windows):
                ov = e - windows[k + 1][0]
                w = torch.minimum(w, (e - s - j) / (ov + 1))
        else:
            lo = s if k == 0 else (windows[k - 1][1] + s + 1) // 2
            hi = e if k + 1 == len(windows) else (e + windows[k + 1][0] + 1) // 2
            frames = j + s
            w = ((frames >= lo) & (frames < hi)).float()
        ws.append(w)
    total = torch.zeros(n)
    for (s, e), w in zip(windows, ws):
        total[s:e] += w
    return [w / total[s:e] for (s, e), w in zip(windows, ws)]


__all__ = ["BLENDS", "SCHEDULERS", "make_scheduler", "plan_windows", "window_latents", "window_weights"]
