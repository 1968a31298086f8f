"""Landmark-only machinery of the fit: a shape-aware :class:`LandmarkRig`, projection, the robust
landmark loss and the closed-form translation used by the multi-hypothesis rigid init."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from smplx.lbs import batch_rodrigues

from ..head.params import HeadParams
from ..head.proxy import NUM_JOINTS, LandmarkRig
from .dense_model import needed_joints, rigid_transforms

# iBUG-68 indices of the 17 jaw-contour points (SMPL-X's yaw-dependent dynamic contour).
CONTOUR = slice(0, 17)


class ShapeLandmarkModel(LandmarkRig):
    """A :class:`~expportrait_core.head.LandmarkRig` whose landmarks are also differentiable in the
    shape coefficients (the rig itself freezes ``betas``).

    Canonical landmark points and joint locations are linear in ``betas``, so the rig is built at
    ``betas = 0`` and two extra bases are stored: ``shape_basis: [P, 3, S]`` (points) and
    ``joint_basis: [55, 3, S]`` (joints, through SMPL-X's joint regressor). Posing is the rig's
    (linear blend skinning, no pose correctives), accurate to well under a millimetre.
    """

    def __init__(self, proxy, num_betas: int, static_offsets: Optional[torch.Tensor] = None) -> None:
        zero = torch.zeros(1, proxy.num_betas, device=proxy.device)
        super().__init__(proxy, zero, static_offsets)
        S = int(min(num_betas, proxy.num_betas))
        with torch.no_grad():
            faces = torch.cat([proxy.lmk_faces, proxy.dyn_lmk_faces.reshape(-1)])
            bary = torch.cat([proxy.lmk_bary, proxy.dyn_lmk_bary.reshape(-1, 3)])
            tri = proxy.faces[faces]  # [P, 3]
            idx = proxy.up_idx[tri]  # [P, 3, 3] base vertex ids
            w = proxy.up_w[tri] * bary[..., None]  # [P, 3, 3]
            sd = proxy.shapedirs[..., :S]  # [V, 3, S]
            shape_basis = (sd[idx] * w[..., None, None]).sum((1, 2))  # [P, 3, S]
            used = proxy.J_regressor.abs().sum(0) > 0  # the regressor is sparse: skip unused vertices
            sdu = sd[used]
            joint_basis = (proxy.J_regressor[:, used] @ sdu.reshape(sdu.shape[0], -1)).reshape(-1, 3, S)
        self.num_shape = S
        self.chain = needed_joints(proxy)
        self.register_buffer("shape_basis", shape_basis)
        self.register_buffer("joint_basis", joint_basis)

    def forward(self, params: HeadParams, contour_bins: Optional[torch.Tensor] = None,
                point_offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, 68, 3] world landmarks (iBUG-68 order) of ``params`` (betas, expression, poses, transl).

        point_offsets: optional [P, 3] canonical static offsets at the rig's candidate points."""
        proxy = self.proxy_ref[0]
        B = params.batch_size
        p = params.expand(B)
        betas = p.betas[:, : self.num_shape]
        pts = (self.points0[None] + torch.einsum("pcs,bs->bpc", self.shape_basis[..., : betas.shape[1]], betas)
               + torch.einsum("pce,be->bpc", self.expr_basis, p.expression[:, : self.expr_basis.shape[-1]]))
        if point_offsets is not None:
            pts = pts + point_offsets
        J = self.J[None] + torch.einsum("jcs,bs->bjc", self.joint_basis[..., : betas.shape[1]], betas)
        pose = proxy.full_pose(p)
        rot = batch_rodrigues(pose.reshape(-1, 3)).view(B, NUM_JOINTS, 3, 3)
        A = rigid_transforms(rot, J, proxy.parents, self.chain)
        T = torch.einsum("pk,bkij->bpij", self.skin_weights, A[:, proxy.skin_joints, :3, :])
        posed = torch.einsum("bpij,bpj->bpi", T[..., :3], pts) + T[..., 3] + p.transl[:, None]
        bins = proxy.contour_bins(A) if contour_bins is None else contour_bins
        dyn = posed[:, self.num_static:].view(B, 79, 17, 3)
        contour = dyn[torch.arange(B), bins]
        return torch.cat([contour, posed[:, : self.num_static]], 1)


def robust_landmark_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor,
                         sigma: float, c: float) -> torch.Tensor:
    """Cauchy loss of landmark residuals in units of the expected detection noise.

    pred, target: [B, 68, 2] px; weights: [B, 68]; scale: [B] face size in px; sigma: noise level as a
    fraction of the face size; c: robust scale in units of sigma. With e = |pred - target| / (sigma ·
    scale), returns [B]: Σ w·c²·log(1 + e²/c²) / Σ w (≈ the mean e² for inliers)."""
    r2 = ((pred - target) ** 2).sum(-1) / (sigma * scale[:, None]) ** 2
    rho = c * c * torch.log1p(r2 / (c * c))
    return (weights * rho).sum(-1) / weights.sum(-1).clamp_min(1e-8)


def face_size(landmarks: np.ndarray) -> float:
    """Diagonal of the landmarks' bounding box (px): the unit of landmark residuals."""
    lo, hi = landmarks.min(0), landmarks.max(0)
    return float(max(np.linalg.norm(hi - lo), 1.0))


def solve_translation(points_cam: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, f: float, cx: float,
                      cy: float) -> torch.Tensor:
    """Closed-form camera-space translation T so that ``points_cam + T`` projects onto ``target``.

    Linear least squares of ``f (x_i + Tx) = (u_i - cx)(z_i + Tz)`` (and the same for y): exact for
    perspective projection given the rotation. points_cam: [B, N, 3]; target: [N, 2]; weights: [N].
    Returns [B, 3]."""
    B, N, _ = points_cam.shape
    du = target[:, 0] - cx
    dv = target[:, 1] - cy
    w = weights.sqrt()
    rows_u = torch.stack([torch.full_like(du, f), torch.zeros_like(du), -du], -1)  # [N, 3]
    rows_v = torch.stack([torch.zeros_like(dv), torch.full_like(dv, f), -dv], -1)
    Amat = torch.cat([rows_u, rows_v], 0) * torch.cat([w, w])[:, None]  # [2N, 3]
    x, y, z = points_cam.unbind(-1)
    bu = du[None] * z - f * x
    bv = dv[None] * z - f * y
    b = torch.cat([bu, bv], 1) * torch.cat([w, w])[None]  # [B, 2N]
    sol = torch.linalg.lstsq(Amat[None].expand(B, -1, -1), b[..., None]).solution[..., 0]
    return sol
