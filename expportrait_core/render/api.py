"""Differentiable normal-map rendering: public functions.

Split like nvdiffrast: a raster pass that only finds the visible triangle per pixel centre (not
differentiable; pure PyTorch on any device, or nvdiffrast on CUDA), then barycentrics, depth and
attributes recomputed in torch from that triangle id and the pixel-centre ray, so gradients reach
vertex positions (and camera parameters) through them exactly as in nvdiffrast. Visibility
itself (which triangle wins, where silhouettes are) has no gradient.

Perspective-correct barycentrics of the pixel ray ``d = ((x - cx) / fx, (y - cy) / fy, 1)`` on a
camera-space triangle ``(v0, v1, v2)``: with ``c_i = v_{i+1} x v_{i+2}``, ``b_i = c_i.d / sum_j c_j.d``;
with ``N = (v1 - v0) x (v2 - v0) = sum_j c_j`` and ``det = N . v0``, the camera depth is
``z = det / N.d``. A vertex attribute ``a`` interpolates as ``(sum_i a_i c_i^T) d / N.d``, so for
the normal map each visible face gets one 3x3 matrix and a pixel costs one gather (see
:class:`_ShadePixels`). Per-face differentiable work is limited to the faces that cover pixels.

Kernels: on CPU tensors (float32/float64) the work runs by default in the numba kernels of
:mod:`.numba_kernels` (:func:`_render_normals_numba`): a span rasterizer that repeats the PyTorch
raster's float32 arithmetic (same face ids), then one fused pass writing every dense output, with
fused hand-written backward passes (:class:`_NumbaShade`, :class:`_NumbaVertexNormals`); ~4-5x
faster than the PyTorch path, about llvmpipe's speed. The pure-PyTorch path below stays as the
fallback (numba missing, ``RasterConfig(kernel="torch")`` or ``EXPP_RENDER_KERNEL=torch``, other
devices and dtypes) and computes the same values.

CPU performance notes for the PyTorch path (why the code looks the way it does): per-op overhead
and memory passes dominate, so data is kept as stacked ``[axis, ..., n]`` tensors, gathers are 1-D/2-D
``index_select`` (4x faster than advanced indexing), cross products are written out
componentwise (``torch.linalg.cross`` is ~50x slower here), and inner-dim broadcasting,
``where`` and interleaving copies are avoided on pixel-sized tensors. The pixel-level stages
have hand-written backward passes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import ExpPortraitError
from .camera import Camera
from .raster_torch import FaceGeometry, RasterConfig, face_geometry, rasterize_face_ids

_BACKENDS = ("auto", "torch", "nvdiffrast")
_KERNELS = ("auto", "numba", "torch")


# ---------------------------------------------------------------------------------------------
# data types
@dataclass
class _Sparse:
    """Foreground pixels only (every backend computes these; dense tensors are scattered from them).

    pix: ``[P]`` flat index into ``B*H*W``; g: ``[P]`` flat face index ``b * F + f``; f: ``[P]``
    face index; b: ``[P]`` batch item; ray0, ray1: ``[P]`` pixel-centre ray ``((x-cx)/fx,
    (y-cy)/fy, 1)``; bary: ``[P, 3]``; depth: ``[P]``.
    """

    pix: Tensor
    g: Tensor
    f: Tensor
    b: Tensor
    ray0: Tensor
    ray1: Tensor
    bary: Optional[Tensor] = None
    depth: Optional[Tensor] = None


@dataclass
class Fragments:
    """Per-pixel rasterization result.

    Attributes:
        face_id: ``[B, H, W]`` int64 index into ``faces``; ``-1`` on background.
        bary: ``[B, H, W, 3]`` perspective-correct barycentrics of the pixel centre w.r.t. the
            face's vertices ``(faces[f, 0], faces[f, 1], faces[f, 2])``; differentiable w.r.t.
            vertex positions; zero on background.
        depth: ``[B, H, W]`` camera-space z (metres, along the optical axis) of the surface at the
            pixel centre; differentiable; zero on background.
        mask: ``[B, H, W]`` bool, True where a face covers the pixel centre.
    """

    face_id: Tensor
    bary: Tensor
    depth: Tensor
    mask: Tensor
    _sparse: Optional[_Sparse] = field(default=None, repr=False)


@dataclass
class RenderOutput:
    """Result of :func:`render_normals`.

    Attributes:
        normal_rgb: ``[B, H, W, 3]`` float in 0..1: ``0.5 * n + 0.5`` of the GL-axes normal on
            covered pixels (a surface facing the camera is (0.5, 0.5, 1.0)), background colour
            elsewhere (blended by coverage when supersampling).
        normals: ``[B, H, W, 3]`` unit normals in GL camera axes (x right, y up, z towards the
            viewer); zero on background.
        depth: ``[B, H, W]`` camera z in metres; 0 on background.
        mask: ``[B, H, W]`` float coverage (0/1; fractional when supersampling).
        face_id: ``[B, H, W]`` int64 visible face, -1 on background.
    """

    normal_rgb: Tensor
    normals: Tensor
    depth: Tensor
    mask: Tensor
    face_id: Tensor


# ---------------------------------------------------------------------------------------------
# helpers
def available_backends() -> List[str]:
    """Usable rasterizer backends: ``"torch"`` always; ``"nvdiffrast"`` when the ``nvdiffrast``
    package imports and CUDA is available."""
    out = ["torch"]
    if torch.cuda.is_available():
        try:
            import nvdiffrast.torch  # noqa: F401
            out.append("nvdiffrast")
        except Exception:  # a broken install is the same as none for "auto"
            pass
    return out


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in _BACKENDS:
        raise ExpPortraitError(f"render: backend must be one of {list(_BACKENDS)}, got '{backend}'.")
    if backend == "auto":
        return "nvdiffrast" if device.type == "cuda" and "nvdiffrast" in available_backends() else "torch"
    if backend == "nvdiffrast":
        if device.type != "cuda":
            raise ExpPortraitError("render: backend 'nvdiffrast' needs the mesh on a CUDA device; "
                                   "move the tensors to 'cuda' or use backend='torch'.")
        if "nvdiffrast" not in available_backends():
            raise ExpPortraitError("render: backend 'nvdiffrast' is not importable; install it with "
                                   "'pip install diffrp-nvdiffrast' (needs the CUDA toolkit) or use backend='torch'.")
    return backend


_nb_state: list = []   # [numba_kernels module or None, import error], filled on first use


def _numba_kernels():
    """The numba kernels module, or None when numba cannot be imported (tried once per process:
    ``import numba`` takes ~0.5 s, so it happens on the first CPU render, not at import)."""
    if not _nb_state:
        try:
            from . import numba_kernels
            _nb_state[:] = [numba_kernels, None]
        except Exception as e:  # noqa: BLE001 - missing or broken numba: pure PyTorch fallback
            _nb_state[:] = [None, e]
    return _nb_state[0]


def _kernel(config: Optional[RasterConfig], t: Tensor):
    """The numba kernels module to render ``t`` (CPU float32/float64 only), or None for the
    pure-PyTorch path. ``config.kernel`` wins over ``EXPP_RENDER_KERNEL``, which decides "auto"."""
    k = config.kernel if config is not None else "auto"
    if k == "auto":
        k = os.environ.get("EXPP_RENDER_KERNEL", "auto").strip().lower() or "auto"
    if k not in _KERNELS:
        raise ExpPortraitError(f"render: kernel must be one of {list(_KERNELS)} (RasterConfig.kernel or the "
                               f"EXPP_RENDER_KERNEL environment variable), got '{k}'.")
    if k == "torch" or t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return None
    nk = _numba_kernels()
    if nk is None and k == "numba":
        raise ExpPortraitError(f"render: kernel 'numba' was requested but numba does not import ({_nb_state[1]}); "
                               "install it with 'pip install numba' or set EXPP_RENDER_KERNEL=torch.")
    return nk


def _check_mesh(verts: Tensor, faces: Tensor, name: str = "verts") -> Tensor:
    if not isinstance(verts, Tensor) or verts.dim() != 3 or verts.shape[-1] != 3:
        shape = tuple(verts.shape) if isinstance(verts, Tensor) else type(verts).__name__
        raise ExpPortraitError(f"render: {name} must be a [B, V, 3] tensor, got {shape}.")
    if not verts.is_floating_point():
        raise ExpPortraitError(f"render: {name} must be floating point, got {verts.dtype}.")
    if not isinstance(faces, Tensor) or faces.dim() != 2 or faces.shape[-1] != 3:
        shape = tuple(faces.shape) if isinstance(faces, Tensor) else type(faces).__name__
        raise ExpPortraitError(f"render: faces must be an [F, 3] integer tensor, got {shape}.")
    if faces.is_floating_point() or faces.dtype == torch.bool:
        raise ExpPortraitError(f"render: faces must be an integer tensor, got {faces.dtype}.")
    V = verts.shape[1]
    for entry in _checked_faces:                       # the same faces tensor comes every frame
        if entry[0] is faces and entry[1:4] == (faces._version, V, verts.device):
            return entry[4]
    out = faces.to(device=verts.device, dtype=torch.int64).contiguous()
    if out.numel() and (int(out.min()) < 0 or int(out.max()) >= V):
        raise ExpPortraitError(f"render: faces index vertices 0..{V - 1}, but contain "
                               f"{int(out.min())}..{int(out.max())}.")
    _checked_faces.append((faces, faces._version, V, verts.device, out))
    del _checked_faces[:-4]
    return out


_checked_faces: list = []   # [(faces as given, version, V, device, int64 contiguous faces)]


def _vertex_normals_geo(geo: FaceGeometry, B: int, V: int) -> Tensor:
    """Area-weighted unit vertex normals ``[3, B*V]`` (axis-major) from a :class:`FaceGeometry`
    (``N`` is the face normal scaled by twice the area)."""
    nf = geo.N                                                          # [3, B*F]
    acc = torch.zeros((3, B * V), dtype=nf.dtype, device=nf.device).index_add(1, geo.corner_idx.reshape(-1),
                                                                               nf.repeat(1, 3))
    return acc * torch.rsqrt((acc * acc).sum(0).clamp_min(1e-40))


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals (outward for counter-clockwise faces).

    Args:
        verts: ``[B, V, 3]`` positions (any frame; the result is in the same frame).
        faces: ``[F, 3]`` int vertex indices.

    Returns:
        ``[B, V, 3]`` unit normals (zero for vertices without faces). Differentiable.
    """
    faces = _check_mesh(verts, faces)
    B, V, _ = verts.shape
    return _vertex_normals_geo(face_geometry(verts, faces), B, V).t().reshape(B, V, 3)


def _sparse_from_ids(face_id: Tensor, camera: Camera, F: int, dtype: torch.dtype) -> _Sparse:
    """Foreground pixels of ``face_id: [B, H, W]`` and their pixel-centre rays."""
    B, H, W = face_id.shape
    flat = face_id.reshape(-1)
    pix = (flat >= 0).nonzero().squeeze(1)
    f = flat.index_select(0, pix)
    fx, fy, cx, cy, _, _ = camera.params(B, face_id.device, dtype)
    # row/column from the flat index in float64 (exact here, and cheaper than integer division)
    pd = pix.double()
    if B > 1:
        bd = torch.floor((pd + 0.5) * (1.0 / (H * W)))
        pd = pd - bd * (H * W)
        b = bd.long()
        g = b * F + f
        fx, fy, cx, cy = (t.index_select(0, b) for t in (fx, fy, cx, cy))
    else:
        b = torch.zeros_like(pix)
        g = f
    yd = torch.floor((pd + 0.5) * (1.0 / W))
    xd = pd - yd * W
    ray0 = ((xd + 0.5).to(dtype) - cx) / fx
    ray1 = ((yd + 0.5).to(dtype) - cy) / fy
    return _Sparse(pix=pix, g=g, f=f, b=b, ray0=ray0, ray1=ray1)


def _dense_cols(cols: Tensor, sp: _Sparse, n_pix: int, fill: Optional[Tensor] = None) -> Tensor:
    """Foreground columns ``cols: [C, P]`` -> dense ``[n_pix, C]`` (background zero or ``fill: [C]``).
    Differentiable w.r.t. ``cols``."""
    return _Densify.apply(cols, sp.pix, n_pix, fill)


def _dense1(col: Tensor, sp: _Sparse, n_pix: int) -> Tensor:
    return _Densify.apply(col[None], sp.pix, n_pix, None).view(n_pix)


def _raster_ids(verts_cam: Tensor, faces: Tensor, camera: Camera, backend: str, cull_backfaces: bool,
                near: float, config: Optional[RasterConfig], geo: Optional[FaceGeometry] = None,
                nk=None, xyz: Optional[Tensor] = None):
    """Backend dispatch for the visibility pass. Returns (face_id [B,H,W], nvdiffrast bary or None).
    ``nk``: numba kernels module (span raster) or None; ``xyz``: ``[3, B*V]`` the same vertices
    axis-major, if at hand."""
    B, V, _ = verts_cam.shape
    if geo is not None and geo.T.dtype != torch.float32:
        geo = None                                  # the raster pass recomputes in float32
    if backend == "nvdiffrast":
        from . import nvdiffrast_backend
        return nvdiffrast_backend.rasterize(verts_cam, faces, camera, cull_backfaces=cull_backfaces, near=near)
    fx, fy, cx, cy, _, _ = camera.params(B, verts_cam.device, torch.float32)
    if nk is not None and (config is None or config.method == "spans"):
        if xyz is None:
            xyz = verts_cam.reshape(B * V, 3).t()
        xyz32 = xyz.detach().to(torch.float32).contiguous()
        ids = nk.rasterize_ids(xyz32, faces, V, fx, fy, cx, cy, camera.width, camera.height, cull_backfaces, near)
        return ids, None
    ids = rasterize_face_ids(verts_cam, faces, fx, fy, cx, cy, camera.width, camera.height,
                             cull_backfaces=cull_backfaces, near=near, config=config or RasterConfig(),
                             geometry=geo)
    return ids, None


def _visible_faces(sp: _Sparse, n_faces: int) -> Tuple[Tensor, Tensor]:
    """Faces covering at least one pixel: ``vis: [n_vis]`` indices into ``B*F`` and each pixel's
    index into ``vis`` (``[P]``). Per-face differentiable work is done for these only."""
    mark = torch.zeros(n_faces, dtype=torch.bool, device=sp.g.device).index_fill_(0, sp.g, True)
    vis = mark.nonzero().squeeze(1)
    local = (torch.cumsum(mark, 0) - 1).index_select(0, sp.g)
    return vis, local


def _sparse_bary_depth(geo: FaceGeometry, sp: _Sparse) -> Tuple[Tensor, Tensor]:
    """Differentiable perspective-correct barycentrics ``[3, P]`` and camera depth ``[P]``."""
    vis, local = _visible_faces(sp, geo.det.shape[0])
    _, Nv, detv = geo.subset(vis)
    q = torch.cat([geo.edge_planes(vis).reshape(9, -1), Nv, detv[None]]).index_select(1, local)   # [13, P]
    cx_, cy_, cz_ = q[:9].view(3, 3, -1).unbind(0)                      # [3 (i), P] per axis
    n0, n1, n2, det = q[9:].unbind(0)
    s = cx_ * sp.ray0 + cy_ * sp.ray1 + cz_                             # c_i . d, [3, P]
    depth = det / (n0 * sp.ray0 + n1 * sp.ray1 + n2)                    # det / (N . d)
    return s / s.sum(0), depth


# ---------------------------------------------------------------------------------------------
# pixel-level autograd functions: hand-written backward passes (generic autograd on these
# pixel-sized tensors costs several times more on CPU)
class _Densify(torch.autograd.Function):
    """``cols: [C, P]`` foreground values -> dense ``[n_pix, C]`` (background ``fill``)."""

    @staticmethod
    def forward(ctx, cols: Tensor, pix: Tensor, n_pix: int, fill: Optional[Tensor]) -> Tensor:
        C = cols.shape[0]
        if fill is None:
            out = torch.zeros((n_pix, C), dtype=cols.dtype, device=cols.device)
        elif bool((fill == fill[0]).all()):            # uniform colour: one contiguous fill
            out = torch.full((n_pix, C), float(fill[0]), dtype=cols.dtype, device=cols.device)
        else:
            out = torch.empty((n_pix, C), dtype=cols.dtype, device=cols.device)
            for c in range(C):
                out[:, c].fill_(fill[c])
        for c in range(C):                             # column scatters: interleaving copies are slow
            out[:, c].scatter_(0, pix, cols[c])
        ctx.save_for_backward(pix)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (pix,) = ctx.saved_tensors
        g = grad_out.index_select(0, pix).t()           # [C, P]
        return g, None, None, None


class _ShadePixels(torch.autograd.Function):
    """Per-pixel normal and depth from per-face data.

    Inputs: ``Q: [13, n]`` per-face rows (M: 9 row-major entries of ``sum_i n_i c_i^T``, N: 3,
    det: 1), ``g: [P]`` index of each pixel's face into those ``n``, ``ray0, ray1: [P]`` the pixel
    ray ``(ray0, ray1, 1)``.
    Outputs: ``n: [3, P]`` unit normal (in the frame of M's rows; zero if degenerate) and
    ``depth: [P]``: ``n = normalize(M d / (N . d))``, ``depth = det / (N . d)``.
    """

    @staticmethod
    def forward(ctx, Q: Tensor, g: Tensor, ray0: Tensor, ray1: Tensor):
        q = Q.index_select(1, g)                                         # [13, P]
        Mq = q[:9].view(3, 3, -1)
        u = Mq[:, 0] * ray0 + Mq[:, 1] * ray1 + Mq[:, 2]                   # M d, [3, P]
        inv = 1.0 / (q[9] * ray0 + q[10] * ray1 + q[11])                 # 1 / (N . d)
        v = u * inv
        rinv = torch.rsqrt((v * v).sum(0).clamp_min(1e-24))
        n = v * rinv
        depth = q[12] * inv
        ctx.save_for_backward(q, g, ray0, ray1, u, inv, n, rinv)
        ctx.n_faces = Q.shape[1]
        return n, depth

    @staticmethod
    def backward(ctx, g_ngl: Optional[Tensor], g_depth: Optional[Tensor]):
        q, g, ray0, ray1, u, inv, n, rinv = ctx.saved_tensors
        P = g.shape[0]
        gq = torch.zeros((13, P), dtype=q.dtype, device=q.device)
        g_inv = torch.zeros_like(inv)
        g_u = None
        if g_ngl is not None:
            g_v = (g_ngl - n * (n * g_ngl).sum(0)) * rinv                # through the normalization
            g_u = g_v * inv
            g_inv = g_inv + (g_v * u).sum(0)
            gq[0:9].view(3, 3, P)[:, 0] = g_u * ray0
            gq[0:9].view(3, 3, P)[:, 1] = g_u * ray1
            gq[0:9].view(3, 3, P)[:, 2] = g_u
        if g_depth is not None:
            g_inv = g_inv + g_depth * q[12]
            gq[12] = g_depth * inv
        g_s = -g_inv * inv * inv                                          # d(1/s)/ds
        gq[9] = g_s * ray0
        gq[10] = g_s * ray1
        gq[11] = g_s
        gQ = torch.zeros((13, ctx.n_faces), dtype=q.dtype, device=q.device).index_add_(1, g, gq)
        g_r0 = g_r1 = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:          # camera intrinsics
            Mq = q[:9].view(3, 3, P)
            g_r0 = g_s * q[9]
            g_r1 = g_s * q[10]
            if g_u is not None:
                g_r0 = g_r0 + (g_u * Mq[:, 0]).sum(0)
                g_r1 = g_r1 + (g_u * Mq[:, 1]).sum(0)
        return gQ, None, g_r0, g_r1


# ---------------------------------------------------------------------------------------------
# public functions
def rasterize(verts_cam: Tensor, faces: Tensor, camera: Camera, backend: str = "auto", *,
              cull_backfaces: bool = True, near: float = 1e-4,
              config: Optional[RasterConfig] = None) -> Fragments:
    """Rasterize camera-space triangles (visibility at pixel centres, z-buffered).

    Args:
        verts_cam: ``[B, V, 3]`` camera-space vertices (OpenCV axes, metres), e.g.
            ``camera.world_to_camera(verts_world)``. float32 or float64.
        faces: ``[F, 3]`` int vertex indices, counter-clockwise seen from outside.
        camera: :class:`Camera`; only intrinsics and image size are used here (``R, t`` were
            applied already). Per-item intrinsics are allowed.
        backend: ``"auto"`` (nvdiffrast for CUDA tensors when installed, else torch),
            ``"torch"`` or ``"nvdiffrast"``. The "torch" backend runs the numba kernels on CPU
            tensors when numba is installed (see ``RasterConfig.kernel``).
        cull_backfaces: skip triangles facing away from the camera (default True).
        near: triangles with a vertex at ``z <= near`` metres are skipped (no near-plane clipping).
        config: :class:`RasterConfig` for the torch backend (raster method, kernel).

    Returns:
        :class:`Fragments`; ``bary`` and ``depth`` carry gradients to ``verts_cam``.
    """
    faces = _check_mesh(verts_cam, faces, "verts_cam")
    backend = _resolve_backend(backend, verts_cam.device)
    B = verts_cam.shape[0]
    H, W = camera.height, camera.width
    geo = face_geometry(verts_cam, faces) if backend == "torch" else None
    nk = _kernel(config, verts_cam) if backend == "torch" else None
    ids, extra = _raster_ids(verts_cam, faces, camera, backend, cull_backfaces, near, config, geo, nk,
                             geo.xyz if geo is not None else None)
    sp = _sparse_from_ids(ids, camera, faces.shape[0], verts_cam.dtype)
    if extra is None:
        bary3, sp.depth = _sparse_bary_depth(geo, sp)
        sp.bary = bary3.t()
    else:
        # nvdiffrast: differentiable (u, v) from its own backward; depth by interpolating z.
        sp.bary = extra.reshape(-1, 3).index_select(0, sp.pix).to(verts_cam.dtype)
        vid = sp.b[:, None] * verts_cam.shape[1] + faces.index_select(0, sp.f)
        sp.depth = (sp.bary * verts_cam[..., 2].reshape(-1)[vid]).sum(-1)
    n = B * H * W
    bary = _dense_cols(sp.bary.t(), sp, n).reshape(B, H, W, 3)
    depth = _dense1(sp.depth, sp, n).reshape(B, H, W)
    return Fragments(face_id=ids, bary=bary, depth=depth, mask=ids >= 0, _sparse=sp)


def interpolate(attr: Tensor, faces: Tensor, frags: Fragments) -> Tensor:
    """Interpolate per-vertex attributes with the fragments' barycentrics.

    Args:
        attr: ``[B, V, C]`` (or ``[V, C]``, shared by the batch) vertex attributes.
        faces: ``[F, 3]`` the faces used for rasterization.
        frags: :class:`Fragments` from :func:`rasterize`.

    Returns:
        ``[B, H, W, C]``; zero on background. Differentiable w.r.t. ``attr`` and (through
        ``frags.bary``) vertex positions.
    """
    B, H, W = frags.face_id.shape
    if attr.dim() == 2:
        attr = attr.unsqueeze(0).expand(B, -1, -1)
    if attr.dim() != 3 or attr.shape[0] != B:
        raise ExpPortraitError(f"interpolate: attr must be [B, V, C] with B={B} or [V, C], got {tuple(attr.shape)}.")
    faces = faces.to(device=attr.device, dtype=torch.int64)
    Cn = attr.shape[-1]
    sp = frags._sparse
    if sp is None or sp.bary is None:   # fragments built by hand: gather densely
        fid = frags.face_id.clamp_min(0).reshape(B, -1)
        vid = faces[fid]                                                # [B, HW, 3]
        a = torch.gather(attr, 1, vid.reshape(B, -1, 1).expand(-1, -1, Cn)).reshape(B, H * W, 3, Cn)
        out = (a * frags.bary.reshape(B, H * W, 3, 1).to(attr.dtype)).sum(2) * frags.mask.reshape(B, H * W, 1)
        return out.reshape(B, H, W, Cn)
    V = attr.shape[1]
    flat = attr.reshape(B * V, Cn)
    bary = sp.bary.to(attr.dtype)
    vals = 0
    for i in range(3):
        vid = sp.b * V + faces[:, i].index_select(0, sp.f)
        vals = vals + flat.index_select(0, vid) * bary[:, i:i + 1]
    out = torch.zeros((B * H * W, Cn), dtype=attr.dtype, device=attr.device).index_put((sp.pix,), vals)
    return out.reshape(B, H, W, Cn)


def _background(background, dtype, device) -> Tensor:
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.numel() == 1:
        bg = bg.reshape(1).expand(3)
    if bg.shape != (3,):
        raise ExpPortraitError(f"render_normals: background must be 3 floats (r, g, b) in 0..1, got {tuple(bg.shape)}.")
    return bg


def render_normals(verts_world: Tensor, faces: Tensor, camera: Camera,
                   background: Union[Tuple[float, float, float], Tensor] = (0.0, 0.0, 0.0),
                   backend: str = "auto", vertex_normals: Optional[Tensor] = None, *,
                   supersample: int = 1, cull_backfaces: bool = True, near: float = 1e-4,
                   config: Optional[RasterConfig] = None) -> RenderOutput:
    """Render camera-space normal maps (the ExpPortrait control signal).

    Args:
        verts_world: ``[B, V, 3]`` world-space vertices (SMPL-X frame, metres).
        faces: ``[F, 3]`` int vertex indices, counter-clockwise seen from outside.
        camera: :class:`Camera` (world -> camera ``R, t``; per-item parameters allowed).
        background: colour ``(r, g, b)`` in 0..1 for uncovered pixels (default black).
        backend: ``"auto"``, ``"torch"`` or ``"nvdiffrast"`` (see :func:`rasterize`).
        vertex_normals: optional ``[B, V, 3]`` or ``[V, 3]`` world-space vertex normals; by default
            area-weighted normals of ``verts_world`` (differentiable).
        supersample: render at ``s x s`` samples per pixel and box-filter (anti-aliased
            ``normal_rgb`` and fractional ``mask``; ``normals`` are the renormalized mean of covered
            samples, ``depth`` their mean, ``face_id`` the sample nearest the pixel centre). Costs
            about ``s**2`` times the time. Default 1.
        cull_backfaces, near, config: see :func:`rasterize`.

    Returns:
        :class:`RenderOutput`. ``normal_rgb``, ``normals`` and ``depth`` are differentiable w.r.t.
        ``verts_world`` (and the camera's tensor parameters).
    """
    faces = _check_mesh(verts_world, faces, "verts_world")
    s = int(supersample)
    if s < 1:
        raise ExpPortraitError(f"render_normals: supersample must be an integer >= 1, got {supersample}.")
    if s > 1:
        return _render_supersampled(verts_world, faces, camera, background, backend, vertex_normals, s,
                                    cull_backfaces, near, config)
    backend = _resolve_backend(backend, verts_world.device)
    B, V, _ = verts_world.shape
    H, W = camera.height, camera.width
    F = faces.shape[0]
    dtype, device = verts_world.dtype, verts_world.device
    verts_cam, xyz = camera.world_to_camera_xyz(verts_world)
    nk = _kernel(config, verts_world) if backend == "torch" else None
    if nk is not None:
        vn = None if vertex_normals is None else _camera_vertex_normals(vertex_normals, verts_world, camera)
        return _render_normals_numba(nk, verts_cam, xyz, faces, camera, background, vn, cull_backfaces, near, config)
    geo = face_geometry(verts_cam, faces, xyz)
    if vertex_normals is None:
        vn = _vertex_normals_geo(geo, B, V)                             # [3, B*V], camera frame
    else:
        vn = _camera_vertex_normals(vertex_normals, verts_world, camera)

    ids, extra = _raster_ids(verts_cam, faces, camera, backend, cull_backfaces, near, config, geo)
    sp = _sparse_from_ids(ids, camera, F, dtype)
    vis, local = _visible_faces(sp, B * F)                              # per-face work on these only
    nv = vis.shape[0]
    nc = vn.index_select(1, geo.take_idx(geo.corner_idx, vis)).view(3, 3, nv)   # [axis, corner, face]
    if extra is None:
        # Fold the normal interpolation into per-face 3x3 matrices M = sum_i n_i c_i^T, so a pixel
        # costs one gather: n(d) = M d / (N . d) (sum_i c_i = N), depth = det / (N . d).
        _, Nv, detv = geo.subset(vis)
        nc = nc * torch.tensor([1.0, -1.0, -1.0], dtype=dtype, device=device)[:, None, None]   # OpenCV -> GL axes
        M = (nc[:, None] * geo.edge_planes(vis)[None]).sum(2)          # [a, j, face]
        per_face = torch.cat([M.reshape(9, nv), Nv, detv[None]])        # [13, n_vis]
        n_gl, depth = _ShadePixels.apply(per_face, local, sp.ray0, sp.ray1)
    else:
        bary = extra.reshape(-1, 3).index_select(0, sp.pix).to(dtype).t()          # [3, P]
        Tv, _, _ = geo.subset(vis)
        n = (nc.view(3, 3, nv).index_select(2, local) * bary).sum(1)    # [3, P]
        depth = (Tv[2].index_select(1, local) * bary).sum(0)
        n = n * torch.rsqrt((n * n).sum(0).clamp_min(1e-24))
        n_gl = n * torch.tensor([[1.0], [-1.0], [-1.0]], dtype=dtype, device=device)   # OpenCV -> GL axes
    npx = B * H * W
    bg = _background(background, dtype, device)
    return RenderOutput(
        normal_rgb=_dense_cols(n_gl * 0.5 + 0.5, sp, npx, fill=bg).reshape(B, H, W, 3),
        normals=_dense_cols(n_gl, sp, npx).reshape(B, H, W, 3),
        depth=_dense1(depth, sp, npx).reshape(B, H, W),
        mask=(ids >= 0).to(dtype),
        face_id=ids,
    )


def _camera_vertex_normals(vertex_normals: Tensor, verts_world: Tensor, camera: Camera) -> Tensor:
    """User-given world-space normals ``[B, V, 3]`` or ``[V, 3]`` -> camera frame ``[3, B*V]``."""
    B, V, _ = verts_world.shape
    dtype, device = verts_world.dtype, verts_world.device
    vnt = vertex_normals.to(device=device, dtype=dtype)
    if vnt.dim() == 2:
        vnt = vnt.unsqueeze(0).expand(B, -1, -1)
    if vnt.shape != verts_world.shape:
        raise ExpPortraitError(f"render_normals: vertex_normals must be [B, V, 3] or [V, 3] matching verts "
                               f"{tuple(verts_world.shape)}, got {tuple(vertex_normals.shape)}.")
    _, _, _, _, R, _ = camera.params(B, device, dtype)
    return (vnt @ R.transpose(1, 2)).reshape(B * V, 3).t().contiguous()


def _render_normals_numba(nk, verts_cam: Tensor, xyz: Tensor, faces: Tensor, camera: Camera, background,
                          vn: Optional[Tensor], cull_backfaces: bool, near: float,
                          config: Optional[RasterConfig]) -> RenderOutput:
    """:func:`render_normals` with the numba kernels (CPU): span raster, then one fused pass that
    writes every dense output; hand-written fused backward passes (:class:`_NumbaShade`,
    :class:`_NumbaVertexNormals`). ``xyz: [3, B*V]`` camera-space vertices (differentiable),
    ``vn: [3, B*V]`` camera-frame vertex normals or None for area-weighted ones."""
    B, V, _ = verts_cam.shape
    H, W = camera.height, camera.width
    dtype, device = xyz.dtype, xyz.device
    ids, _ = _raster_ids(verts_cam, faces, camera, "torch", cull_backfaces, near, config, None, nk, xyz)
    if vn is None:
        vn = _NumbaVertexNormals.apply(xyz, faces, V)
    fx, fy, cx, cy, _, _ = camera.params(B, device, dtype)
    # pixel-centre rays (x + 0.5 - cx) / fx, (y + 0.5 - cy) / fy: [B, W], [B, H] (camera gradients
    # flow through these with plain autograd)
    r0 = ((torch.arange(W, dtype=torch.float64) + 0.5).to(dtype)[None] - cx[:, None]) / fx[:, None]
    r1 = ((torch.arange(H, dtype=torch.float64) + 0.5).to(dtype)[None] - cy[:, None]) / fy[:, None]
    bg = _background(background, dtype, device)
    rgb, n_gl, depth, mask = _NumbaShade.apply(xyz, vn, r0, r1, faces, ids, bg, V)
    return RenderOutput(normal_rgb=rgb, normals=n_gl, depth=depth, mask=mask, face_id=ids)


class _NumbaVertexNormals(torch.autograd.Function):
    """``xyz: [3, B*V]`` -> area-weighted unit vertex normals ``[3, B*V]`` (numba forward and
    backward; same values as :func:`_vertex_normals_geo`)."""

    @staticmethod
    def forward(ctx, xyz: Tensor, faces: Tensor, V: int) -> Tensor:
        nk = _numba_kernels()
        x = xyz.detach().contiguous()
        n = x.shape[1]
        npd = x.numpy().dtype
        nf = faces.shape[0] * (n // max(V, 1))
        fn = nk.scratch(f"fn_{npd}", nf * 4, npd).reshape(nf, 4)
        acc = np.zeros((3, n), npd)
        vn = torch.empty((3, n), dtype=x.dtype)
        nk.vertex_normals_fwd(x.numpy(), faces.numpy(), V, nk.dtype_constants(npd), fn, acc, vn.numpy())
        ctx.save_for_backward(x, vn)
        ctx.acc, ctx.faces, ctx.V = acc, faces, V
        return vn

    @staticmethod
    @once_differentiable
    def backward(ctx, g_vn: Tensor):
        nk = _numba_kernels()
        x, vn = ctx.saved_tensors
        g = np.zeros(tuple(x.shape))
        nk.vertex_normals_bwd(x.numpy(), ctx.faces.numpy(), ctx.V, nk.dtype_constants(ctx.acc.dtype), ctx.acc,
                              vn.numpy(), g_vn.detach().to(x.dtype).contiguous().numpy(), g)
        return torch.from_numpy(g).to(x.dtype), None, None


class _NumbaShade(torch.autograd.Function):
    """Fused per-pixel shading of the numba path.

    Inputs: ``xyz, vn: [3, B*V]`` camera-space vertices and unit vertex normals, ``r0: [B, W]``,
    ``r1: [B, H]`` pixel-centre ray components, ``faces: [F, 3]`` int64, ``ids: [B, H, W]``
    visible face (-1 background), ``bg: [3]`` background colour, V.
    Outputs: normal_rgb, normals ``[B, H, W, 3]`` (GL axes), depth ``[B, H, W]`` (differentiable
    w.r.t. xyz, vn, r0, r1) and mask ``[B, H, W]`` (0/1, not differentiable).
    """

    @staticmethod
    def forward(ctx, xyz, vn, r0, r1, faces, ids, bg, V):
        nk = _numba_kernels()
        B, H, W = ids.shape
        dtype = xyz.dtype
        x, n, a, b = (t.detach().to(dtype).contiguous() for t in (xyz, vn, r0, r1))
        npd = x.numpy().dtype
        rgb = torch.empty((B, H, W, 3), dtype=dtype)
        nrm = torch.empty((B, H, W, 3), dtype=dtype)
        depth = torch.empty((B, H, W), dtype=dtype)
        mask = torch.empty((B, H, W), dtype=dtype)
        nmax = min(B * faces.shape[0], B * H * W)        # visible faces, at most
        Q = np.empty((nmax, 13), npd)
        vis = np.empty(nmax, np.int64)
        n_vis = nk.shade_fwd(x.numpy(), n.numpy(), faces.numpy(), V, ids.numpy(), a.numpy(), b.numpy(),
                             bg.detach().to(dtype).numpy(), nk.dtype_constants(npd), rgb.numpy(), nrm.numpy(),
                             depth.numpy(), mask.numpy(), Q, vis, nk.scratch("slot", B * faces.shape[0], np.int32, -1))
        ctx.mark_non_differentiable(mask)
        ctx.set_materialize_grads(False)                 # unused outputs: no zero images
        # ids via save_for_backward: an in-place edit of the face_id output before backward
        # raises instead of silently changing the gradients
        ctx.save_for_backward(x, n, a, b, ids)
        ctx.faces, ctx.Q, ctx.vis, ctx.V = faces, Q[:n_vis], vis[:n_vis], V
        return rgb, nrm, depth, mask

    @staticmethod
    @once_differentiable
    def backward(ctx, g_rgb, g_nrm, g_depth, _g_mask):
        nk = _numba_kernels()
        x, n, a, b, ids = ctx.saved_tensors
        dtype = x.dtype

        def arr(g, shape):
            if g is None:
                return np.zeros(shape, x.numpy().dtype)   # not read (has[k] = 0)
            return g.detach().to(dtype).contiguous().numpy()

        has = np.array([g_rgb is not None, g_nrm is not None, g_depth is not None])
        need_ray = bool(ctx.needs_input_grad[2] or ctx.needs_input_grad[3])
        g_x, g_n = np.zeros(tuple(x.shape)), np.zeros(tuple(n.shape))
        g_a, g_b = np.zeros(tuple(a.shape)), np.zeros(tuple(b.shape))
        if has.any():
            B = ids.shape[0]
            nk.shade_bwd(x.numpy(), n.numpy(), ctx.faces.numpy(), ctx.V, ids.numpy(), a.numpy(), b.numpy(),
                         ctx.Q, ctx.vis, ctx.vis.shape[0], nk.scratch("slot", B * ctx.faces.shape[0], np.int32, -1),
                         arr(g_rgb, (1, 1, 1, 3)), arr(g_nrm, (1, 1, 1, 3)), arr(g_depth, (1, 1, 1)),
                         has, need_ray, g_x, g_n, g_a, g_b)
        out = [torch.from_numpy(g).to(dtype) if ctx.needs_input_grad[i] else None
               for i, g in enumerate((g_x, g_n, g_a, g_b))]
        return (*out, None, None, None, None)


def _render_supersampled(verts_world, faces, camera, background, backend, vertex_normals_, s,
                         cull_backfaces, near, config) -> RenderOutput:
    hi_cam = camera.scaled(s)
    if hi_cam.width != camera.width * s or hi_cam.height != camera.height * s:
        raise ExpPortraitError("render_normals: supersampling needs integer scaling of the image size.")
    hi = render_normals(verts_world, faces, hi_cam, background, backend, vertex_normals_,
                        cull_backfaces=cull_backfaces, near=near, config=config)
    B, H, W = verts_world.shape[0], camera.height, camera.width

    def pool(x: Tensor) -> Tensor:   # [B, sH, sW, C] -> [B, H, W, C] mean over s x s blocks
        return x.reshape(B, H, s, W, s, -1).mean(dim=(2, 4))

    cov = pool(hi.mask[..., None])
    n = pool(hi.normals)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    depth = pool(hi.depth[..., None]) / cov.clamp_min(1e-12)
    return RenderOutput(
        normal_rgb=pool(hi.normal_rgb),
        normals=n,
        depth=depth[..., 0],
        mask=cov[..., 0],
        face_id=hi.face_id[:, s // 2::s, s // 2::s].contiguous(),
    )
