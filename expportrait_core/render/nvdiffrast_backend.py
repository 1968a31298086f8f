"""nvdiffrast raster pass (CUDA), imported lazily.

``pip install diffrp-nvdiffrast`` provides the ``nvdiffrast`` module; its CUDA plugin compiles on
first use (needs ``nvcc``). We use ``nvdiffrast.torch.RasterizeCudaContext`` (no OpenGL needed).

Camera conversion: the OpenCV intrinsics become a clip-space projection whose NDC x, y are
``2 * pixel / size - 1``. nvdiffrast places pixel (col i, row j) at NDC
``(2 (i + 0.5) / W - 1, 2 (j + 0.5) / H - 1)`` with row 0 first in memory, so with this mapping its
output rows are already in image order (row 0 = top): no y flip is needed. Depth uses near/far
planes bracketing the mesh.

To match the torch backend, triangles with a vertex at ``z <= near`` are dropped and, when
``cull_backfaces``, so are back faces (nvdiffrast itself never culls); the per-item triangle
subsets are rasterized item by item when they differ.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor

from ..errors import ExpPortraitError
from .camera import Camera

_contexts: Dict[str, object] = {}


def _context(device: torch.device):
    import nvdiffrast.torch as dr

    key = str(device)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = dr.RasterizeCudaContext(device=device)
        _contexts[key] = ctx
    return ctx


def clip_positions(verts_cam: Tensor, camera: Camera, near: float, far: float) -> Tensor:
    """OpenCV camera-space ``[B, V, 3]`` -> clip space ``[B, V, 4]`` for nvdiffrast.

    ``x_clip = (2 fx / W) X + (2 cx / W - 1) Z``, ``y_clip = (2 fy / H) Y + (2 cy / H - 1) Z``,
    ``z_clip = a Z + b`` mapping ``[near, far]`` to ``[-1, 1]``, ``w_clip = Z``.
    """
    B = verts_cam.shape[0]
    W, H = camera.width, camera.height
    fx, fy, cx, cy, _, _ = camera.params(B, verts_cam.device, verts_cam.dtype)
    X, Y, Z = verts_cam.unbind(-1)
    a = (far + near) / (far - near)
    b = -2.0 * far * near / (far - near)
    xc = (2.0 * fx / W)[:, None] * X + (2.0 * cx / W - 1.0)[:, None] * Z
    yc = (2.0 * fy / H)[:, None] * Y + (2.0 * cy / H - 1.0)[:, None] * Z
    return torch.stack([xc, yc, a * Z + b, Z], dim=-1)


def rasterize(verts_cam: Tensor, faces: Tensor, camera: Camera, cull_backfaces: bool = True,
              near: float = 1e-4) -> Tuple[Tensor, Tensor]:
    """Visibility with nvdiffrast.

    Args:
        verts_cam: ``[B, V, 3]`` camera-space vertices on a CUDA device.
        faces: ``[F, 3]`` int64 vertex indices.
        camera: :class:`Camera` (intrinsics and size used).
        cull_backfaces, near: as in :func:`expportrait_core.render.rasterize`.

    Returns:
        ``face_id: [B, H, W]`` int64 (-1 background) and ``bary: [B, H, W, 3]`` float32
        perspective-correct barycentrics ``(u, v, 1 - u - v)`` that carry nvdiffrast's own
        gradients to ``verts_cam``.
    """
    try:
        import nvdiffrast.torch as dr
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ExpPortraitError("render: nvdiffrast is not installed; 'pip install diffrp-nvdiffrast' "
                               "(needs the CUDA toolkit) or use backend='torch'.") from e
    if verts_cam.device.type != "cuda":
        raise ExpPortraitError("render: the nvdiffrast backend needs CUDA tensors; use backend='torch' on CPU.")
    return rasterize_with(dr, _context(verts_cam.device), verts_cam, faces, camera, cull_backfaces, near)


def rasterize_with(dr, ctx, verts_cam: Tensor, faces: Tensor, camera: Camera, cull_backfaces: bool = True,
                   near: float = 1e-4) -> Tuple[Tensor, Tensor]:
    """:func:`rasterize` with an explicit ``nvdiffrast.torch``-like module ``dr`` and context
    (separated so the conversion logic can be tested without a GPU)."""
    B, V, _ = verts_cam.shape
    H, W = camera.height, camera.width
    device = verts_cam.device
    faces = faces.to(device=device, dtype=torch.int64)

    # Same triangle selection as the torch backend.
    with torch.no_grad():
        tri = verts_cam.detach()[:, faces.reshape(-1)].reshape(B, -1, 3, 3)
        det = (tri[:, :, 0] * torch.linalg.cross(tri[:, :, 1], tri[:, :, 2], dim=-1)).sum(-1)
        keep = tri[..., 2].amin(-1) > near
        keep &= (det < 0) if cull_backfaces else torch.ones_like(keep)
        zk = tri[..., 2][keep]
        if zk.numel() == 0:
            return (torch.full((B, H, W), -1, dtype=torch.int64, device=device),
                    torch.zeros((B, H, W, 3), dtype=torch.float32, device=device))
        z_near = float(zk.min()) * 0.5
        z_far = float(zk.max()) * 2.0 + 1e-6
    pos = clip_positions(verts_cam.float(), camera, z_near, z_far).contiguous()

    same = bool((keep == keep[:1]).all())
    items = [(slice(0, B), keep[0])] if same else [(slice(i, i + 1), keep[i]) for i in range(B)]
    ids_out, bary_out = [], []
    for sl, k in items:
        sub = k.nonzero().squeeze(1)
        n = pos[sl].shape[0]
        if sub.numel() == 0:
            ids_out.append(torch.full((n, H, W), -1, dtype=torch.int64, device=device))
            bary_out.append(torch.zeros((n, H, W, 3), dtype=torch.float32, device=device))
            continue
        tri_i = faces[sub].to(torch.int32).contiguous()
        rast, _ = dr.rasterize(ctx, pos[sl].contiguous(), tri_i, resolution=(H, W))
        tid = rast[..., 3].detach().round().long()                      # 1-based, 0 = background
        ids = torch.where(tid > 0, sub[(tid - 1).clamp_min(0)], torch.full_like(tid, -1))
        u, v = rast[..., 0], rast[..., 1]
        bary = torch.stack([u, v, 1.0 - u - v], dim=-1) * (tid > 0)[..., None]
        ids_out.append(ids)
        bary_out.append(bary)
    return torch.cat(ids_out, 0), torch.cat(bary_out, 0)
