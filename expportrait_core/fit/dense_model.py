"""A leaner :meth:`HeadProxy.forward` for the dense fitting stage.

The fit varies only the leading ``nb`` betas and ``ne`` expression coefficients and the bust's
pose joints (pelvis, neck, head, jaw, eyes), so per step it is enough to

* blend only those shape/expression directions (``[V, 3, nb + ne]`` instead of ``[V, 3, 400]``),
* apply only the pose-corrective rows of the rotating joints (45 of SMPL-X's 486; the others
  multiply ``R - I = 0``),
* regress joints from precomputed joint bases (``J = J0 + Jβ β + Jψ ψ``).

Everything else (upsampling, static offsets in canonical space, skinning, dynamic-contour
landmarks) is the proxy's. Output equals ``proxy.forward`` up to float round-off (tested).
"""
from __future__ import annotations

from typing import Optional

import torch
from smplx.lbs import batch_rodrigues

from ..head.params import POSE_JOINTS, HeadParams
from ..head.proxy import NUM_JOINTS, HeadOutput


class DenseModel(torch.nn.Module):
    """``proxy.forward`` for params whose betas beyond ``nb`` and expression beyond ``ne`` are 0.

    ``coarse=True`` evaluates only the bust's base vertices (the first ``n`` upsampled vertices,
    ``proxy.bust_vertex_ids``) and returns them with the base faces in :attr:`faces` (local ids):
    the same surface as the upsampled mesh (midpoint subdivision adds no shape), about 4× (synthetic
    model) to 15× (SMPL-X) fewer vertices. Landmarks then come from a
    :class:`~expportrait_core.fit.landmarks.ShapeLandmarkModel` plus the offsets at the landmark
    points (interpolated from the base-vertex offsets).
    """

    def __init__(self, proxy, nb: int, ne: int, coarse: bool = False) -> None:
        super().__init__()
        self.proxy_ref = [proxy]
        self.nb, self.ne = int(min(nb, proxy.num_betas)), int(min(ne, proxy.num_expression))
        self.coarse = bool(coarse)
        with torch.no_grad():
            dirs = torch.cat([proxy.shapedirs[..., : self.nb], proxy.exprdirs[..., : self.ne]], -1)  # [V, 3, L]
            used = proxy.J_regressor.abs().sum(0) > 0
            Jr = proxy.J_regressor[:, used]
            self.register_buffer("J0", Jr @ proxy.v_template[used])
            du = dirs[used]
            self.register_buffer("Jdirs", (Jr @ du.reshape(du.shape[0], -1)).reshape(-1, 3, du.shape[-1]))
            joints = sorted(j for j in POSE_JOINTS.values() if j > 0)  # the root has no pose correctives
            rows = torch.cat([torch.arange((j - 1) * 9, j * 9) for j in joints])
            posedirs = proxy.posedirs[rows]  # [9 * len(joints), V * 3]
            if self.coarse:
                vids = proxy.bust_vertex_ids
                n = int(vids.numel())
                self.register_buffer("v_template", proxy.v_template[vids])
                self.register_buffer("dirs", dirs[vids])
                self.register_buffer("posedirs", posedirs.view(len(rows), -1, 3)[:, vids].reshape(len(rows), -1))
                self.register_buffer("skin_weights", proxy.skin_weights[:n])
                bm = BaseMesh(proxy)
                self.register_buffer("faces", bm.faces)
                self.register_buffer("up_local", bm.up_local)  # [N_s, 3] base-local ids
                self.register_buffer("lmk_idx", bm.lmk_idx)
                self.register_buffer("lmk_w", bm.lmk_w)
            else:
                self.register_buffer("v_template", proxy.v_template)
                self.register_buffer("dirs", dirs)
                self.register_buffer("posedirs", posedirs)
                self.register_buffer("skin_weights", proxy.skin_weights)
                self.register_buffer("faces", proxy.faces)
                lmk_faces = torch.cat([proxy.lmk_faces, proxy.dyn_lmk_faces.reshape(-1)])
                self.register_buffer("landmark_vertex_ids", torch.unique(proxy.faces[lmk_faces].reshape(-1)))
        self.pose_joints = joints
        self.chain = needed_joints(proxy)
        self.rig = None
        if self.coarse:
            from .landmarks import ShapeLandmarkModel

            self.rig = ShapeLandmarkModel(proxy, self.nb)

    def upsample_posed(self, verts: torch.Tensor) -> torch.Tensor:
        """Coarse model: posed base vertices [B, n, 3] → the upsampled mesh [B, N_s, 3] (the
        proxy's barycentric gather applied after skinning; render with ``proxy.faces``). Shading
        then matches the upsampled proxy (vertex normals of the coarse triangles do not: about
        twice the normal-map error on the synthetic head). Identity when not coarse."""
        if not self.coarse:
            return verts
        return (verts[:, self.up_local] * self.proxy_ref[0].up_w[None, ..., None]).sum(2)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0]) if self.coarse else self.proxy_ref[0].num_vertices

    def forward(self, params: HeadParams, static_offsets: Optional[torch.Tensor] = None,
                landmarks_see_offsets: bool = True) -> HeadOutput:
        """params: HeadParams with batch B; static_offsets: [M, 3] on this model's vertices
        (M = N_s, or the base bust vertices when ``coarse``). Returns HeadOutput (vertices
        [B, M, 3], landmarks [B, 68, 3], joints [B, 55, 3]).

        ``landmarks_see_offsets=False`` keeps the landmarks' values but stops their gradient from
        reaching the static offsets (so the offsets are driven by the dense image terms only and
        never bend the mesh to follow landmark detection noise)."""
        proxy = self.proxy_ref[0]
        B = params.batch_size
        p = params.expand(B)
        coef = torch.cat([p.betas[:, : self.nb], p.expression[:, : self.ne]], 1)  # [B, L]
        base = self.v_template[None] + torch.einsum("bl,vcl->bvc", coef, self.dirs)
        J = self.J0[None] + torch.einsum("bl,jcl->bjc", coef, self.Jdirs)
        pose = proxy.full_pose(p)
        rot = batch_rodrigues(pose.reshape(-1, 3)).view(B, NUM_JOINTS, 3, 3)
        eye = torch.eye(3, device=rot.device, dtype=rot.dtype)
        feat = (rot[:, self.pose_joints] - eye).reshape(B, -1)
        base = base + (feat @ self.posedirs).view(B, -1, 3)
        A = rigid_transforms(rot, J, proxy.parents, self.chain)
        canon = base if self.coarse else proxy.upsample(base)
        so = None if static_offsets is None else (static_offsets if static_offsets.dim() == 3 else static_offsets[None])
        if so is not None:
            canon = canon + so
        T = torch.einsum("nk,bkij->bnij", self.skin_weights, A[:, proxy.skin_joints, :3, :])
        verts = torch.einsum("bnij,bnj->bni", T[..., :3], canon) + T[..., 3] + p.transl[:, None]
        J_posed = torch.einsum("bjik,bjk->bji", A[..., :3, :3], J) + A[..., :3, 3]  # valid on the bust's chain
        if self.coarse:
            point_offsets = None
            if so is not None:
                po = (so[0][self.lmk_idx] * self.lmk_w[..., None]).sum(1)  # [P, 3] canonical
                point_offsets = po if landmarks_see_offsets else po.detach()
            lmk = self.rig(p, point_offsets=point_offsets)
            return HeadOutput(verts, lmk, J_posed + p.transl[:, None])
        lverts = verts
        if so is not None and not landmarks_see_offsets and so.requires_grad:
            ids = self.landmark_vertex_ids
            sl = so[:, ids]
            zero_valued = torch.einsum("bnij,bnj->bni", T[:, ids, :, :3], sl - sl.detach())  # value 0, gradient -dv/dΔ
            lverts = verts.index_add(1, ids, -zero_valued.expand(B, -1, -1))
        return HeadOutput(verts, proxy.landmarks(lverts, A), J_posed + p.transl[:, None])


class BaseMesh:
    """The bust's base mesh as the coarse offset domain: its ``n`` vertices are the proxy's
    ``bust_vertex_ids`` (the first ``n`` upsampled vertices), ``faces: [F, 3]`` in local ids,
    ``up_local: [N_s, 3]`` the upsampler's base-local ids, and the landmark rig's candidate points
    (:class:`~expportrait_core.fit.landmarks.ShapeLandmarkModel` order: static, then the dynamic
    contour bins) as weights over base vertices, ``lmk_idx, lmk_w: [P, 9]``, so the offsets at the
    landmarks are ``(Δ[lmk_idx] * lmk_w[..., None]).sum(1)`` — exactly the upsampled mesh's."""

    coarse = True

    def __init__(self, proxy) -> None:
        with torch.no_grad():
            vids = proxy.bust_vertex_ids
            n = int(vids.numel())
            local = -torch.ones(proxy.v_template.shape[0], dtype=torch.long, device=vids.device)
            local[vids] = torch.arange(n, device=vids.device)
            bf = proxy.base_faces
            self.num_vertices = n
            self.faces = local[bf[(local[bf] >= 0).all(1)]]
            self.up_local = local[proxy.up_idx]
            lf = torch.cat([proxy.lmk_faces, proxy.dyn_lmk_faces.reshape(-1)])
            bary = torch.cat([proxy.lmk_bary, proxy.dyn_lmk_bary.reshape(-1, 3)])
            tri = proxy.faces[lf]  # [P, 3] upsampled vertex ids
            self.lmk_idx = local[proxy.up_idx[tri]].reshape(len(lf), 9)
            self.lmk_w = (proxy.up_w[tri] * bary[..., None]).reshape(len(lf), 9)

    def point_offsets(self, offsets: torch.Tensor) -> torch.Tensor:
        """Offsets on the base vertices [n, 3] → at the rig's landmark candidate points [P, 3]."""
        return (offsets[self.lmk_idx] * self.lmk_w[..., None]).sum(1)


def needed_joints(proxy) -> list:
    """Joints whose world transforms the proxy's skinning and landmarks use, with all their
    ancestors, ordered parents first."""
    parents = proxy.parents.tolist()
    need = set(int(j) for j in proxy.skin_joints.tolist()) | {15}
    for j in list(need):
        while j > 0:
            j = parents[j]
            need.add(j)
    depth = {}
    for j in sorted(need):
        d, k = 0, j
        while k > 0:
            k = parents[k]
            d += 1
        depth[j] = d
    return sorted(need, key=lambda j: (depth[j], j))


def rigid_transforms(rot: torch.Tensor, J: torch.Tensor, parents: torch.Tensor, joints: list) -> torch.Tensor:
    """``smplx.lbs.batch_rigid_transform``'s relative transforms, evaluated only for ``joints``
    (parents first; see :func:`needed_joints`) — a handful of batched 3×3 products instead of a
    55-step chain of 4×4 products. Other joints get the identity.

    rot: [B, 55, 3, 3] local rotations; J: [B, 55, 3] rest joints. Returns A: [B, 55, 4, 4] with
    ``A[:, j] = [G_R, G_t - G_R J_j]`` (what skinning applies to rest-pose points)."""
    B = rot.shape[0]
    par = parents.tolist()
    GR: dict = {}
    Gt: dict = {}
    for j in joints:
        if j == 0:
            GR[0], Gt[0] = rot[:, 0], J[:, 0]
        else:
            p = par[j]
            GR[j] = GR[p] @ rot[:, j]
            Gt[j] = (GR[p] @ (J[:, j] - J[:, p])[..., None])[..., 0] + Gt[p]
    ids = list(GR.keys())
    GRs = torch.stack([GR[j] for j in ids], 1)  # [B, J, 3, 3]
    Gts = torch.stack([Gt[j] for j in ids], 1)  # [B, J, 3]
    Js = J[:, ids]
    t = Gts - (GRs @ Js[..., None])[..., 0]
    top = torch.cat([GRs, t[..., None]], -1)  # [B, J, 3, 4]
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=rot.device, dtype=rot.dtype).expand(B, len(ids), 1, 4)
    mats = torch.cat([top, bottom], 2)
    A = torch.eye(4, device=rot.device, dtype=rot.dtype).repeat(B, rot.shape[1], 1, 1)
    return A.index_copy(1, torch.tensor(ids, device=rot.device), mats)
