"""Preview drawings: landmarks and boxes over a frame."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .layout import IBUG68_REGIONS
from .types import to_rgb_uint8

_COLORS = {
    "contour": (255, 200, 0),
    "brow_r": (255, 120, 0),
    "brow_l": (255, 120, 0),
    "nose": (0, 200, 255),
    "eye_r": (0, 255, 120),
    "eye_l": (0, 255, 120),
    "mouth_outer": (255, 60, 120),
    "mouth_inner": (255, 60, 200),
}
_CLOSED = {"eye_r", "eye_l", "mouth_outer", "mouth_inner"}


def draw_face_overlay(
    image: np.ndarray,
    landmarks: Optional[np.ndarray] = None,
    box: Optional[np.ndarray] = None,
    found: bool = True,
) -> np.ndarray:
    """A copy of ``image`` (uint8 ``[H, W, 3]``) with the box and the 68 landmarks drawn.

    landmarks: ``[68, 2]`` continuous coordinates; box: ``[4]``. ``found=False`` (an interpolated
    frame) draws in grey with a dashed look so previews show which frames were filled in.
    """
    import cv2

    img = to_rgb_uint8(image).copy()
    h, w = img.shape[:2]
    th = max(1, int(round(min(h, w) / 300)))
    shift = 4  # sub-pixel drawing: coordinates in 1/16 px
    f = 1 << shift

    def pt(p):
        return (int(round((p[0] - 0.5) * f)), int(round((p[1] - 0.5) * f)))

    if box is not None:
        b = np.asarray(box, np.float64)
        col = (0, 255, 0) if found else (160, 160, 160)
        cv2.rectangle(img, pt(b[:2] + 0.5), pt(b[2:] - 0.5), col, th, cv2.LINE_AA, shift)
    if landmarks is not None:
        l = np.asarray(landmarks, np.float64)
        for region, idx in IBUG68_REGIONS.items():
            col = _COLORS[region] if found else (170, 170, 170)
            poly = np.array([pt(l[i]) for i in idx], np.int32)
            if found:
                cv2.polylines(img, [poly], region in _CLOSED, col, th, cv2.LINE_AA, shift)
            for p in poly:
                cv2.circle(img, (int(p[0]), int(p[1])), (th + 1) * f, col, -1, cv2.LINE_AA, shift)
    return img




def draw_video_faces(frames, video_faces) -> np.ndarray:
    """Overlay previews for a clip: frames ``T × [H, W, C]`` and a :class:`~.video.VideoFaces`
    → uint8 ``[T, H, W, 3]`` (interpolated frames drawn in grey)."""
    out = [
        draw_face_overlay(frames[t], video_faces.landmarks[t], video_faces.boxes[t], bool(video_faces.found[t]))
        for t in range(len(video_faces))
    ]
    return np.stack(out) if out else np.zeros((0, 1, 1, 3), np.uint8)


__all__ = ["draw_face_overlay", "draw_video_faces"]
