"""Vectorized pure-PyTorch raster pass: which triangle is visible at each pixel centre.

This is the non-differentiable half of the nvdiffrast-style split (visibility only); the
differentiable half (barycentrics, depth, attributes recomputed from the triangle id and the pixel
centre) lives in :mod:`expportrait_core.render.api`.

Geometry (shared with the differentiable pass): for a camera-space triangle ``(v0, v1, v2)`` let
``c_i = v_{i+1} x v_{i+2}`` and ``det = v0 . (v1 x v2)``. For the pixel-centre ray
``d(x, y) = ((x - cx) / fx, (y - cy) / fy, 1)`` the perspective-correct barycentrics are
``b_i = (c_i . d) / sum_j (c_j . d)`` and the inverse depth is ``1 / z = (N . d) / det`` with
``N = (v1 - v0) x (v2 - v0) = sum_j c_j``. Each ``c_i . d`` is affine in the pixel coordinates, so
every triangle has three edge functions ``e_i(x, y) = a_i x + b_i y + k_i`` (oriented so that
inside means all ``e_i >= 0``) and one inverse-depth plane. ``c_i`` is evaluated over the edge's
endpoints in ascending vertex order (see :meth:`FaceGeometry.edge_planes`) for float32 accuracy
and so that the two triangles sharing an edge get bit-identical (negated) coefficients.

Pipeline, batched over frames with no Python loop over triangles:

1. Cull triangles that are back-facing (``det >= 0`` for counter-clockwise outward winding), touch
   ``z <= near``, or whose pixel bounding box is empty after clamping to the image.
2. Enumerate candidate pixels, by one of two methods (``RasterConfig.method``):

   * ``"spans"`` (default): one item per (triangle, pixel row) of its bounding box; on each row the
     three edge inequalities are solved for the exact interval of covered pixel centres, so the
     candidates are exactly the covered pixels. Triangles sharing an edge evaluate the same edge
     with exactly negated coefficients, so the intervals meet without cracks.
   * ``"buckets"``: triangles binned by bounding-box size (``max(w, h) <= s``); each bucket
     evaluates its edge functions on ``s x s`` candidate squares with one matrix product and keeps
     the pixels inside all edges; boxes larger than the last size are tiled. Slower (it evaluates
     ~6x more candidates than there are covered pixels on a head at 512^2) and, as the edge
     functions are evaluated relative to each box's corner, not bit-exactly watertight (a pixel
     centre within float rounding of a shared edge could in principle be missed).

3. Depth test: pack ``(float64 bits of z) | (face id + 1)`` into int64 keys (non-negative IEEE floats
   order like their bit patterns; a float32 depth widened to float64 leaves 29 free low bits) and
   z-buffer them with one ``scatter_reduce(amin)`` per chunk: the smallest key per pixel is the
   nearest surface, ties going to the lower face id.

Candidates are processed in chunks of at most ``RasterConfig.max_candidates`` to bound memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ExpPortraitError

# float64 bits of +inf: every real depth key is smaller, so it doubles as "background".
_INF_KEY = 0x7FF0000000000000
_FACE_BITS = 29
_FACE_MASK = (1 << _FACE_BITS) - 1


@dataclass(frozen=True)
class RasterConfig:
    """Tuning knobs of the CPU raster pass (defaults measured on a 2-core CPU).

    Attributes:
        method: ``"spans"`` (exact per-row coverage intervals; default) or ``"buckets"``
            (bounding-box-size buckets with edge tests on candidate squares).
        bucket_sizes: candidate-square sizes in pixels for ``"buckets"``; bigger boxes are tiled
            with the last size. Default (1, 2, 3, 4, 6, 8, 12, 16, 32).
        max_candidates: candidate pixels z-buffered per chunk (memory is about 40 bytes each).
            Default 2**21.
        kernel: ``"auto"`` (default: the numba kernels of :mod:`.numba_kernels` for CPU
            float32/float64 tensors when numba is installed, else pure PyTorch; the environment
            variable ``EXPP_RENDER_KERNEL=torch|numba`` overrides "auto"), ``"numba"`` (error
            if numba is missing) or ``"torch"``. Both give the same face ids; the numba raster
            is a span rasterizer (used with ``method="spans"``).
    """

    method: str = "spans"
    bucket_sizes: Tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 32)
    max_candidates: int = 1 << 21
    kernel: str = "auto"


_DEFAULT = RasterConfig()


# ---------------------------------------------------------------------------------------------
# per-face geometry, stacked as [axis, corner, face] (also used, with autograd, by the api module)
@dataclass
class FaceGeometry:
    """Per-face camera-space quantities of all ``B * F`` faces (batch-major), and what is needed
    to build the edge planes ``C`` of any subset of them.

    Attributes:
        T: ``[3, 3, B*F]`` corner coordinates ``T[axis, corner, face]`` (axis 0..2 = x, y, z).
        N: ``[3, B*F]`` face normal ``(v1 - v0) x (v2 - v0)`` (twice the area).
        det: ``[B*F]`` ``N . v0 = v0 . (v1 x v2)`` (negative for faces turned towards the camera).
        xyz: ``[3, B*V]`` vertex coordinates; corner_idx: ``[3, B*F]`` vertex of each corner;
        edge_idx: ``[6, B*F]`` endpoints (rows 0-2 start, 3-5 end; ascending vertex index) of the
        edge opposite each corner; edge_sign: ``[3, B*F]`` +-1 orientation of that edge.
    """

    T: Tensor
    N: Tensor
    det: Tensor
    xyz: Tensor
    corner_idx: Tensor
    edge_idx: Tensor
    edge_sign: Tensor

    def take_idx(self, table: Tensor, sel: Tensor) -> Tensor:
        """``table[:, sel]`` for an int64 index table ``[r, B*F]`` (``corner_idx``/``edge_idx``),
        flattened. Gathered through an exact float32 copy when indices < 2**24: 2-D
        ``index_select`` is several times faster for float32 than for integers on CPU."""
        if self.xyz.shape[1] < (1 << 24):
            return table_f32(table).index_select(1, sel).reshape(-1).long()
        return torch.stack([row.index_select(0, sel) for row in table]).reshape(-1)

    def edge_planes(self, sel: Optional[Tensor] = None) -> Tensor:
        """``C: [3, 3, K]`` with ``C[axis, i, face] = (v_{i+1} x v_{i+2})[axis]`` for the faces
        ``sel: [K]`` (all when None), evaluated as ``+-(v_s x (v_e - v_s))`` over the edge's
        endpoints in ascending vertex-index order: ~100x less float32 cancellation than the
        direct product (|v| >> edge length), and bit-identical up to sign for the two triangles
        sharing an edge (so the raster is watertight)."""
        ei, sg = self.edge_idx.reshape(-1), self.edge_sign
        if sel is not None:
            ei, sg = self.take_idx(self.edge_idx, sel), sg.index_select(1, sel)
        K = sg.shape[1]
        SE = self.xyz.index_select(1, ei).view(3, 2, 3, K)
        S, E = SE.unbind(1)
        return _cross(S, E - S) * sg

    def subset(self, sel: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``T: [3, 3, K]``, ``N: [3, K]``, ``det: [K]`` of the faces ``sel``."""
        K = sel.shape[0]
        return (self.T.view(9, -1).index_select(1, sel).view(3, 3, K), self.N.index_select(1, sel),
                self.det.index_select(0, sel))

    def detach_float(self) -> "FaceGeometry":
        f = lambda t: t.detach().float()                            # noqa: E731
        return FaceGeometry(f(self.T), f(self.N), f(self.det), f(self.xyz), self.corner_idx,
                            self.edge_idx, f(self.edge_sign))


_f32_tables: list = []   # [(int64 table, float32 copy)] for the cached topology tables


def table_f32(table: Tensor) -> Tensor:
    """Exact float32 copy of a cached int64 index table (values < 2**24), made once."""
    for t, f in _f32_tables:
        if t is table:
            return f
    f = table.float()
    _f32_tables.append((table, f))
    del _f32_tables[:-8]
    return f


def _batched(idx: Tensor, B: int, V: int) -> Tensor:
    """``[3, F]`` vertex indices -> ``[3, B * F]`` indices into ``B*V`` (batch-major)."""
    if B > 1:
        idx = (idx[:, None, :] + (torch.arange(B, device=idx.device) * V)[None, :, None]).reshape(3, -1)
    return idx.contiguous()


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """Cross product over dim 0 (``[3, ...]``), componentwise (``linalg.cross`` is slow on CPU;
    ``unbind`` rather than indexing keeps the backward to one ``stack`` instead of a full-size
    zero tensor per ``select``)."""
    a0, a1, a2 = a.unbind(0)
    b0, b1, b2 = b.unbind(0)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


_topology_cache: list = []   # [(faces tensor, version, B, V, dtype, device, value)], most recent last


def _topology(faces: Tensor, B: int, V: int, dtype: torch.dtype):
    """Index tensors that depend only on ``faces`` (cached for the last few face tensors: the
    same topology is rendered every frame). Returns (corner idx ``[3, B*F]``, edge endpoints
    ``[6, B*F]``, edge sign ``[3, B*F]``)."""
    for entry in _topology_cache:
        if entry[0] is faces and entry[1:6] == (faces._version, B, V, dtype, faces.device):
            return entry[6]
    ft = faces.t()                                                    # [corner, F]
    fa, fb = ft.roll(-1, 0), ft.roll(-2, 0)                           # endpoints of the edge opposite corner i
    sign = 1.0 - 2.0 * (fa > fb).to(dtype)
    if B > 1:
        sign = sign.repeat(1, B)                                       # batch-major, like the indices
    edges = torch.cat([_batched(torch.minimum(fa, fb), B, V), _batched(torch.maximum(fa, fb), B, V)])
    value = (_batched(ft, B, V), edges.contiguous(), sign.contiguous())
    _topology_cache.append((faces, faces._version, B, V, dtype, faces.device, value))
    del _topology_cache[:-4]
    return value


def face_geometry(verts_cam: Tensor, faces: Tensor, xyz: Optional[Tensor] = None) -> FaceGeometry:
    """:class:`FaceGeometry` of ``verts_cam: [B, V, 3]`` and ``faces: [F, 3]`` int64
    (differentiable; few large stacked ops, which is what is fast on CPU). ``xyz: [3, B*V]``
    may pass the same vertices already transposed."""
    B, V, _ = verts_cam.shape
    F = faces.shape[0]
    cidx, eidx, sign = _topology(faces, B, V, verts_cam.dtype)
    if xyz is None:
        xyz = verts_cam.reshape(B * V, 3).t().contiguous()           # index_select is slow on strided input
    T = xyz.index_select(1, cidx.reshape(-1)).view(3, 3, B * F)
    T0, T1, T2 = T.unbind(1)
    N = _cross(T1 - T0, T2 - T0)
    det = (N * T0).sum(0)
    return FaceGeometry(T, N, det, xyz, cidx, eidx, sign)


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def rasterize_face_ids(verts_cam: Tensor, faces: Tensor, fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor,
                       width: int, height: int, cull_backfaces: bool = True, near: float = 1e-4,
                       config: RasterConfig = _DEFAULT, geometry: Optional[FaceGeometry] = None) -> Tensor:
    """Visible triangle per pixel centre (no gradients).

    Args:
        verts_cam: ``[B, V, 3]`` camera-space vertices (OpenCV axes: x right, y down, z forward).
        faces: ``[F, 3]`` int64 vertex indices, counter-clockwise seen from outside.
        fx, fy, cx, cy: ``[B]`` intrinsics in pixels (pixel centres at +0.5).
        width, height: image size in pixels.
        cull_backfaces: drop triangles facing away from the camera (closed meshes render the
            same either way, only faster; open meshes show their inside when False).
        near: triangles with any vertex at camera ``z <= near`` are dropped (no clipping).
        config: :class:`RasterConfig`.
        geometry: precomputed :func:`face_geometry` of the same mesh (reused, cast to float32).

    Returns:
        ``[B, H, W]`` int64 face index, ``-1`` where no triangle covers the pixel centre.
    """
    B, V, _ = verts_cam.shape
    F = faces.shape[0]
    W, H = int(width), int(height)
    device = verts_cam.device
    if F >= (1 << _FACE_BITS) - 1:
        raise ExpPortraitError(f"rasterize: at most {(1 << _FACE_BITS) - 2} faces are supported, got {F}.")
    if config.method not in ("spans", "buckets"):
        raise ExpPortraitError(f"RasterConfig.method must be 'spans' or 'buckets', got '{config.method}'.")
    empty = torch.full((B, H, W), -1, dtype=torch.int64, device=device)
    if F == 0 or B == 0:
        return empty
    geo = (geometry if geometry is not None else face_geometry(verts_cam.detach().float(), faces)).detach_float()
    setup = _setup_faces(geo, B, F, fx, fy, cx, cy, W, H, cull_backfaces, near)
    if setup is None:
        return empty
    if config.method == "spans":
        key_buf = torch.full((B * H * W,), _INF_KEY, dtype=torch.int64, device=device)
        _raster_spans(key_buf, setup, W, H, config)
        keys = key_buf.view(B, H, W)
    else:
        S = int(config.bucket_sizes[-1])
        key_buf = torch.full((B * (H + S) * (W + S),), _INF_KEY, dtype=torch.int64, device=device)
        _raster_buckets(key_buf, setup, W, H, config)
        keys = key_buf.view(B, H + S, W + S)[:, :H, :W]
    # low bits hold face + 1 (0 = background, as _INF_KEY's low bits are zero)
    return torch.bitwise_and(keys, _FACE_MASK).sub_(1)


def _setup_faces(geo: FaceGeometry, B: int, F: int, fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor,
                 W: int, H: int, cull_backfaces: bool, near: float):
    """Cull, then per kept face: edge functions ``a, b, k: [3, K]`` (inside <=> all >= 0), the 1/z
    plane ``za, zb, zk: [K]``, clamped pixel box ``x0, x1, y0, y1: [K]`` (float, integral values),
    ``batch`` and ``face: [K]``. None when nothing is visible."""
    # 1) facing and near-plane culling on all faces (cheap), 2) projection of the survivors only
    det = geo.det
    keep = geo.T[2].amin(0) > near
    keep &= (det < 0) if cull_backfaces else ((det != 0) & torch.isfinite(det))
    sel = keep.nonzero().squeeze(1)
    if sel.numel() == 0:
        return None
    T, Nk, dk = geo.subset(sel)
    dev = T.device
    if B > 1:
        bsel = torch.div(sel, F, rounding_mode="floor")
        f2 = torch.stack([fx.float().index_select(0, bsel), fy.float().index_select(0, bsel)])[:, None]  # [2, 1, K]
        c2 = torch.stack([cx.float().index_select(0, bsel), cy.float().index_select(0, bsel)])[:, None]
    else:
        f2 = torch.tensor([float(fx[0]), float(fy[0])], device=dev)[:, None, None]
        c2 = torch.tensor([float(cx[0]), float(cy[0])], device=dev)[:, None, None]
    uv = T[:2] / T[2] * f2 + c2                                        # [2, 3, K] projected corners
    # Pixel column i has centre i + 0.5: the box covers ceil(min - 0.5) .. floor(max - 0.5).
    pad = 1e-4   # pixels; exact coverage comes from the edge functions
    size = torch.tensor([[W], [H]], dtype=T.dtype, device=dev)
    lo = torch.ceil(uv.amin(1).clamp_min_(-2.0) - (0.5 + pad)).clamp_min_(0)                   # [2, K]
    hi = torch.minimum(torch.floor(torch.minimum(uv.amax(1), size + 2.0) - (0.5 - pad)), size - 1)
    on = (hi >= lo).all(0)
    if not bool(on.all()):                                             # drop faces off the image
        on = on.nonzero().squeeze(1)
        if on.numel() == 0:
            return None
        sel, Nk, dk = sel.index_select(0, on), Nk.index_select(1, on), dk.index_select(0, on)
        lo, hi = lo.index_select(1, on), hi.index_select(1, on)
        f2, c2 = (t.index_select(2, on) if t.shape[2] > 1 else t for t in (f2, c2))
    # Edge functions, oriented so that inside <=> all e_i >= 0: b_i >= 0 <=> c_i . d has the
    # sign of N . d, which is the sign of det (z > 0), and front faces have det < 0. Scaling by
    # -1/f is exact under negation, so two triangles sharing an edge get exactly opposite
    # coefficients for it (watertight spans).
    sgn = -1.0 if cull_backfaces else torch.sign(dk)
    Ck = geo.edge_planes(sel)                                          # [3, 3, K]
    ab = Ck[:2] * (sgn / f2)                                           # [2, 3, K] (a, b)
    k = Ck[2] * sgn - ab[0] * c2[0] - ab[1] * c2[1]
    nab = Nk[:2] / f2[:, 0]                                            # 1/z = (N . d) / det
    zp = torch.cat([nab, (Nk[2] - nab[0] * c2[0, 0] - nab[1] * c2[1, 0])[None]]) / dk
    bi = torch.div(sel, F, rounding_mode="floor") if B > 1 else torch.zeros_like(sel)
    return dict(a=ab[0], b=ab[1], k=k, za=zp[0], zb=zp[1], zk=zp[2], x0=lo[0], y0=lo[1], x1=hi[0], y1=hi[1],
                batch=bi, face=sel - bi * F)


def _ragged(counts: Tensor) -> Tuple[Tensor, Tensor, int]:
    """For ``counts: [n]`` items, return (owner ``[N]``, local index ``[N]``, N) enumerating
    ``counts[j]`` entries for item ``j``."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(counts, output_size=total)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=counts.device) - start.index_select(0, owner)
    return owner, local, total


def _raster_spans(key_buf: Tensor, s: dict, W: int, H: int, config: RasterConfig) -> None:
    dev = s["za"].device
    a, b, k = s["a"], s["b"], s["k"]                                    # [3, K]
    # Each non-horizontal edge is the line x = m * y + q. m and q are exact functions of the
    # edge's coefficients, so two triangles sharing an edge compute bit-identical lines and their
    # spans meet without cracks. Edges with a > 0 bound the span from the left, a < 0 from the
    # right; the other side gets a +-1e30 gate added to q (adding 0.0 keeps the bound exact). A
    # horizontal edge (a == 0) only limits rows, which the box already does.
    m = torch.nan_to_num(-b / a, nan=0.0, posinf=0.0, neginf=0.0)     # a == 0: horizontal edge
    q = torch.nan_to_num(-k / a, nan=0.0, posinf=0.0, neginf=0.0)
    ql = q + (a <= 0).float() * -1e30
    qr = q + (a >= 0).float() * 1e30
    face_f = torch.cat([m, ql, qr, torch.stack([s["za"], s["zb"], s["zk"], s["y0"]])])      # [13, K]
    # (integer tables are gathered 1-D: 2-D index_select is only fast for float32)
    base_f = s["batch"] * (H * W) + s["y0"].long() * W
    face1_f = s["face"] + 1

    # 1) one item per (face, pixel row)
    nrows = (s["y1"] - s["y0"] + 1).long()
    rf, rl, R = _ragged(nrows)
    rfl = face_f.index_select(1, rf)                                  # [13, R]
    yc = rfl[12] + (rl.float() + 0.5)                                 # row centre
    t = rfl[0:3] * yc                                                 # x where each edge crosses the row
    lo = (t + rfl[3:6]).amax(0)
    hi = (t + rfl[6:9]).amin(0)
    # 2) covered columns: centres x + 0.5 in [lo, hi], inside the image
    xs = torch.ceil(lo - 0.5).clamp_(0.0, float(W))
    xe = torch.floor(hi - 0.5).clamp_max_(float(W - 1))
    cnt = (xe - xs + 1).clamp_min_(0).long()
    za = rfl[9]
    z0 = za * (xs + 0.5) + rfl[10] * yc + rfl[11]                     # 1/z at the first covered pixel
    rowbase = base_f.index_select(0, rf) + rl * W + xs.long()
    face1 = face1_f.index_select(0, rf)
    # 3) candidates, in chunks of rows
    csum = torch.cumsum(cnt, 0)
    total = int(csum[-1]) if R else 0
    if total == 0:
        return
    n_chunks = (total + config.max_candidates - 1) // config.max_candidates
    bounds = [0]
    if n_chunks > 1:
        cuts = torch.arange(1, n_chunks, device=dev) * config.max_candidates
        bounds += torch.searchsorted(csum, cuts, right=True).tolist()
    bounds.append(R)
    row_f = torch.stack([z0, za])
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        if r1 <= r0:
            continue
        own, loc, n = _ragged(cnt[r0:r1])
        if n == 0:
            continue
        cf = row_f[:, r0:r1].index_select(1, own)
        invz = cf[0] + cf[1] * loc.float()
        keys = invz.reciprocal_().double().view(torch.int64) | face1[r0:r1].index_select(0, own)
        key_buf.scatter_reduce_(0, rowbase[r0:r1].index_select(0, own) + loc, keys, "amin")


_offset_cache: Dict[tuple, Tuple[Tensor, Tensor]] = {}


def _offsets(s: int, row_stride: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Candidate square ``s x s``: ``O: [3, s*s]`` rows (dx, dy, 1) float32 and flat framebuffer
    offsets ``[s*s]`` int64 for a row stride ``row_stride``."""
    key = (s, row_stride, str(device))
    hit = _offset_cache.get(key)
    if hit is None:
        dy, dx = torch.meshgrid(torch.arange(s, device=device), torch.arange(s, device=device), indexing="ij")
        dx, dy = dx.reshape(-1), dy.reshape(-1)
        O = torch.stack([dx.float(), dy.float(), torch.ones(s * s, device=device)])
        hit = (O, dy * row_stride + dx)
        if len(_offset_cache) > 64:
            _offset_cache.clear()
        _offset_cache[key] = hit
    return hit


def _raster_buckets(key_buf: Tensor, s: dict, W: int, H: int, config: RasterConfig) -> None:
    """Bounding-box-size buckets. ``key_buf`` is padded by S = last bucket size on the right and
    bottom, so candidates beyond the image land in the padding instead of needing a bounds test."""
    S = int(config.bucket_sizes[-1])
    Wp, Hp = W + S, H + S
    x0, y0 = s["x0"], s["y0"]
    # planes [K, 4, 3]: rows (1/z, e0, e1, e2), columns (a, b, value at the box's first pixel centre)
    rows = [(s["za"], s["zb"], s["zk"])] + [(s["a"][i], s["b"][i], s["k"][i]) for i in range(3)]  # [3, K] each
    P = torch.stack([torch.stack([a_, b_, a_ * (x0 + 0.5) + b_ * (y0 + 0.5) + k_], -1) for a_, b_, k_ in rows], 1)
    base = s["batch"] * (Hp * Wp) + y0.long() * Wp + x0.long()
    fi = s["face"]
    bw, bh = s["x1"] - x0 + 1, s["y1"] - y0 + 1
    side = torch.maximum(bw, bh)
    sizes = torch.tensor(config.bucket_sizes, dtype=side.dtype, device=side.device)
    bucket = torch.searchsorted(sizes, side.contiguous())
    groups = []
    big = bucket >= len(config.bucket_sizes)
    if bool(big.any()):
        bidx = big.nonzero().squeeze(1)
        ntx = torch.ceil(bw[bidx] / S).long()
        nty = torch.ceil(bh[bidx] / S).long()
        own, loc, _ = _ragged(ntx * nty)
        ty = torch.div(loc, ntx[own], rounding_mode="floor")
        tx = loc - ty * ntx[own]
        src = bidx[own]
        Pt = P[src].clone()
        Pt[:, :, 2] += Pt[:, :, 0] * (tx * S).float()[:, None] + Pt[:, :, 1] * (ty * S).float()[:, None]
        groups.append((S, Pt, base[src] + ty * S * Wp + tx * S, fi[src]))
        small = (~big).nonzero().squeeze(1)
        P, base, fi, bucket = P[small], base[small], fi[small], bucket[small]
    order = torch.argsort(bucket)
    counts = torch.bincount(bucket, minlength=len(config.bucket_sizes)).tolist()
    P, base, fi = P[order], base[order], fi[order]
    start = 0
    for sz, n in zip(config.bucket_sizes, counts):
        if n:
            groups.append((int(sz), P[start:start + n], base[start:start + n], fi[start:start + n]))
        start += n
    for sz, Pg, bg, fg in groups:
        O, offs = _offsets(sz, Wp, P.device)
        per = max(1, config.max_candidates // (sz * sz))
        for c0 in range(0, Pg.shape[0], per):
            R = Pg[c0:c0 + per] @ O                                   # [n, 4, s*s]
            inside = torch.minimum(torch.minimum(R[:, 1], R[:, 2]), R[:, 3]) >= 0
            zf = torch.where(inside, R[:, 0], 0.0).reciprocal_()     # outside: 1/0 = inf, never wins
            keys = zf.double().view(torch.int64) | (fg[c0:c0 + per, None] + 1)
            idx = bg[c0:c0 + per, None] + offs[None, :]
            key_buf.scatter_reduce_(0, idx.reshape(-1), keys.reshape(-1), "amin")
