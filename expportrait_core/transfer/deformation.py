"""Deformation transfer between two meshes with the same topology (one identity pair).

Two transfers share one sparse factorization per identity pair (source = the driver, target =
the reference):

**Expression detail** (:meth:`DeformationTransfer.transfer_detail`, what the ``full`` and
``detail`` scopes of :mod:`.core` use). The driver's detail ``d`` (its dynamic offsets, a
displacement of its *base* mesh ``s`` — its parametric expressive mesh, or its neutral) is
described per triangle by the deformation gradient ``Q_j = Ṽ_j V_j⁻¹`` (``V``/``Ṽ``: edge frames
of ``s`` and ``s + d`` with the scaled normal as third column, Sumner & Popović 2004), rotated
into the target triangle's orientation (``R_j Q_j R_jᵀ``, ``R_j`` the polar rotation between the
two neutral triangles) and applied to the target's base mesh ``b``; and each detail vector is
pushed forward through the identity correspondence, ``y_v = M_v d_v`` with ``M_v`` the
area-weighted mean of the neutral → neutral deformation gradients ``G_j = T_j S_j⁻¹`` around
``v`` (so a displacement along the driver's surface normal lands along the reference's normal,
scaled by the local size ratio ``sqrt(A_target / A_source)`` — Sumner's normal column — and a
tangential one follows the local stretch). The target's deformed vertices solve

    min_x  Σ_j Σ_(a,b)∈edges(j)  w_jab ‖(x_b − x_a) − R_j Q_j R_jᵀ (b_b − b_a)‖²  +  Σ_v α_v ‖x_v − (b_v + y_v)‖²

with ``w_jab = A_j / ‖t_b − t_a‖²`` (relative edge change weighted by the target triangle's area,
the discrete ∫‖∇x − Q‖² dA) and ``α_v`` = ``anchor_face`` × the vertex's total edge weight. Why
both terms: on its own, the gradient term integrates the detail's gradients over the whole face,
and where the correspondence turns quickly (lips, nostrils, eyelids: curvature radii of a few mm
against detail of a few mm) the transplanted gradients are incompatible, so the least-squares
solution drifts (measured: worse than copying the offsets); the positional term ties the
solution to the pushed-forward detail, the gradient term keeps the folds' shape and smooths the
per-vertex estimate. Triangles whose source base is degenerate (``2·area < degenerate ×
longest edge²``, e.g. closed eyelids) take the pushed-forward detail's edges instead.

**Whole deformation, classic** (:meth:`DeformationTransfer.transfer`, the ``classic`` scope):
Sumner & Popović's transfer of the source's whole deformation ``s₀ → s₁`` onto the target
neutral ``t``, the same gradient term with ``b = t``, anchored to ``t_v + (s₁ − s₀)_v``. Kept as
an ablation: SMPL-X's expression blend shapes are identity-independent displacements, and their
deformation gradients measured on the driver's triangles and re-applied to the reference's do
not integrate back to the same displacement (error ≈ 40–60 % of the blend-shape displacement on
the synthetic pairs, up to centimetres at the eyelids).

Only the vertices of the face region (mask > 0) plus ``margin_rings`` rings around it are
unknowns; every other vertex is fixed (at ``b_v + d_v``) — outside the face the proxy's offsets
are masked out anyway, and the smaller system is several times cheaper to factor and solve. The
system matrix depends only on the target neutral and the weights, so it is factorized once per
identity pair (SuperLU) and every frame costs forward/back substitutions; frames are solved
together as multiple right-hand sides. For identical source and target every solution
reproduces the source exactly (the system is then consistent: ``R = G = I``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

_EDGES = ((0, 1), (1, 2), (2, 0))
_SOLVE_BLOCK = 4  # right-hand sides per SuperLU substitution (see DeformationTransfer._lu_solve)


@dataclass
class DeformationTransferConfig:
    """anchor_face / anchor_off_face: weight of the positional term of a free vertex, relative to
    the total weight of its edges, inside (face mask 1) and outside (face mask 0) the face region
    (linear in between). Its target is the pushed-forward detail (:meth:`transfer_detail`) or the
    source's own displacement (:meth:`transfer`, classic: use a weak anchor such as 1e-5 there).
    margin_rings: rings of vertices around the face region that are solved too (-1 = solve for
    every vertex). local_frames: express each source gradient in the target triangle's
    orientation (``Q' = R Q Rᵀ`` with ``R`` the rotation of the source → target neutral triangle),
    so a displacement along the driver's surface normal lands along the reference's normal.
    degenerate: a source base triangle with ``2·area < degenerate × (longest edge)²`` has no
    usable gradient (:meth:`transfer_detail` takes the pushed-forward detail's edges there).
    chunk: frames solved together (multi right-hand side)."""

    anchor_face: float = 1.0
    anchor_off_face: float = 1.0
    margin_rings: int = 2
    local_frames: bool = True
    degenerate: float = 1e-3
    chunk: int = 16


def _frames(v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Edge frames [.., F, 3, 3] with columns (e1, e2, n/sqrt|n|) of each triangle. v: [.., N, 3]."""
    a, b, c = v[..., faces[:, 0], :], v[..., faces[:, 1], :], v[..., faces[:, 2], :]
    e1, e2 = b - a, c - a
    n = np.cross(e1, e2)
    n = n / np.sqrt(np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-30))
    return np.stack([e1, e2, n], -1)


class DeformationTransfer:
    """Deformation transfer for one (source, target) identity pair; factorized once, reused per frame.

    source_neutral, target_neutral: [N, 3]; faces: [F, 3]; face_weight: [N] in 0..1 (or None =
    0 everywhere, i.e. strong anchoring). ``factor_seconds`` records the one-time cost.
    """

    def __init__(
        self,
        source_neutral: torch.Tensor | np.ndarray,
        target_neutral: torch.Tensor | np.ndarray,
        faces: torch.Tensor | np.ndarray,
        face_weight: torch.Tensor | np.ndarray | None = None,
        config: Optional[DeformationTransferConfig] = None,
    ) -> None:
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        t0 = time.perf_counter()
        self.config = cfg = config or DeformationTransferConfig()
        S0 = _np64(source_neutral)
        T0 = _np64(target_neutral)
        F = _np(faces).astype(np.int64)
        if S0.shape != T0.shape:
            raise ValueError(f"source and target neutral meshes differ in shape: {S0.shape} vs {T0.shape}")
        N = S0.shape[0]
        self.num_vertices = N
        self.faces = F
        self.source_neutral = S0
        self.target_neutral = T0

        m = np.zeros(N) if face_weight is None else np.clip(_np64(face_weight).reshape(-1), 0.0, 1.0)
        free = self._free_vertices(m, F, N, cfg.margin_rings)
        fi = np.nonzero(free)[0]
        ci = np.nonzero(~free)[0]
        self._free, self._fixed = fi, ci
        # only triangles with a free vertex enter the free rows; the others are never evaluated
        act = np.nonzero(free[F].any(1))[0]
        self._act = act
        Fa = F[act]

        # source edge frames, their inverses, and the source → target triangle rotations
        Vs = _frames(S0, Fa)  # [F_a, 3, 3]
        det = np.linalg.det(Vs)
        ok = np.abs(det) > 1e-18
        inv = np.zeros_like(Vs)
        inv[ok] = np.linalg.inv(Vs[ok])
        self._src_inv = inv
        self._deg = ~ok  # Q := I on degenerate source triangles
        Gj = _frames(T0, Fa) @ inv  # the neutral → neutral deformation gradients T_j S_j⁻¹
        R = np.broadcast_to(np.eye(3), Vs.shape).copy()
        if cfg.local_frames:
            U, _, Vt = np.linalg.svd(Gj)  # polar rotation of the neutral → neutral map
            R = U @ Vt
            flip = np.linalg.det(R) < 0
            U[flip, :, -1] *= -1
            R[flip] = U[flip] @ Vt[flip]
            R[~ok] = np.eye(3)
        self._R = R
        # G_j pushed to the vertices (area-weighted mean over the incident triangles): M_v maps a
        # detail vector of the source onto the target (normal along normal, scaled by
        # sqrt(A_t / A_s); tangential by the stretch)
        self._Vs = Vs
        self._bad0 = _degenerate(Vs, cfg.degenerate)
        use = ~self._bad0 & ok
        a_s = 0.5 * np.linalg.norm(np.cross(Vs[:, :, 0], Vs[:, :, 1]), axis=-1) * use
        Mv = np.zeros((N, 3, 3))
        wsum = np.zeros(N)
        for k in range(3):
            np.add.at(Mv, Fa[:, k], Gj * a_s[:, None, None])
            np.add.at(wsum, Fa[:, k], a_s)
        has = wsum > 0
        Mv[has] /= wsum[has, None, None]
        Mv[~has] = np.eye(3)
        self._M = Mv[fi]  # [n_free, 3, 3]

        # equations: one per (active face, edge), weighted by area / |edge|²
        a_idx = np.concatenate([Fa[:, i] for i, _ in _EDGES])
        b_idx = np.concatenate([Fa[:, j] for _, j in _EDGES])
        g = T0[b_idx] - T0[a_idx]  # [3 F_a, 3] target neutral edges
        area = 0.5 * np.linalg.norm(np.cross(T0[Fa[:, 1]] - T0[Fa[:, 0]], T0[Fa[:, 2]] - T0[Fa[:, 0]]), axis=1)
        w = np.tile(area, 3) / np.maximum((g * g).sum(-1), 1e-14)
        w = w / max(float(w.mean()), 1e-30)
        E = len(a_idx)
        rows = np.concatenate([np.arange(E), np.arange(E)])
        cols = np.concatenate([b_idx, a_idx])
        vals = np.concatenate([np.ones(E), -np.ones(E)])
        A = sp.csr_matrix((vals, (rows, cols)), shape=(E, N))
        AtW = (A.T @ sp.diags(w)).tocsr()
        L = (AtW @ A).tocsr()
        rel = cfg.anchor_face * m + cfg.anchor_off_face * (1.0 - m)
        alpha = rel * np.asarray(L.diagonal())
        self._alpha = alpha[fi]
        Lf = L[fi]
        K = (Lf[:, fi] + sp.diags(self._alpha)).tocsc()
        self._L_fc = Lf[:, ci].tocsr()
        self._AtW = AtW[fi].tocsr()
        # per-frame RHS of edge e of triangle j: c = R Ṽ (V⁻¹ Rᵀ g) — precompute h = V⁻¹ Rᵀ g, so a
        # frame only needs its deformed edge frame Ṽ (no 3×3 products)
        gt = g.reshape(3, len(Fa), 3)  # [3 edges, F_a, 3]
        self._h = np.einsum("fij,efj->efi", inv @ R.transpose(0, 2, 1), gt)  # [3, F_a, 3]
        self._g_act = gt
        self._torch = None
        # K is SPD: symmetric fill-reducing ordering, no pivoting
        self._lu = splu(K, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        self.num_free = len(fi)
        self.factor_seconds = time.perf_counter() - t0

    @staticmethod
    def _free_vertices(m: np.ndarray, F: np.ndarray, N: int, rings: int) -> np.ndarray:
        if rings < 0 or not (m > 0).any():
            return np.ones(N, dtype=bool)
        free = m > 0
        for _ in range(rings):
            touched = free[F].any(1)
            free = free.copy()
            free[F[touched].reshape(-1)] = True
        return free

    # ------------------------------------------------------------------------------------------
    def gradients(self, source_deformed: np.ndarray) -> np.ndarray:
        """Deformation gradients Q [T, F_a, 3, 3] of the active triangles (``self._act``), in the
        target's orientation when ``local_frames``. For inspection; the solver never forms Q."""
        Vd = _frames(_np64(source_deformed), self.faces[self._act])
        Q = Vd @ self._src_inv[None]
        Q[:, self._deg] = np.eye(3)
        return self._R[None] @ Q @ self._R.transpose(0, 2, 1)[None]

    def _edge_targets(self, S1: np.ndarray) -> np.ndarray:
        """c = Q g for every equation of the active triangles: [3, T, F_a, 3] (torch, float64:
        vectorized over both cores)."""
        if self._torch is None:
            self._init_torch()
        F, h, R, g, d = (self._torch[k] for k in ("F", "h", "R", "g", "deg"))
        Vd = _tframes(torch.from_numpy(S1), F)
        out = torch.einsum("fij,etfj->etfi", R, torch.einsum("tfij,efj->etfi", Vd, h))
        if self._deg.any():
            out[:, :, d] = g[:, None, d]
        return out.numpy()

    def push_forward(self, detail: torch.Tensor | np.ndarray) -> np.ndarray:
        """The source's detail vectors mapped onto the target, ``M_v d_v`` on the free vertices
        (unchanged elsewhere): [T, N, 3] (or [N, 3]) float64."""
        D = _np64(detail)
        out = D.copy()
        out[..., self._free, :] = np.einsum("nij,...nj->...ni", self._M, D[..., self._free, :])
        return out

    def transfer_detail(self, detail: torch.Tensor | np.ndarray, source_base: torch.Tensor | np.ndarray | None = None,
                        target_base: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """The target's detail [T, N, 3] (float64; target deformed − ``target_base``) for the
        source's detail ``detail: [T, N, 3]`` (or [N, 3]) on ``source_base`` (see the module
        docstring). source_base / target_base: [T, N, 3] (or [1, N, 3] / [N, 3] for every frame)
        corresponding base meshes of the two identities (e.g. their parametric expressive meshes
        for the same coefficients); None = their neutral meshes. Zero detail gives zero detail
        exactly."""
        D = _np64(detail)
        single = D.ndim == 2
        if single:
            D = D[None]
        T = D.shape[0]

        def per_frame(x):
            if x is None:
                return None
            x = _np64(x)
            if x.shape[-2:] != D.shape[-2:] or (x.ndim == 3 and x.shape[0] not in (1, T)):
                raise ValueError(f"base meshes of shape {x.shape} do not match the detail's {D.shape}")
            return x if x.shape == D.shape else np.broadcast_to(x, D.shape)  # [N, 3] / [1, N, 3] → every frame

        Sb, Tb = per_frame(source_base), per_frame(target_base)
        out = np.empty_like(D)
        c = max(1, int(self.config.chunk))
        for s in range(0, T, c):
            sl = slice(s, s + c)
            out[sl] = self._solve_detail(D[sl], None if Sb is None else Sb[sl], None if Tb is None else Tb[sl])
        return out[0] if single else out

    def _solve_detail(self, D: np.ndarray, Sb: Optional[np.ndarray], Tb: Optional[np.ndarray]) -> np.ndarray:
        # Solved for the displacement u = x − b (same system matrix): exact zeros for zero detail
        # and no cancellation against the mesh coordinates. Edge targets of triangle j (columns):
        # R (Ṽ − V) V⁻¹ Rᵀ [g₀ g₁ g₂] — the detail's change of the source base frame, Ṽ − V,
        # is exactly zero where the detail is. The per-triangle products run in float32 (edges
        # are taken in float64 first; ~1e-7 relative error of a detail-sized quantity), the
        # right-hand side and the solve in float64.
        T = D.shape[0]
        if self._torch is None:
            self._init_torch()
        tc = self._torch
        F, R, fi = tc["F"], tc["R32"], tc["free"]
        Dt = torch.from_numpy(np.ascontiguousarray(D)).float()
        y = Dt.clone()
        y[:, fi] = torch.einsum("nij,tnj->tni", tc["M32"], Dt[:, fi])  # pushed-forward detail
        Dg = Dt[:, F]  # [T, F_a, 3 corners, 3]
        dE1, dE2 = Dg[:, :, 1] - Dg[:, :, 0], Dg[:, :, 2] - Dg[:, :, 0]
        if Sb is None:
            e1, e2, n0 = tc["e1"][None], tc["e2"][None], tc["n0"][None]
            bad = tc["bad0"][None].expand(T, -1)
        else:
            Sg = torch.from_numpy(np.ascontiguousarray(Sb))[:, F]
            e1, e2 = (Sg[:, :, 1] - Sg[:, :, 0]).float(), (Sg[:, :, 2] - Sg[:, :, 0]).float()
            r2 = torch.linalg.cross(e1, e2)
            area2 = r2.norm(dim=-1)
            n0 = r2 / area2.clamp_min(1e-30).sqrt()[..., None]
            longest = torch.maximum(torch.maximum((e1 * e1).sum(-1), (e2 * e2).sum(-1)), ((e2 - e1) ** 2).sum(-1))
            bad = (~(area2 >= self.config.degenerate * longest) | ~(longest > 0)).expand(T, -1)
        dV = torch.stack([dE1, dE2, _ncol(e1 + dE1, e2 + dE2) - n0], -1)  # Ṽ − V: [T, F_a, 3, 3]
        if Sb is None and Tb is None:
            K = tc["H"][None]  # V⁻¹ Rᵀ [g₀ g₁ g₂] precomputed: [1, F_a, 3, 3]
        else:
            if Tb is None:
                G = tc["G"][None]
            else:
                Tg = torch.from_numpy(np.ascontiguousarray(Tb))[:, F]
                G = torch.stack([(Tg[:, :, j] - Tg[:, :, i]).float() for i, j in _EDGES], -1)  # [T, F_a, 3, 3]
            if Sb is None:
                Vinv = tc["Vinv"][None]
            else:  # V⁻¹ by cross products (rows) / det; degenerate triangles are replaced below
                r0, r1 = torch.linalg.cross(e2, n0), torch.linalg.cross(n0, e1)
                det = (e1 * r0).sum(-1)
                det = torch.where(bad, torch.ones_like(det), det)
                Vinv = torch.stack([r0, r1, r2], -2) / det[..., None, None]
            K = Vinv @ (R.transpose(-1, -2) @ G)
        c = (R @ (dV @ K)).permute(3, 0, 1, 2)  # [3 edges, T, F_a, 3]
        if bool(bad.any()):  # no usable gradient: the pushed-forward detail's edges
            tb, fb = torch.nonzero(bad, as_tuple=True)
            Fb = F[fb]
            c[:, tb, fb] = torch.stack([y[tb, Fb[:, j]] - y[tb, Fb[:, i]] for i, j in _EDGES], 0)
        c = c.double().numpy().transpose(0, 2, 1, 3).reshape(3 * len(self._act), T * 3)  # rows in equation order
        # positional targets: the pushed-forward detail; the fixed vertices keep the source's detail
        flat = np.ascontiguousarray(y.double().numpy().transpose(1, 0, 2)).reshape(-1, T * 3)
        flat[self._fixed] = D.transpose(1, 0, 2).reshape(-1, T * 3)[self._fixed]
        fi_np, ci = self._free, self._fixed
        rhs = self._AtW @ c + self._alpha[:, None] * flat[fi_np]
        if len(ci):
            rhs -= self._L_fc @ flat[ci]
        u = flat.copy()
        u[fi_np] = self._lu_solve(rhs)
        return u.reshape(-1, T, 3).transpose(1, 0, 2)

    def _lu_solve(self, rhs: np.ndarray) -> np.ndarray:
        """K⁻¹ rhs for [n_free, k] right-hand sides, in blocks of ``_SOLVE_BLOCK`` columns:
        SuperLU's substitution slows down sharply for wider blocks (measured: 48 columns at once
        ~10× slower than 12 blocks of 4)."""
        out = np.empty_like(rhs)
        for k in range(0, rhs.shape[1], _SOLVE_BLOCK):
            out[:, k : k + _SOLVE_BLOCK] = self._lu.solve(np.asfortranarray(rhs[:, k : k + _SOLVE_BLOCK]))
        return out

    def _init_torch(self) -> None:
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        f = lambda a: t(a).float()  # noqa: E731  (transfer_detail's per-triangle products)
        self._torch = {"F": t(self.faces[self._act]), "h": t(self._h), "R": t(self._R), "g": t(self._g_act),
                       "deg": t(self._deg), "free": t(self._free), "bad0": t(self._bad0),
                       "R32": f(self._R), "M32": f(self._M), "e1": f(self._Vs[:, :, 0]), "e2": f(self._Vs[:, :, 1]),
                       "n0": f(self._Vs[:, :, 2]), "Vinv": f(self._src_inv), "G": f(self._g_act.transpose(1, 2, 0)),
                       "H": f(self._h.transpose(1, 2, 0))}

    def transfer(self, source_deformed: torch.Tensor | np.ndarray) -> np.ndarray:
        """Classic transfer of the source's whole deformation: target deformed meshes [T, N, 3]
        (float64) for source deformed meshes [T, N, 3] (or [N, 3])."""
        S1 = _np64(source_deformed)
        single = S1.ndim == 2
        if single:
            S1 = S1[None]
        T = S1.shape[0]
        out = np.empty_like(S1)
        c = max(1, int(self.config.chunk))
        for s in range(0, T, c):
            out[s : s + c] = self._solve(S1[s : s + c])
        return out[0] if single else out

    def _solve(self, S1: np.ndarray) -> np.ndarray:
        T = S1.shape[0]
        c = self._edge_targets(S1)  # [3 edges, T, F_a, 3]
        c = c.transpose(0, 2, 1, 3).reshape(3 * len(self._act), T * 3)  # rows in equation order
        # anchor / fixed positions: the target neutral moved by the source's own displacement
        anchor = self.target_neutral[None] + (S1 - self.source_neutral[None])  # [T, N, 3]
        flat = np.ascontiguousarray(anchor.transpose(1, 0, 2)).reshape(-1, T * 3)
        fi, ci = self._free, self._fixed
        rhs = self._AtW @ c + self._alpha[:, None] * flat[fi]
        if len(ci):
            rhs -= self._L_fc @ flat[ci]
        x = flat.copy()
        x[fi] = self._lu_solve(rhs)
        return x.reshape(-1, T, 3).transpose(1, 0, 2)


def _ncol(e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    """The third frame column n / sqrt|n| (n = e1 × e2) in torch: [.., 3]."""
    n = torch.linalg.cross(e1, e2)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-30).sqrt()


def _tframes(v: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """:func:`_frames` in torch: [T, N, 3] → [T, F, 3, 3]."""
    a, b, c = v[:, faces[:, 0]], v[:, faces[:, 1]], v[:, faces[:, 2]]
    e1, e2 = b - a, c - a
    return torch.stack([e1, e2, _ncol(e1, e2)], -1)


def _degenerate(frames: np.ndarray, tol: float) -> np.ndarray:
    """Triangles (edge frames [.., F, 3, 3]) with 2·area < tol × (longest edge)² (or not
    finite): [.., F] bool."""
    e1, e2 = frames[..., :, 0], frames[..., :, 1]
    area2 = np.linalg.norm(np.cross(e1, e2), axis=-1)
    longest = np.maximum(np.maximum((e1 * e1).sum(-1), (e2 * e2).sum(-1)), ((e2 - e1) ** 2).sum(-1))
    return ~(area2 >= tol * longest) | ~(longest > 0)



def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _np64(x) -> np.ndarray:
    return _np(x).astype(np.float64)
