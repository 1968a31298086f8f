"""Small mesh helpers shared by the transfer methods (normals, face region, canonical meshes)."""
from __future__ import annotations

from typing import Optional

import torch


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals. verts: [B, N, 3] (or [N, 3]); faces: [F, 3] → same shape as verts."""
    single = verts.dim() == 2
    v = verts[None] if single else verts
    a, b, c = v[:, faces[:, 0]], v[:, faces[:, 1]], v[:, faces[:, 2]]
    fn = torch.cross(b - a, c - a, dim=-1)  # length = 2 × area
    n = torch.zeros_like(v)
    for k in range(3):
        n.index_add_(1, faces[:, k], fn)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return n[0] if single else n


def face_region_ids(proxy) -> torch.Tensor:
    """[M] ids of the proxy vertices that can carry dynamic offsets (face mask > 0), ascending."""
    return torch.nonzero(proxy.face_weight > 0).reshape(-1)


def region_faces(faces: torch.Tensor, ids: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """Faces [F_r, 3] of the sub-mesh on vertex ``ids`` (re-indexed into 0..len(ids)-1)."""
    local = torch.full((num_vertices,), -1, dtype=torch.long, device=faces.device)
    local[ids] = torch.arange(len(ids), device=faces.device)
    f = local[faces]
    return f[(f >= 0).all(1)]


def template_upsampled(proxy) -> torch.Tensor:
    """[N_s, 3] the upsampled template mesh B(v_template) (vertex correspondence across identities)."""
    return proxy.upsample(proxy.v_template[None])[0]


def expression_displacement(proxy, expression: torch.Tensor, ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """B(E·ψ) on all (or ``ids``) upsampled vertices. expression: [T, E] → [T, N_s or M, 3]."""
    e = expression[:, : proxy.num_expression].to(proxy.exprdirs.dtype)
    if proxy.num_expression == 0 or e.shape[1] == 0:
        n = proxy.num_vertices if ids is None else len(ids)
        return expression.new_zeros(expression.shape[0], n, 3)
    base = torch.einsum("te,vce->tvc", e, proxy.exprdirs[..., : e.shape[1]])  # [T, V, 3]
    idx, w = proxy.up_idx, proxy.up_w
    if ids is not None:
        idx, w = idx[ids], w[ids]
    return (base[:, idx] * w[None, :, :, None]).sum(2)


def fit_expression_dims(expression: torch.Tensor, num: int) -> torch.Tensor:
    """Truncate or zero-pad expression coefficients [T, E'] to [T, num]."""
    if expression.shape[1] == num:
        return expression
    if expression.shape[1] > num:
        return expression[:, :num]
    return torch.cat([expression, expression.new_zeros(expression.shape[0], num - expression.shape[1])], 1)


def fit_betas(betas: torch.Tensor, num: int) -> torch.Tensor:
    """Truncate or zero-pad shape coefficients [B, S'] to [B, num]."""
    return fit_expression_dims(betas, num)
