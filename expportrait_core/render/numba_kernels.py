"""Numba kernels of the CPU renderer: z-buffered span rasterizer and fused shading (forward and
backward). Imported lazily by :mod:`expportrait_core.render.api` (``import numba`` costs ~0.5 s
and the pack must start without it); the pure-PyTorch path is the fallback.

Why numba: the PyTorch renderer spends its time on per-op overhead and ~50 memory passes over
pixel-sized tensors; here each stage is one loop (like llvmpipe's JIT-compiled rasterizer).

Exactness: :func:`raster_spans` repeats the float32 arithmetic of
:mod:`expportrait_core.render.raster_torch` (``_setup_faces`` and ``_raster_spans``) operation
for operation, so both give the same face ids bit for bit (shared edges stay watertight for the
same reason). The shading forward repeats the PyTorch path's formulas in the input dtype (float32
or float64; dtype-typed constants come in the ``cst`` array because numba promotes
``float32 * 0.5`` to float64). Backward passes accumulate in float64.

Layout: vertex data is axis-major ``[3, B*V]`` (batch-major vertices), faces ``[F, 3]`` int64
shared by the batch, images ``[B, H, W(, 3)]``. Compiled on first use per dtype (~10 s per dtype
for the forward kernels, as much again for the backward ones, on the 2-core dev machine); the
machine code is cached on disk (``cache=True``) where the package folder or the user cache folder
is writable, otherwise compiled once per process. A process loads the cache in about a second.

Single-threaded on purpose: ``prange`` over rows made a 512^2 frame several times slower on the
shared, oversubscribed 2-core machine (its OpenMP workers wait for a busy core), and one thread
already matches llvmpipe. The kernels release the GIL (``nogil``), so callers may run renders
in parallel threads; scratch buffers are per thread.
"""
from __future__ import annotations

import math
import threading

import numba
import numpy as np
import torch


def _jit(fn=None, **kw):
    """``numba.njit`` with an on-disk cache when some cache folder is writable. numba raises
    at decoration time when no cache location is usable (read-only install and home)."""
    if fn is None:
        return lambda f: _jit(f, **kw)
    # error_model="numpy": IEEE division (x / 0 -> inf, as in torch) instead of Python's
    # ZeroDivisionError check on every division
    kw = dict(nogil=True, error_model="numpy", **kw)
    try:
        return numba.njit(cache=True, **kw)(fn)
    except Exception:  # noqa: BLE001 - no usable cache folder: compile per process instead
        return numba.njit(cache=False, **kw)(fn)


# Helpers called per face or per pixel are inlined into their callers: a call between jitted
# functions updates the reference count of every array argument (~100 ns per call here).
_inline = _jit(inline="always")


# ---------------------------------------------------------------------------------------------
# raster: visible face per pixel centre (no gradients; float32 like the PyTorch raster pass)
@_jit
def raster_spans(xyz, faces, V, fx, fy, cx, cy, W, H, cull, near, out, zbuf, pu, pv):
    """Z-buffered visibility.

    xyz: float32 ``[3, B*V]`` camera-space vertices; faces: int64 ``[F, 3]``; fx, fy, cx, cy:
    float32 ``[B]``; W, H: image size; cull: drop back faces; near: float32, faces with a vertex
    at ``z <= near`` are dropped; out: int64 ``[B, H, W]`` face id or -1 (written); zbuf:
    float32 ``[H * W]``, pu, pv: float32 ``[V]`` scratch. Ties in depth go to the lower face id,
    like the PyTorch pass.
    """
    f32 = np.float32
    one, half, two = f32(1.0), f32(0.5), f32(2.0)
    lo_pad, hi_pad = f32(0.5001), f32(0.4999)          # 0.5 -+ 1e-4 as in raster_torch
    gate = f32(1e30)
    Wf, Hf = f32(W), f32(H)
    F = faces.shape[0]
    B = fx.shape[0]
    m = np.empty(3, np.float32)
    ql = np.empty(3, np.float32)
    qr = np.empty(3, np.float32)
    vid = np.empty(3, np.int64)
    for bi in range(B):
        ob = out[bi]
        for y in range(H):
            for x in range(W):
                ob[y, x] = -1
        zbuf[:] = np.inf
        fxb, fyb, cxb, cyb = fx[bi], fy[bi], cx[bi], cy[bi]
        off = bi * V
        for i in range(V):                             # projected vertices, once per vertex
            pu[i] = xyz[0, off + i] / xyz[2, off + i] * fxb + cxb
            pv[i] = xyz[1, off + i] / xyz[2, off + i] * fyb + cyb
        for f in range(F):
            i0, i1, i2 = faces[f, 0] + off, faces[f, 1] + off, faces[f, 2] + off
            X0, Y0, Z0 = xyz[0, i0], xyz[1, i0], xyz[2, i0]
            X1, Y1, Z1 = xyz[0, i1], xyz[1, i1], xyz[2, i1]
            X2, Y2, Z2 = xyz[0, i2], xyz[1, i2], xyz[2, i2]
            if not (Z0 > near and Z1 > near and Z2 > near):
                continue
            ax, ay, az = X1 - X0, Y1 - Y0, Z1 - Z0
            bx, by, bz = X2 - X0, Y2 - Y0, Z2 - Z0
            N0 = ay * bz - az * by
            N1 = az * bx - ax * bz
            N2 = ax * by - ay * bx
            det = N0 * X0 + N1 * Y0 + N2 * Z0
            if cull:
                if not det < 0:
                    continue
                sgn = -one
            else:
                if not (det != 0 and math.isfinite(det)):
                    continue
                sgn = one if det > 0 else -one
            # pixel box of the projected corners: rows ceil(min - 0.5) .. floor(max - 0.5)
            u0, u1, u2 = pu[i0 - off], pu[i1 - off], pu[i2 - off]
            v0, v1, v2 = pv[i0 - off], pv[i1 - off], pv[i2 - off]
            xlo = max(np.ceil(max(min(u0, min(u1, u2)), -two) - lo_pad), f32(0.0))
            ylo = max(np.ceil(max(min(v0, min(v1, v2)), -two) - lo_pad), f32(0.0))
            xhi = min(np.floor(min(max(u0, max(u1, u2)), Wf + two) - hi_pad), Wf - one)
            yhi = min(np.floor(min(max(v0, max(v1, v2)), Hf + two) - hi_pad), Hf - one)
            if not (xhi >= xlo and yhi >= ylo):
                continue
            # edge functions e_i (inside <=> all >= 0) from c_i, evaluated over the edge's
            # endpoints in ascending vertex order (see FaceGeometry.edge_planes)
            vid[0], vid[1], vid[2] = faces[f, 0], faces[f, 1], faces[f, 2]
            sfx, sfy = sgn / fxb, sgn / fyb
            for i in range(3):
                fa, fb = vid[(i + 1) % 3], vid[(i + 2) % 3]
                sg = -one if fa > fb else one
                s, e = min(fa, fb) + off, max(fa, fb) + off
                Sx, Sy, Sz = xyz[0, s], xyz[1, s], xyz[2, s]
                Dx, Dy, Dz = xyz[0, e] - Sx, xyz[1, e] - Sy, xyz[2, e] - Sz
                c0 = (Sy * Dz - Sz * Dy) * sg
                c1 = (Sz * Dx - Sx * Dz) * sg
                c2 = (Sx * Dy - Sy * Dx) * sg
                ea = c0 * sfx                                  # e_i = ea x + eb y + ek
                eb = c1 * sfy
                ek = c2 * sgn - ea * cxb - eb * cyb
                # the edge as x = m y + q; a > 0 bounds the span from the left, a < 0 from the
                # right; +-1e30 gates as in raster_torch (adding -0.0 keeps the bound exact);
                # non-finite m, q -> 0 like torch.nan_to_num there
                mi = -eb / ea
                qi = -ek / ea
                m[i] = mi if math.isfinite(mi) else f32(0.0)
                qi = qi if math.isfinite(qi) else f32(0.0)
                ql[i] = qi + ((one if ea <= 0 else f32(0.0)) * -gate)
                qr[i] = qi + ((one if ea >= 0 else f32(0.0)) * gate)
            nab0, nab1 = N0 / fxb, N1 / fyb                    # 1/z = (N . d) / det, affine in (x, y)
            za = nab0 / det
            zb = nab1 / det
            zk = (N2 - nab0 * cxb - nab1 * cyb) / det
            for y in range(int(ylo), int(yhi) + 1):
                yc = f32(y) + half
                t0, t1, t2 = m[0] * yc, m[1] * yc, m[2] * yc
                lo = max(t0 + ql[0], max(t1 + ql[1], t2 + ql[2]))
                hi = min(t0 + qr[0], min(t1 + qr[1], t2 + qr[2]))
                xs = min(max(np.ceil(lo - half), f32(0.0)), Wf)
                xe = min(np.floor(hi - half), Wf - one)
                cnt = xe - xs + one
                if not cnt >= one:
                    continue
                z0 = za * (xs + half) + zb * yc + zk
                row = y * W
                x0 = int(xs)
                for j in range(int(cnt)):
                    z = one / (z0 + za * f32(j))
                    p = row + x0 + j
                    if z < zbuf[p]:                        # faces come in ascending order: ties keep the lower id
                        zbuf[p] = z
                        ob[y, x0 + j] = f


# ---------------------------------------------------------------------------------------------
# differentiable part: vertex normals and shading. Forward passes compute in the input dtype
# (float32 or float64) in the PyTorch path's operation order; ``cst`` holds dtype-typed
# constants (0.5, 1, 1e-24, 0, 1e-40). Per-face helpers write into caller-provided scratch
# arrays: an allocation per face would cost more than the maths.
@_inline
def _face_normal(xyz, i0, i1, i2, out, row, col):
    """``out[row, col:col + 3] = N = (v1 - v0) x (v2 - v0)``, ``out[row, col + 3] = det = N . v0``
    (the operation order of raster_torch.face_geometry). Indexing ``out`` in place: a slice
    would cost a reference-count update per call."""
    X0, Y0, Z0 = xyz[0, i0], xyz[1, i0], xyz[2, i0]
    ax, ay, az = xyz[0, i1] - X0, xyz[1, i1] - Y0, xyz[2, i1] - Z0
    bx, by, bz = xyz[0, i2] - X0, xyz[1, i2] - Y0, xyz[2, i2] - Z0
    N0 = ay * bz - az * by
    N1 = az * bx - ax * bz
    N2 = ax * by - ay * bx
    out[row, col], out[row, col + 1], out[row, col + 2] = N0, N1, N2
    out[row, col + 3] = N0 * X0 + N1 * Y0 + N2 * Z0


@_jit
def vertex_normals_fwd(xyz, faces, V, cst, fn, acc, vn):
    """Area-weighted unit vertex normals.

    xyz: ``[3, B*V]``; faces: int64 ``[F, 3]``; outputs: fn ``[B*F, 4]`` (face normal, det),
    acc ``[3, B*V]`` zeroed (unnormalized sums), vn ``[3, B*V]`` unit normals. Sums corner by
    corner like the PyTorch ``index_add``, so both paths agree to the last bit.
    """
    F = faces.shape[0]
    B = xyz.shape[1] // V
    for bi in range(B):
        for f in range(F):
            _face_normal(xyz, faces[f, 0] + bi * V, faces[f, 1] + bi * V, faces[f, 2] + bi * V, fn, bi * F + f, 0)
    for c in range(3):
        for bi in range(B):
            for f in range(F):
                v = faces[f, c] + bi * V
                g = bi * F + f
                acc[0, v] += fn[g, 0]
                acc[1, v] += fn[g, 1]
                acc[2, v] += fn[g, 2]
    one, tiny = cst[1], cst[4]
    for v in range(xyz.shape[1]):
        s = acc[0, v] * acc[0, v] + acc[1, v] * acc[1, v] + acc[2, v] * acc[2, v]
        r = one / np.sqrt(max(s, tiny))
        vn[0, v], vn[1, v], vn[2, v] = acc[0, v] * r, acc[1, v] * r, acc[2, v] * r


@_inline
def _cross_bwd(g0, g1, g2, S, D, gS, gD):
    """Backward of ``c = S x D`` for ``g = dL/dc``: ``gS += D x g``, ``gD += g x S`` (float64
    3-vectors)."""
    gS[0] += D[1] * g2 - D[2] * g1
    gS[1] += D[2] * g0 - D[0] * g2
    gS[2] += D[0] * g1 - D[1] * g0
    gD[0] += g1 * S[2] - g2 * S[1]
    gD[1] += g2 * S[0] - g0 * S[2]
    gD[2] += g0 * S[1] - g1 * S[0]


@_inline
def _face_normal_bwd(xyz, idx, gN0, gN1, gN2, gdet, g_xyz, sc):
    """Backward of :func:`_face_normal` for corners ``idx: [3]``: adds to g_xyz (float64
    ``[3, B*V]``). sc: float64 ``[4, 3]`` scratch."""
    e1, e2, ge1, ge2 = sc[0], sc[1], sc[2], sc[3]
    i0 = idx[0]
    for ax in range(3):
        e1[ax] = float(xyz[ax, idx[1]]) - float(xyz[ax, i0])
        e2[ax] = float(xyz[ax, idx[2]]) - float(xyz[ax, i0])
        ge1[ax] = 0.0
        ge2[ax] = 0.0
    if gdet != 0.0:                                     # det = N . v0
        N0 = e1[1] * e2[2] - e1[2] * e2[1]
        N1 = e1[2] * e2[0] - e1[0] * e2[2]
        N2 = e1[0] * e2[1] - e1[1] * e2[0]
        g_xyz[0, i0] += gdet * N0
        g_xyz[1, i0] += gdet * N1
        g_xyz[2, i0] += gdet * N2
        gN0 += gdet * xyz[0, i0]
        gN1 += gdet * xyz[1, i0]
        gN2 += gdet * xyz[2, i0]
    _cross_bwd(gN0, gN1, gN2, e1, e2, ge1, ge2)         # N = e1 x e2, e_k = v_k - v0
    for ax in range(3):
        g_xyz[ax, idx[1]] += ge1[ax]
        g_xyz[ax, idx[2]] += ge2[ax]
        g_xyz[ax, i0] -= ge1[ax] + ge2[ax]


@_jit
def vertex_normals_bwd(xyz, faces, V, cst, acc, vn, g_vn, g_xyz):
    """Backward of :func:`vertex_normals_fwd`: ``g_vn: [3, B*V]`` -> adds to ``g_xyz`` (float64
    ``[3, B*V]``)."""
    F = faces.shape[0]
    nv = xyz.shape[1]
    B = nv // V
    tiny = float(cst[4])
    g_acc = np.empty((3, nv))
    for v in range(nv):
        s = float(acc[0, v]) ** 2 + float(acc[1, v]) ** 2 + float(acc[2, v]) ** 2
        r = 1.0 / math.sqrt(max(s, tiny))
        # through acc * rsqrt(clamp_min(|acc|^2, tiny)); the clamp passes no gradient below tiny
        dot = (float(vn[0, v]) * g_vn[0, v] + float(vn[1, v]) * g_vn[1, v] + float(vn[2, v]) * g_vn[2, v]
               if s > tiny else 0.0)
        for ax in range(3):
            g_acc[ax, v] = r * (g_vn[ax, v] - vn[ax, v] * dot)
    idx = np.empty(3, np.int64)
    sc = np.empty((4, 3))
    for bi in range(B):
        for f in range(F):
            for c in range(3):
                idx[c] = faces[f, c] + bi * V
            gN0 = g_acc[0, idx[0]] + g_acc[0, idx[1]] + g_acc[0, idx[2]]
            gN1 = g_acc[1, idx[0]] + g_acc[1, idx[1]] + g_acc[1, idx[2]]
            gN2 = g_acc[2, idx[0]] + g_acc[2, idx[1]] + g_acc[2, idx[2]]
            _face_normal_bwd(xyz, idx, gN0, gN1, gN2, 0.0, g_xyz, sc)


@_inline
def _edge_ends(faces, f, off, i):
    """Endpoints ``(s, e)`` (ascending vertex index) of the edge opposite corner ``i`` of face
    ``f``, and whether that order is reversed: ``c_i = +-(S x (E - S))``, minus when reversed."""
    fa, fb = faces[f, (i + 1) % 3], faces[f, (i + 2) % 3]
    return min(fa, fb) + off, max(fa, fb) + off, fa > fb


@_inline
def _face_q(xyz, vn, faces, f, off, cst, Q, g, C, nc):
    """Per-face shading row ``Q[g]: [13]`` = (M: 9 row-major entries of ``M = sum_i n_i c_i^T`` with
    the vertex normals n_i in GL axes, N: 3, det: 1), as the PyTorch path builds it. C, nc:
    ``[3, 3]`` dtype scratch (``[axis, corner]``)."""
    one = cst[1]
    for i in range(3):
        s, e, rev = _edge_ends(faces, f, off, i)
        sg = -one if rev else one
        Sx, Sy, Sz = xyz[0, s], xyz[1, s], xyz[2, s]
        Dx, Dy, Dz = xyz[0, e] - Sx, xyz[1, e] - Sy, xyz[2, e] - Sz
        C[0, i] = (Sy * Dz - Sz * Dy) * sg
        C[1, i] = (Sz * Dx - Sx * Dz) * sg
        C[2, i] = (Sx * Dy - Sy * Dx) * sg
        v = faces[f, i] + off
        nc[0, i], nc[1, i], nc[2, i] = vn[0, v], -vn[1, v], -vn[2, v]      # OpenCV -> GL axes
    for a in range(3):
        for j in range(3):
            Q[g, 3 * a + j] = nc[a, 0] * C[j, 0] + nc[a, 1] * C[j, 1] + nc[a, 2] * C[j, 2]
    _face_normal(xyz, faces[f, 0] + off, faces[f, 1] + off, faces[f, 2] + off, Q, g, 9)


@_jit
def shade_fwd(xyz, vn, faces, V, ids, r0, r1, bg, cst, rgb, nrm, depth, mask, Q, vis, slot):
    """Dense outputs of every pixel: ``n = normalize(M d / (N . d))``, ``depth = det / (N . d)``
    for the pixel ray ``d = (r0[x], r1[y], 1)`` on its visible face. Returns the number of
    visible faces ``n_vis``.

    xyz, vn: ``[3, B*V]``; faces: int64 ``[F, 3]``; ids: int64 ``[B, H, W]`` (-1 background);
    r0: ``[B, W]``, r1: ``[B, H]`` ray components; bg: ``[3]`` background colour; cst: see above.
    Outputs (all written): rgb ``[B, H, W, 3]`` = 0.5 n + 0.5 or bg, nrm ``[B, H, W, 3]`` (GL
    axes), depth, mask ``[B, H, W]``; Q ``[>= n_vis, 13]`` per-face rows and vis ``[>= n_vis]``
    their face ``b * F + f``, in order of first appearance in the image (compact: a row per face
    of the mesh would touch memory all over a big mesh). slot: int32 ``[B*F]`` face -> row map,
    all -1 on entry and on return (a reused scratch buffer, see :func:`scratch`).
    """
    B, H, W = ids.shape
    F = faces.shape[0]
    half, one, eps, zero = cst[0], cst[1], cst[2], cst[3]
    C = np.empty((3, 3), xyz.dtype)
    nc = np.empty((3, 3), xyz.dtype)
    n_vis = 0
    for bi in range(B):
        off = bi * V
        for y in range(H):
            ry = r1[bi, y]
            for x in range(W):
                f = ids[bi, y, x]
                if f < 0:
                    rgb[bi, y, x, 0], rgb[bi, y, x, 1], rgb[bi, y, x, 2] = bg[0], bg[1], bg[2]
                    nrm[bi, y, x, 0], nrm[bi, y, x, 1], nrm[bi, y, x, 2] = zero, zero, zero
                    depth[bi, y, x] = zero
                    mask[bi, y, x] = zero
                    continue
                g = slot[bi * F + f]
                if g < 0:                                # first pixel of this face
                    g = n_vis
                    slot[bi * F + f] = g
                    vis[g] = bi * F + f
                    _face_q(xyz, vn, faces, f, off, cst, Q, g, C, nc)
                    n_vis += 1
                rx = r0[bi, x]
                u0 = Q[g, 0] * rx + Q[g, 1] * ry + Q[g, 2]
                u1 = Q[g, 3] * rx + Q[g, 4] * ry + Q[g, 5]
                u2 = Q[g, 6] * rx + Q[g, 7] * ry + Q[g, 8]
                inv = one / (Q[g, 9] * rx + Q[g, 10] * ry + Q[g, 11])
                v0, v1, v2 = u0 * inv, u1 * inv, u2 * inv
                rinv = one / np.sqrt(max(v0 * v0 + v1 * v1 + v2 * v2, eps))
                n0, n1, n2 = v0 * rinv, v1 * rinv, v2 * rinv
                nrm[bi, y, x, 0], nrm[bi, y, x, 1], nrm[bi, y, x, 2] = n0, n1, n2
                rgb[bi, y, x, 0] = n0 * half + half
                rgb[bi, y, x, 1] = n1 * half + half
                rgb[bi, y, x, 2] = n2 * half + half
                depth[bi, y, x] = Q[g, 12] * inv
                mask[bi, y, x] = one
    for k in range(n_vis):                               # leave the scratch map all -1
        slot[vis[k]] = -1
    return n_vis


@_jit
def shade_bwd(xyz, vn, faces, V, ids, r0, r1, Q, vis, n_vis, slot, g_rgb, g_nrm, g_depth, has, need_ray,
              g_xyz, g_vn, g_r0, g_r1):
    """Backward of :func:`shade_fwd` (float64 accumulation). Q, vis, n_vis: as the forward left
    them; slot: the all -1 scratch map (rebuilt from vis here, and reset).

    g_rgb, g_nrm: ``[B, H, W, 3]``, g_depth: ``[B, H, W]`` output gradients (only those with
    ``has[k]`` set are read: rgb, normals, depth). Adds to g_xyz, g_vn (float64 ``[3, B*V]``)
    and, when need_ray, g_r0 ``[B, W]``, g_r1 ``[B, H]`` (float64).
    """
    B, H, W = ids.shape
    F = faces.shape[0]
    gQ = np.zeros((n_vis, 13))
    for k in range(n_vis):
        slot[vis[k]] = k
    for bi in range(B):
        for y in range(H):
            ry = float(r1[bi, y])
            for x in range(W):
                f = ids[bi, y, x]
                if f < 0:
                    continue
                g = slot[bi * F + f]
                rx = float(r0[bi, x])
                gn0 = gn1 = gn2 = gd = 0.0
                if has[0]:                               # rgb = 0.5 n + 0.5
                    gn0, gn1, gn2 = 0.5 * g_rgb[bi, y, x, 0], 0.5 * g_rgb[bi, y, x, 1], 0.5 * g_rgb[bi, y, x, 2]
                if has[1]:
                    gn0 += g_nrm[bi, y, x, 0]
                    gn1 += g_nrm[bi, y, x, 1]
                    gn2 += g_nrm[bi, y, x, 2]
                if has[2]:
                    gd = float(g_depth[bi, y, x])
                if gn0 == 0.0 and gn1 == 0.0 and gn2 == 0.0 and gd == 0.0:
                    continue                             # e.g. outside a loss mask
                M0, M1, M2 = float(Q[g, 0]), float(Q[g, 1]), float(Q[g, 2])
                M3, M4, M5 = float(Q[g, 3]), float(Q[g, 4]), float(Q[g, 5])
                M6, M7, M8 = float(Q[g, 6]), float(Q[g, 7]), float(Q[g, 8])
                N0, N1 = float(Q[g, 9]), float(Q[g, 10])
                u0 = M0 * rx + M1 * ry + M2
                u1 = M3 * rx + M4 * ry + M5
                u2 = M6 * rx + M7 * ry + M8
                inv = 1.0 / (N0 * rx + N1 * ry + Q[g, 11])
                v0, v1, v2 = u0 * inv, u1 * inv, u2 * inv
                rinv = 1.0 / math.sqrt(max(v0 * v0 + v1 * v1 + v2 * v2, 1e-24))
                n0, n1, n2 = v0 * rinv, v1 * rinv, v2 * rinv
                dot = n0 * gn0 + n1 * gn1 + n2 * gn2      # through the normalization
                gv0, gv1, gv2 = (gn0 - n0 * dot) * rinv, (gn1 - n1 * dot) * rinv, (gn2 - n2 * dot) * rinv
                gu0, gu1, gu2 = gv0 * inv, gv1 * inv, gv2 * inv
                ginv = gv0 * u0 + gv1 * u1 + gv2 * u2 + gd * Q[g, 12]
                gs = -ginv * inv * inv                     # d(1/s)/ds
                # d/dq of u = M d, s = N . d, depth = det / s
                gQ[g, 0] += gu0 * rx
                gQ[g, 1] += gu0 * ry
                gQ[g, 2] += gu0
                gQ[g, 3] += gu1 * rx
                gQ[g, 4] += gu1 * ry
                gQ[g, 5] += gu1
                gQ[g, 6] += gu2 * rx
                gQ[g, 7] += gu2 * ry
                gQ[g, 8] += gu2
                gQ[g, 9] += gs * rx
                gQ[g, 10] += gs * ry
                gQ[g, 11] += gs
                gQ[g, 12] += gd * inv
                if need_ray:                             # camera intrinsics
                    g_r0[bi, x] += gs * N0 + gu0 * M0 + gu1 * M3 + gu2 * M6
                    g_r1[bi, y] += gs * N1 + gu0 * M1 + gu1 * M4 + gu2 * M7
    # per visible face: q -> vertex positions (edge planes, N, det) and vertex normals
    C = np.empty((3, 3))
    nc = np.empty((3, 3))
    S = np.empty(3)
    D = np.empty(3)
    gS = np.empty(3)
    gD = np.empty(3)
    idx = np.empty(3, np.int64)
    sc = np.empty((4, 3))
    flip = (1.0, -1.0, -1.0)                             # OpenCV -> GL axes
    for g in range(n_vis):
        slot[vis[g]] = -1
        bi, f = vis[g] // F, vis[g] % F
        off = bi * V
        gq = gQ[g]                                       # (one view per face, not per pixel)
        for i in range(3):
            idx[i] = faces[f, i] + off
            s, e, rev = _edge_ends(faces, f, off, i)
            sg = -1.0 if rev else 1.0
            for ax in range(3):
                S[ax] = xyz[ax, s]
                D[ax] = float(xyz[ax, e]) - float(xyz[ax, s])
                nc[ax, i] = flip[ax] * vn[ax, idx[i]]
            C[0, i] = (S[1] * D[2] - S[2] * D[1]) * sg
            C[1, i] = (S[2] * D[0] - S[0] * D[2]) * sg
            C[2, i] = (S[0] * D[1] - S[1] * D[0]) * sg
            # M = sum_i nc_i C_i^T: dM/dnc_i = gM C_i, dM/dC_i = gM^T nc_i
            for a in range(3):
                g_vn[a, idx[i]] += flip[a] * (gq[3 * a] * C[0, i] + gq[3 * a + 1] * C[1, i] + gq[3 * a + 2] * C[2, i])
            gc0 = sg * (gq[0] * nc[0, i] + gq[3] * nc[1, i] + gq[6] * nc[2, i])
            gc1 = sg * (gq[1] * nc[0, i] + gq[4] * nc[1, i] + gq[7] * nc[2, i])
            gc2 = sg * (gq[2] * nc[0, i] + gq[5] * nc[1, i] + gq[8] * nc[2, i])
            for ax in range(3):
                gS[ax] = 0.0
                gD[ax] = 0.0
            _cross_bwd(gc0, gc1, gc2, S, D, gS, gD)       # c = sg S x D, D = E - S
            for ax in range(3):
                g_xyz[ax, s] += gS[ax] - gD[ax]
                g_xyz[ax, e] += gD[ax]
        _face_normal_bwd(xyz, idx, gq[9], gq[10], gq[11], gq[12], g_xyz, sc)


# ---------------------------------------------------------------------------------------------
# thin wrappers
_tls = threading.local()


def scratch(name: str, n: int, dtype, fill=None) -> np.ndarray:
    """A per-thread buffer of ``n`` elements reused across calls (a fresh large allocation
    costs a page fault per 4 KiB on first touch, comparable to the kernels themselves on big
    meshes). ``fill`` initializes new memory only: users of a filled buffer (the -1 face -> row
    map) restore it before returning."""
    buf = getattr(_tls, name, None)
    if buf is None or buf.shape[0] < n or buf.dtype != dtype:
        buf = np.empty(max(n, 1024), dtype) if fill is None else np.full(max(n, 1024), fill, dtype)
        setattr(_tls, name, buf)
    return buf[:n]


def dtype_constants(dtype) -> np.ndarray:
    """The ``cst`` array of the shading kernels: (0.5, 1, 1e-24, 0, 1e-40) in ``dtype``."""
    return np.array([0.5, 1.0, 1e-24, 0.0, 1e-40], dtype=dtype)


def rasterize_ids(xyz, faces, V: int, fx, fy, cx, cy, width: int, height: int, cull_backfaces: bool,
                  near: float):
    """Visible face per pixel centre with :func:`raster_spans`.

    xyz: float32 ``[3, B*V]`` tensor (camera space); faces: int64 ``[F, 3]``; fx, fy, cx, cy:
    float32 ``[B]``. Returns an int64 ``[B, H, W]`` tensor (-1 on background).
    """
    B = fx.shape[0]
    out = torch.empty((B, height, width), dtype=torch.int64)
    raster_spans(xyz.detach().numpy(), faces.numpy(), V, fx.detach().numpy(), fy.detach().numpy(),
                 cx.detach().numpy(), cy.detach().numpy(), width, height, bool(cull_backfaces), np.float32(near),
                 out.numpy(), scratch("zbuf", height * width, np.float32), scratch("pu", V, np.float32),
                 scratch("pv", V, np.float32))
    return out
