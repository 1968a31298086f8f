"""Default cameras that frame the bust like a portrait photo."""
from __future__ import annotations

import math

import torch

# World (SMPL-X: +y up, face towards +z) → OpenCV camera (y down, z forward) for a camera in front
# of the face looking back along -z.
FRONT_R = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


def portrait_camera_params(
    center: torch.Tensor, head_height: float, width: int, height: int, fov_y_deg: float = 14.0, fill: float = 0.55
) -> dict:
    """Intrinsics/extrinsics (a ``camera`` dict: fx, fy, cx, cy [1]; R [3, 3]; t [3]) of a frontal
    camera looking at ``center: [3]`` from a distance at which a head of ``head_height`` metres
    fills ``fill`` of the image height. A narrow field of view, as in portrait photography."""
    f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
    dist = f * head_height / (fill * height)
    eye = center + torch.tensor([0.0, 0.0, dist], dtype=center.dtype)
    R = FRONT_R.to(center.dtype)
    t = -R @ eye
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return {"fx": one(f), "fy": one(f), "cx": one(width / 2), "cy": one(height / 2), "R": R, "t": t}
