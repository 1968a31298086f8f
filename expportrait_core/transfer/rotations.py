"""Axis-angle helpers for pose transfer (batched, differentiable, float32/float64)."""
from __future__ import annotations

import torch


def aa_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues. aa: [..., 3] axis-angle (radians) → [..., 3, 3] rotation matrices."""
    shape = aa.shape[:-1]
    a = aa.reshape(-1, 3)
    theta = a.norm(dim=-1, keepdim=True)
    small = theta < 1e-8
    axis = a / torch.where(small, torch.ones_like(theta), theta)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)
    s = torch.sin(theta)[..., None]
    c = torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=a.dtype, device=a.device).expand_as(K)
    R = eye + s * K + (1 - c) * (K @ K)
    # first-order expansion near zero keeps tiny rotations exact and differentiable
    Kf = torch.stack([zero, -a[:, 2], a[:, 1], a[:, 2], zero, -a[:, 0], -a[:, 1], a[:, 0], zero], -1).view(-1, 3, 3)
    R = torch.where(small[..., None], eye + Kf, R)
    return R.view(*shape, 3, 3)


def matrix_to_aa(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`aa_to_matrix` via a unit quaternion (Shepperd's method, stable everywhere).

    R: [..., 3, 3] → [..., 3] axis-angle with angle in [0, π]."""
    shape = R.shape[:-2]
    M = R.reshape(-1, 3, 3)
    m = lambda i, j: M[:, i, j]  # noqa: E731
    tr = m(0, 0) + m(1, 1) + m(2, 2)
    # four candidate (unnormalized) quaternions (w, x, y, z); use the best-conditioned one
    cand = torch.stack([
        torch.stack([1 + tr, m(2, 1) - m(1, 2), m(0, 2) - m(2, 0), m(1, 0) - m(0, 1)], -1),
        torch.stack([m(2, 1) - m(1, 2), 1 + m(0, 0) - m(1, 1) - m(2, 2), m(0, 1) + m(1, 0), m(0, 2) + m(2, 0)], -1),
        torch.stack([m(0, 2) - m(2, 0), m(0, 1) + m(1, 0), 1 - m(0, 0) + m(1, 1) - m(2, 2), m(1, 2) + m(2, 1)], -1),
        torch.stack([m(1, 0) - m(0, 1), m(0, 2) + m(2, 0), m(1, 2) + m(2, 1), 1 - m(0, 0) - m(1, 1) + m(2, 2)], -1),
    ], 1)  # [n, 4, 4]
    diag = torch.stack([tr, m(0, 0), m(1, 1), m(2, 2)], -1)
    best = diag.argmax(-1)
    q = cand[torch.arange(M.shape[0]), best]
    q = q / q.norm(dim=-1, keepdim=True)
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)  # w >= 0 → angle in [0, π]
    w, v = q[:, 0], q[:, 1:]
    sin_half = v.norm(dim=-1)
    angle = 2 * torch.atan2(sin_half, w)
    scale = torch.where(sin_half > 1e-7, angle / torch.clamp(sin_half, min=1e-12), 2.0 / torch.clamp(w, min=1e-12))
    return (v * scale[:, None]).view(*shape, 3)


def scale_rotation(R: torch.Tensor, s: float) -> torch.Tensor:
    """R^s (geodesic scaling of a rotation). R: [..., 3, 3]."""
    if s == 1.0:
        return R
    return aa_to_matrix(matrix_to_aa(R) * s)
