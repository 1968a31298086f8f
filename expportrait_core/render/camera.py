"""OpenCV pinhole camera used by every renderer backend.

Conventions (see CONTRIBUTING.md): camera axes x right, y down, z forward into the scene; ``R, t``
map world to camera (``p_cam = R @ p_world + t``); intrinsics ``fx, fy, cx, cy`` in pixels with
pixel centres at integer + 0.5, so the top-left pixel's centre is (0.5, 0.5) and a point on the
optical axis lands on ``(cx, cy)``.

Every parameter may be shared by the whole batch (a float, ``R: [3, 3]``, ``t: [3]``) or given per
batch item (``fx: [B]``, ``R: [B, 3, 3]``, ``t: [B, 3]``); ``width``/``height`` are shared. Tensor
parameters keep their autograd history, so gradients reach the camera as well as the mesh.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import ExpPortraitError

Scalar = Union[float, Tensor]


def _as_vec3(x: Union[Sequence[float], Tensor], name: str) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float32) if not isinstance(x, Tensor) else x
    if t.shape[-1:] != (3,):
        raise ExpPortraitError(f"Camera: '{name}' must have 3 components (x, y, z), got shape {tuple(t.shape)}.")
    return t


@dataclass
class Camera:
    """OpenCV pinhole camera (world -> camera ``R, t``; intrinsics in pixels).

    Attributes:
        fx, fy: focal lengths in pixels, float or ``[B]`` tensor.
        cx, cy: principal point in pixels (pixel centres at +0.5), float or ``[B]`` tensor.
        R: world -> camera rotation, ``[3, 3]`` or ``[B, 3, 3]``.
        t: world -> camera translation (metres), ``[3]`` or ``[B, 3]``.
        width, height: image size in pixels (shared by the batch).
    """

    fx: Scalar
    fy: Scalar
    cx: Scalar
    cy: Scalar
    R: Tensor
    t: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ExpPortraitError(
                f"Camera: width and height must be positive pixel counts, got {self.width}x{self.height}.")
        self.width = int(self.width)
        self.height = int(self.height)
        if not isinstance(self.R, Tensor):
            self.R = torch.as_tensor(self.R, dtype=torch.float32)
        if not isinstance(self.t, Tensor):
            self.t = torch.as_tensor(self.t, dtype=torch.float32)
        if self.R.shape[-2:] != (3, 3) or self.R.dim() not in (2, 3):
            raise ExpPortraitError(f"Camera: R must be [3, 3] or [B, 3, 3], got {tuple(self.R.shape)}.")
        if self.t.shape[-1:] != (3,) or self.t.dim() not in (1, 2):
            raise ExpPortraitError(f"Camera: t must be [3] or [B, 3], got {tuple(self.t.shape)}.")
        n = self.batch_size
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            if isinstance(v, Tensor) and v.dim() > 1:
                raise ExpPortraitError(f"Camera: {name} must be a float or a [B] tensor, got {tuple(v.shape)}.")
        if n is None:
            return
        for name, v in self._batched_fields():
            if v is not None and v != n and v != 1:
                raise ExpPortraitError(
                    f"Camera: per-item parameters disagree on the batch size ({name} has {v}, expected {n}).")

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_fov(cls, fov_y_deg: float, width: int, height: int, R: Optional[Tensor] = None,
                 t: Optional[Tensor] = None) -> "Camera":
        """Camera with vertical field of view ``fov_y_deg`` (degrees), square pixels, centred
        principal point. ``R`` defaults to identity and ``t`` to zero (camera at the world origin
        looking along +z)."""
        if not 0.0 < float(fov_y_deg) < 180.0:
            raise ExpPortraitError(f"Camera.from_fov: fov_y_deg must be in (0, 180) degrees, got {fov_y_deg}.")
        f = 0.5 * height / math.tan(math.radians(float(fov_y_deg)) * 0.5)
        R = torch.eye(3) if R is None else R
        t = torch.zeros(3) if t is None else t
        return cls(f, f, width * 0.5, height * 0.5, R, t, width, height)

    @classmethod
    def look_at(cls, eye: Union[Sequence[float], Tensor], target: Union[Sequence[float], Tensor],
                up: Union[Sequence[float], Tensor] = (0.0, 1.0, 0.0), fov_y_deg: Optional[float] = None,
                width: int = 512, height: int = 512, focal: Optional[float] = None) -> "Camera":
        """Camera at ``eye`` [3] looking at ``target`` [3] with ``up`` [3] pointing up in the image.

        Give either ``fov_y_deg`` (degrees) or ``focal`` (pixels, fx = fy). ``eye``/``target`` may
        also be ``[B, 3]`` for a batch of views.
        """
        if (fov_y_deg is None) == (focal is None):
            raise ExpPortraitError("Camera.look_at: give exactly one of fov_y_deg (degrees) or focal (pixels).")
        eye_t, target_t, up_t = _as_vec3(eye, "eye"), _as_vec3(target, "target"), _as_vec3(up, "up")
        dtype = torch.promote_types(torch.promote_types(eye_t.dtype, target_t.dtype), up_t.dtype)
        eye_t, target_t, up_t = eye_t.to(dtype), target_t.to(dtype), up_t.to(dtype)
        fwd = target_t - eye_t
        if bool((fwd.norm(dim=-1) < 1e-12).any()):
            raise ExpPortraitError("Camera.look_at: eye and target coincide; the viewing direction is undefined.")
        z = fwd / fwd.norm(dim=-1, keepdim=True)
        x = torch.linalg.cross(z, up_t.expand_as(z), dim=-1)       # right = forward x up (OpenCV: y down)
        if bool((x.norm(dim=-1) < 1e-9).any()):
            raise ExpPortraitError("Camera.look_at: 'up' is parallel to the viewing direction; pick another up vector.")
        x = x / x.norm(dim=-1, keepdim=True)
        y = torch.linalg.cross(z, x, dim=-1)                       # image down
        R = torch.stack([x, y, z], dim=-2)
        t = -(R @ eye_t.unsqueeze(-1)).squeeze(-1)
        if focal is None:
            f = 0.5 * height / math.tan(math.radians(float(fov_y_deg)) * 0.5)
        else:
            f = float(focal)
        return cls(f, f, width * 0.5, height * 0.5, R, t, width, height)

    # ------------------------------------------------------------------ batch handling
    def _batched_fields(self):
        out = []
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            out.append((name, v.shape[0] if isinstance(v, Tensor) and v.dim() == 1 else None))
        out.append(("R", self.R.shape[0] if self.R.dim() == 3 else None))
        out.append(("t", self.t.shape[0] if self.t.dim() == 2 else None))
        return out

    @property
    def batch_size(self) -> Optional[int]:
        """Largest per-item batch size among the parameters, or None when all are shared."""
        sizes = [v for _, v in self._batched_fields() if v is not None]
        return max(sizes) if sizes else None

    def params(self, B: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        """Per-item parameters expanded to batch ``B``.

        Returns ``(fx, fy, cx, cy, R, t)`` with shapes ``[B]``, ``[B]``, ``[B]``, ``[B]``,
        ``[B, 3, 3]``, ``[B, 3]`` on ``device``/``dtype`` (defaults: those of ``R``).
        """
        n = self.batch_size
        if n is not None and n not in (1, B):
            raise ExpPortraitError(f"Camera has batch size {n} but the mesh batch has {B} items; "
                                   "give one camera per item or a shared camera.")
        device = self.R.device if device is None else device
        dtype = (self.R.dtype if self.R.is_floating_point() else torch.float32) if dtype is None else dtype

        def vec(v: Scalar) -> Tensor:
            if isinstance(v, Tensor):
                v = v.to(device=device, dtype=dtype)
                return v.reshape(-1).expand(B) if v.numel() == 1 else v.expand(B)
            return torch.full((B,), float(v), device=device, dtype=dtype)

        R = self.R.to(device=device, dtype=dtype)
        t = self.t.to(device=device, dtype=dtype)
        R = R.expand(B, 3, 3) if R.dim() == 2 or R.shape[0] == 1 else R
        t = t.expand(B, 3) if t.dim() == 1 or t.shape[0] == 1 else t
        return vec(self.fx), vec(self.fy), vec(self.cx), vec(self.cy), R.reshape(B, 3, 3), t.reshape(B, 3)

    def batch(self, B: int) -> "Camera":
        """This camera with every parameter expanded to ``B`` items (``fx: [B]``, ``R: [B, 3, 3]``...)."""
        fx, fy, cx, cy, R, t = self.params(B)
        return Camera(fx, fy, cx, cy, R, t, self.width, self.height)

    def to(self, device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None) -> "Camera":
        """Copy with tensor parameters moved to ``device``/``dtype`` (floats stay floats)."""
        def mv(v):
            return v.to(device=device, dtype=dtype) if isinstance(v, Tensor) else v
        return Camera(mv(self.fx), mv(self.fy), mv(self.cx), mv(self.cy), mv(self.R), mv(self.t),
                      self.width, self.height)

    def index(self, i: int) -> "Camera":
        """Camera of batch item ``i`` (shared parameters are kept as they are)."""
        def pick(v, batched_dim: int):
            if isinstance(v, Tensor) and v.dim() == batched_dim:
                return v[i] if batched_dim > 1 else v[i:i + 1]
            return v
        return Camera(pick(self.fx, 1), pick(self.fy, 1), pick(self.cx, 1), pick(self.cy, 1),
                      pick(self.R, 3), pick(self.t, 2), self.width, self.height)

    def scaled(self, s: float) -> "Camera":
        """Same view rendered at ``s`` times the resolution (intrinsics scaled, pixel centres kept)."""
        w, h = int(round(self.width * s)), int(round(self.height * s))
        sx, sy = w / self.width, h / self.height
        return Camera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, self.R, self.t, w, h)

    # ------------------------------------------------------------------ transforms
    def world_to_camera(self, points: Tensor) -> Tensor:
        """``points: [B, N, 3]`` world -> ``[B, N, 3]`` camera coordinates (OpenCV axes, metres)."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ExpPortraitError(f"Camera.world_to_camera: points must be [B, N, 3], got {tuple(points.shape)}.")
        _, _, _, _, R, t = self.params(points.shape[0], points.device, points.dtype)
        return points @ R.transpose(1, 2) + t[:, None, :]

    def world_to_camera_xyz(self, points: Tensor) -> Tuple[Tensor, Tensor]:
        """Like :meth:`world_to_camera`, also returning the same points as ``xyz: [3, B*N]``
        (axis-major; what the rasterizer gathers from), computed without a transposing copy
        when the batch shares one camera."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ExpPortraitError(f"Camera.world_to_camera: points must be [B, N, 3], got {tuple(points.shape)}.")
        B, N, _ = points.shape
        _, _, _, _, R, t = self.params(B, points.device, points.dtype)
        if B == 1:
            xyz = torch.addmm(t[0][:, None], R[0], points[0].t())     # [3, N], contiguous
            return xyz.t().unsqueeze(0), xyz
        cam = points @ R.transpose(1, 2) + t[:, None, :]
        return cam, cam.reshape(B * N, 3).t().contiguous()

    def project_camera(self, points_cam: Tensor) -> Tensor:
        """``points_cam: [B, N, 3]`` camera coordinates -> ``[B, N, 2]`` pixel coordinates (x, y)."""
        fx, fy, cx, cy, _, _ = self.params(points_cam.shape[0], points_cam.device, points_cam.dtype)
        z = points_cam[..., 2]
        x = fx[:, None] * points_cam[..., 0] / z + cx[:, None]
        y = fy[:, None] * points_cam[..., 1] / z + cy[:, None]
        return torch.stack([x, y], dim=-1)

    def project(self, points: Tensor) -> Tensor:
        """``points: [B, N, 3]`` **world** coordinates -> ``[B, N, 2]`` pixel coordinates (x right,
        y down; the centre of pixel (col i, row j) is (i + 0.5, j + 0.5)). Points behind the camera
        give meaningless values (divide by z <= 0)."""
        return self.project_camera(self.world_to_camera(points))
