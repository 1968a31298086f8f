"""Deformation transfer (Sumner & Popović 2004) between two meshes with the same topology.

The source's deformation (source neutral → source deformed) is described per triangle by its
deformation gradient ``Q_j = Ṽ_j V_j⁻¹`` (edge frames with the scaled normal as third column).
The target's deformed vertices ``x`` solve, in least squares,

    min_x  Σ_j Σ_(a,b)∈edges(j)  w_jab ‖(x_b − x_a) − Q_j (t_b − t_a)‖²  +  Σ_v α_v ‖x_v − (t_v + u_v)‖²

with ``t`` the target neutral (``Q_j`` optionally rotated into the target triangle's orientation,
``R_j Q_j R_jᵀ``, ``R_j`` the rotation between the two neutral triangles) and ``w_jab = A_j / ‖t_b − t_a‖²`` (relative edge change weighted
by the target triangle's area ``A_j``: the discrete ∫‖∇x − Q‖² dA, so tiny or sliver triangles
cannot dominate), and a soft anchor ``α_v`` to the source's own displacement ``u_v``. Only the
vertices of the face region (mask > 0) plus ``margin_rings`` rings around it are unknowns; every
other vertex is fixed at ``t_v + u_v`` — outside the face the proxy's offsets are masked out
anyway, and the smaller system is several times cheaper to factor and solve. The system matrix
depends only on the target neutral and the weights, so it is factorized once per identity pair
(SuperLU) and every frame costs forward/back substitutions; frames are solved together as
multiple right-hand sides. For identical source and target the solution reproduces the source
exactly (the system is then consistent).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

_EDGES = ((0, 1), (1, 2), (2, 0))


@dataclass
class DeformationTransferConfig:
    """anchor_face / anchor_off_face: soft-anchor weight of a free vertex, relative to the total
    weight of its edges, inside (face mask 1) and outside (face mask 0) the face region (linear in
    between). margin_rings: rings of vertices around the face region that are solved too (-1 =
    solve for every vertex). local_frames: express each source gradient in the target triangle's
    orientation (``Q' = R Q Rᵀ`` with ``R`` the rotation of the source → target neutral triangle),
    so a displacement along the driver's surface normal lands along the reference's normal.
    chunk: frames solved together (multi right-hand side)."""

    anchor_face: float = 1e-5
    anchor_off_face: float = 1.0
    margin_rings: int = 2
    local_frames: bool = True
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
        R = np.broadcast_to(np.eye(3), Vs.shape).copy()
        if cfg.local_frames:
            U, _, Vt = np.linalg.svd(_frames(T0, Fa) @ inv)  # polar rotation of the neutral → neutral map
            R = U @ Vt
            flip = np.linalg.det(R) < 0
            U[flip, :, -1] *= -1
            R[flip] = U[flip] @ Vt[flip]
            R[~ok] = np.eye(3)
        self._R = R

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
            self._torch = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in
                                (self.faces[self._act], self._h, self._R, self._g_act))
        F, h, R, g = self._torch
        S = torch.from_numpy(S1)
        a, b, c = S[:, F[:, 0]], S[:, F[:, 1]], S[:, F[:, 2]]
        e1, e2 = b - a, c - a
        n = torch.linalg.cross(e1, e2)
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-30).sqrt()
        v = h[:, None, :, 0:1] * e1[None] + h[:, None, :, 1:2] * e2[None] + h[:, None, :, 2:3] * n[None]
        out = torch.einsum("fij,etfj->etfi", R, v)
        if self._deg.any():
            d = torch.from_numpy(self._deg)
            out[:, :, d] = g[:, None, d]
        return out.numpy()

    def transfer(self, source_deformed: torch.Tensor | np.ndarray) -> np.ndarray:
        """Target deformed meshes [T, N, 3] (float64) for source deformed meshes [T, N, 3] (or [N, 3])."""
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
        x[fi] = self._lu.solve(np.asfortranarray(rhs))
        return x.reshape(-1, T, 3).transpose(1, 0, 2)


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _np64(x) -> np.ndarray:
    return _np(x).astype(np.float64)
