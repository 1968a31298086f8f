"""Overlay preview: the tracked personalized mesh rendered as normals over the driving frames."""
from __future__ import annotations

from typing import Iterable, Optional, Union

import numpy as np
import torch

from ..errors import ExpPortraitError
from ..progress import ProgressFn, report


def overlay_preview(frames: Union[np.ndarray, Iterable[np.ndarray]], result, proxy, *, alpha: float = 0.6,
                    draw_landmarks: bool = True, chunk: int = 8, max_side: int = 0,
                    progress: Optional[ProgressFn] = None) -> np.ndarray:
    """Blend the tracked mesh's normal map over each frame.

    frames: the driving frames (uint8 [T, H, W, 3] or an iterable of [H, W, 3]); result: a
    :class:`~.pipeline.TrackResult` (or anything with ``motion`` and ``landmarks_2d``); alpha:
    opacity of the mesh; draw_landmarks: dots at the fitted landmark projections; max_side: render
    and return at most this many pixels on the longer side (0 = the frame size).
    Returns uint8 [T, H', W', 3].
    """
    import cv2

    from ..control import camera_from_dict
    from ..render import render_normals

    motion = result.motion
    T = motion.num_frames
    H, W = motion.image_size
    scale = 1.0
    if max_side and max(H, W) > max_side:
        scale = max_side / float(max(H, W))
    h, w = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
    cam = camera_from_dict(motion.camera, w, h, scale)
    ident = motion.identity
    static = ident.static_offsets.to(proxy.device) if ident is not None else None
    out = np.zeros((T, h, w, 3), np.uint8)
    lm = getattr(result, "landmarks_2d", None)
    it = iter(frames)
    with torch.no_grad():
        for s in range(0, T, chunk):
            e = min(T, s + chunk)
            params = motion.params.index(slice(s, e)).to(proxy.device)
            dyn = motion.dense_dynamic_offsets(proxy.num_vertices, slice(s, e))
            verts = proxy(params, static, None if dyn is None else dyn.to(proxy.device)).vertices
            r = render_normals(verts, proxy.faces, cam.batch(e - s).to(proxy.device))
            rgb = r.normal_rgb.clamp(0, 1).cpu().numpy()
            m = r.mask.float().cpu().numpy()[..., None] * float(alpha)
            for k in range(e - s):
                try:
                    fr = np.asarray(next(it))
                except StopIteration:
                    raise ExpPortraitError(f"overlay_preview: {T} motion frames but fewer video frames.") from None
                if fr.dtype != np.uint8:
                    fr = (np.clip(fr, 0, 1) * 255 + 0.5).astype(np.uint8)
                fr = fr[..., :3]
                if fr.shape[:2] != (H, W):
                    raise ExpPortraitError(f"overlay_preview: frame {s + k} is {fr.shape[1]}x{fr.shape[0]}, the motion was tracked at {W}x{H}.")
                if (h, w) != (H, W):
                    fr = cv2.resize(fr, (w, h), interpolation=cv2.INTER_AREA)
                img = fr.astype(np.float32) / 255.0 * (1 - m[k]) + rgb[k] * m[k]
                img = (img * 255 + 0.5).astype(np.uint8)
                if draw_landmarks and lm is not None:
                    for x, y in np.asarray(lm[s + k], np.float64) * scale:
                        if np.isfinite(x) and np.isfinite(y):
                            cv2.circle(img, (int(round(x - 0.5)), int(round(y - 0.5))), max(1, int(round(1.5 * max(h, w) / 480))),
                                       (40, 255, 40), -1, lineType=cv2.LINE_AA)
                out[s + k] = img
            report(progress, e, T)
    return out
