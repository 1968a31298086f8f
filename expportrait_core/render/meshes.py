"""Small procedural meshes for renderer tests, benchmarks and demos (no assets needed)."""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor


def _orient_outward(verts: Tensor, faces: Tensor) -> Tensor:
    """Flip faces whose normal points towards the origin (valid for star-shaped meshes)."""
    tri = verts[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    inward = (n * tri.mean(1)).sum(-1) < 0
    faces = faces.clone()
    faces[inward] = faces[inward][:, [0, 2, 1]]
    return faces


def uv_sphere(n_lat: int, n_lon: int, radius: float = 1.0, dtype: torch.dtype = torch.float32
              ) -> Tuple[Tensor, Tensor]:
    """Closed UV sphere centred at the origin, faces counter-clockwise seen from outside.

    Args:
        n_lat: number of latitude bands (>= 2); n_lon: number of longitude segments (>= 3).
        radius: sphere radius.

    Returns:
        ``verts: [2 + n_lon * (n_lat - 1), 3]`` and ``faces: [2 * n_lon * (n_lat - 1), 3]`` int64.
    """
    i = torch.arange(1, n_lat, dtype=torch.float64)
    j = torch.arange(n_lon, dtype=torch.float64)
    theta = (math.pi * i / n_lat)[:, None]
    phi = (2 * math.pi * j / n_lon)[None, :]
    ring = torch.stack([torch.sin(theta) * torch.sin(phi), torch.cos(theta).expand(-1, n_lon),
                        torch.sin(theta) * torch.cos(phi)], dim=-1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), ring,
                       torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)]) * radius
    top, bottom = 0, verts.shape[0] - 1

    def rid(r, c):  # ring r in 0..n_lat-2, column c (wrapped)
        return 1 + r * n_lon + (c % n_lon)

    c = torch.arange(n_lon)
    faces = [torch.stack([torch.full_like(c, top), rid(0, c), rid(0, c + 1)], 1)]
    for r in range(n_lat - 2):
        faces.append(torch.stack([rid(r, c), rid(r + 1, c), rid(r + 1, c + 1)], 1))
        faces.append(torch.stack([rid(r, c), rid(r + 1, c + 1), rid(r, c + 1)], 1))
    faces.append(torch.stack([rid(n_lat - 2, c), torch.full_like(c, bottom), rid(n_lat - 2, c + 1)], 1))
    faces = torch.cat(faces).long()
    return verts.to(dtype), _orient_outward(verts, faces)


def head_proxy_mesh(n_faces: int = 20908, seed: int = 0, dtype: torch.dtype = torch.float32
                    ) -> Tuple[Tensor, Tensor]:
    """A head-sized, head-shaped closed-ish mesh with exactly ``n_faces`` faces (for benchmarks).

    An ellipsoid of SMPL-X head proportions (metres; +y up, face towards +z) with a nose, brow
    ridge, eye sockets, cheeks and seeded low-frequency bumps; a few faces around the bottom pole
    (the neck) are dropped to hit ``n_faces`` exactly. 20,908 is SMPL-X's face count.

    Returns:
        ``verts: [V, 3]``, ``faces: [n_faces, 3]`` int64 (counter-clockwise seen from outside).
    """
    n_lat = max(3, int(math.ceil(math.sqrt(n_faces / 4.0))) + 1)
    n_lon = max(3, int(math.ceil(n_faces / (2.0 * (n_lat - 1)))))
    verts, faces = uv_sphere(n_lat, n_lon, 1.0, torch.float64)
    g = torch.Generator().manual_seed(seed)
    u = verts / verts.norm(dim=-1, keepdim=True)

    def bump(direction, width):
        d = torch.tensor(direction, dtype=torch.float64)
        d = d / d.norm()
        return torch.exp(-(1.0 - (u @ d)) / (width ** 2))

    r = torch.ones(u.shape[0], dtype=torch.float64)
    r += 0.22 * bump((0.0, -0.12, 1.0), 0.16)                  # nose
    r += 0.06 * bump((0.0, 0.25, 1.0), 0.25)                   # brow ridge
    r -= 0.05 * (bump((0.33, 0.12, 0.94), 0.16) + bump((-0.33, 0.12, 0.94), 0.16))   # eye sockets
    r += 0.04 * (bump((0.55, -0.2, 0.8), 0.3) + bump((-0.55, -0.2, 0.8), 0.3))         # cheeks
    r += 0.05 * bump((0.0, -0.55, 0.85), 0.2)                  # chin
    for _ in range(12):                                        # seeded low-frequency bumps
        d = torch.randn(3, generator=g, dtype=torch.float64)
        r += 0.015 * float(torch.randn((), generator=g)) * bump(tuple(d.tolist()), 0.5)
    scale = torch.tensor([0.078, 0.105, 0.095], dtype=torch.float64)
    verts = u * r[:, None] * scale
    if faces.shape[0] > n_faces:
        # drop the faces nearest the bottom pole (the neck opening)
        cy = verts[faces].mean(1)[:, 1]
        keep = torch.argsort(cy, descending=True)[:n_faces]
        faces = faces[torch.sort(keep).values]
    return verts.to(dtype), faces
