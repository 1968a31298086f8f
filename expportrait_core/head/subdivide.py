"""Barycentric upsampling of a triangle mesh (the paper's operator B).

Each level splits every triangle into four at its edge midpoints. Every new vertex stays a convex
combination of at most three vertices of one original triangle, so the whole operator is stored as
a gather: ``V_s = sum_k w[:, k] * V[idx[:, k]]`` with ``idx, w: [N_s, 3]``. Each upsampled face also
remembers its parent face and its corners' barycentric coordinates in that parent, which lets
points defined on the original mesh (landmarks) be re-expressed on the upsampled one exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class Upsampling:
    """idx, weights: [N_s, 3] gather from base vertices; faces: [F_s, 3] upsampled faces;
    parent_face: [F_s] index into the *input* faces; corner_bary: [F_s, 3, 3] barycentric
    coordinates (rows = corners) of each upsampled face's corners in its parent face."""

    idx: np.ndarray
    weights: np.ndarray
    faces: np.ndarray
    parent_face: np.ndarray
    corner_bary: np.ndarray
    levels: int

    @property
    def num_vertices(self) -> int:
        return self.idx.shape[0]


def subdivide(vertex_ids: np.ndarray, faces: np.ndarray, levels: int) -> Upsampling:
    """Midpoint-subdivide the mesh ``faces`` (indices into base vertices) ``levels`` times.

    vertex_ids: [n] base vertex ids that make up the sub-mesh (defines the order of the first n
    upsampled vertices); faces: [F, 3] base vertex ids, all contained in ``vertex_ids``.
    """
    n_base = int(max(vertex_ids.max(), faces.max())) + 1
    local = -np.ones(n_base, dtype=np.int64)
    local[vertex_ids] = np.arange(len(vertex_ids))
    cur_faces = local[faces]
    assert (cur_faces >= 0).all(), "faces reference vertices outside the subset"
    # B: [n_cur, n_base] sparse map from base vertices
    B = sp.csr_matrix((np.ones(len(vertex_ids)), (np.arange(len(vertex_ids)), vertex_ids)), shape=(len(vertex_ids), n_base))
    parent = np.arange(len(faces))
    corner = np.broadcast_to(np.eye(3), (len(faces), 3, 3)).copy()
    for _ in range(levels):
        n_cur = B.shape[0]
        e = np.concatenate([cur_faces[:, [0, 1]], cur_faces[:, [1, 2]], cur_faces[:, [2, 0]]], 0)
        e_sorted = np.sort(e, axis=1)
        uniq, inv = np.unique(e_sorted, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        mid = n_cur + inv.reshape(3, -1).T  # [F, 3] midpoint of edges (01, 12, 20)
        rows = np.concatenate([np.arange(n_cur), n_cur + np.arange(len(uniq)), n_cur + np.arange(len(uniq))])
        cols = np.concatenate([np.arange(n_cur), uniq[:, 0], uniq[:, 1]])
        vals = np.concatenate([np.ones(n_cur), np.full(len(uniq), 0.5), np.full(len(uniq), 0.5)])
        M = sp.csr_matrix((vals, (rows, cols)), shape=(n_cur + len(uniq), n_cur))
        B = (M @ B).tocsr()
        a, b, c = cur_faces[:, 0], cur_faces[:, 1], cur_faces[:, 2]
        ab, bc, ca = mid[:, 0], mid[:, 1], mid[:, 2]
        cur_faces = np.concatenate(
            [np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1), np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1)], 0
        )
        ca_, cb_, cc_ = corner[:, 0], corner[:, 1], corner[:, 2]
        mab, mbc, mca = 0.5 * (ca_ + cb_), 0.5 * (cb_ + cc_), 0.5 * (cc_ + ca_)
        corner = np.concatenate(
            [np.stack([ca_, mab, mca], 1), np.stack([mab, cb_, mbc], 1), np.stack([mca, mbc, cc_], 1), np.stack([mab, mbc, mca], 1)], 0
        )
        parent = np.concatenate([parent] * 4, 0)
    B.eliminate_zeros()
    B.sort_indices()
    n = B.shape[0]
    idx = np.zeros((n, 3), dtype=np.int64)
    w = np.zeros((n, 3), dtype=np.float64)
    counts = np.diff(B.indptr)
    assert counts.max() <= 3, "a subdivided vertex depends on more than three base vertices"
    for k in range(3):
        has = counts > k
        pos = B.indptr[:-1][has] + k
        idx[has, k] = B.indices[pos]
        w[has, k] = B.data[pos]
        idx[~has, k] = idx[~has, 0]
    return Upsampling(idx=idx, weights=w, faces=cur_faces.astype(np.int64), parent_face=parent, corner_bary=corner, levels=levels)


def locate_on_upsampled(up: Upsampling, face_of_subset: np.ndarray, base_face: np.ndarray, bary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-express points given as (base face, barycentrics) on the upsampled mesh.

    face_of_subset: [F_base] index of each base face in the subdivided face list (-1 if excluded);
    base_face: [...] base face ids; bary: [..., 3]. Returns (upsampled face ids [...], bary [..., 3]).
    """
    flat_f = base_face.reshape(-1)
    flat_b = bary.reshape(-1, 3)
    out_f = np.zeros(len(flat_f), dtype=np.int64)
    out_b = np.zeros((len(flat_f), 3))
    order = np.argsort(up.parent_face, kind="stable")
    sorted_parent = up.parent_face[order]
    for i, (f, b) in enumerate(zip(flat_f, flat_b)):
        sf = face_of_subset[f]
        if sf < 0:
            raise ValueError(f"landmark face {f} is outside the upsampled region")
        lo, hi = np.searchsorted(sorted_parent, [sf, sf + 1])
        kids = order[lo:hi]
        C = up.corner_bary[kids]  # [k, 3, 3]
        lam = np.einsum("j,kjc->kc", b, np.linalg.inv(C))  # b = lam @ C
        best = np.argmax(lam.min(axis=1))
        out_f[i] = kids[best]
        out_b[i] = np.clip(lam[best], 0.0, 1.0) / np.clip(lam[best], 0.0, 1.0).sum()
    return out_f.reshape(base_face.shape), out_b.reshape(bary.shape)
