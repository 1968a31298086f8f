"""A precomputed, batched landmark model of one driving subject for tracking.

With the subject's shape and static offsets frozen, each of the 68 iBUG landmarks (and a few
hundred "probe" vertices used to measure jitter) has a fixed canonical position plus a linear
expression basis, and is posed by linear blend skinning. Tracking only rotates the neck, head and
jaw, so the 55 SMPL-X joint transforms collapse to four rigid groups:

* *body* — every joint whose chain to the pelvis is at rest: ``x ↦ R_g (x − J_0) + J_0``;
* *neck* (12), *head* (15, with the eyes 23/24 kept at rest) and *jaw* (22), each composed as in
  SMPL-X's kinematic tree from ``global_orient`` (frozen per clip), ``neck_pose = head_pose = r/2``
  and ``jaw_pose``.

A point's skinning weights are summed per group once, so posing a landmark costs four 3×3
products instead of an evaluation of the 100k-vertex mesh. Pose-corrective blend shapes and the
dependence of joints on expression are left out, as in :class:`~expportrait_core.head.LandmarkRig`
(sub-millimetre differences for ordinary poses).

Per-frame unknowns ``θ: [B, D]``, ``D = 9 + E``: ``θ[0:3]`` head rotation ``r`` (axis-angle,
split evenly between neck and head), ``θ[3:6]`` translation, ``θ[6:9]`` jaw pose, ``θ[9:]``
expression. Jacobians: analytic for translation and expression (both enter linearly before the
projection), central finite differences in float64 for the six rotation unknowns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch

from ..errors import ExpPortraitError
from ..head.params import HeadParams
from ..head.proxy import HEAD_JOINT, JAW_JOINT, NECK_JOINT

ROT, TRANSL, JAW, EXPR0 = slice(0, 3), slice(3, 6), slice(6, 9), 9
NUM_STATIC = 51
NUM_BINS = 79
GROUPS = ("body", "neck", "head", "jaw")
_FD_DIMS = (0, 1, 2, 6, 7, 8)  # rotation unknowns differentiated numerically


def _mv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product ``M @ v``: [..., i, j] × [..., j] → [..., i]."""
    return (M @ v[..., None])[..., 0]


def _mm3(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A @ B`` for an inner size of 3, as three broadcast products (much faster than many tiny
    bmm calls). A: [..., i, 3]; B: [..., 3, e] → [..., i, e]."""
    return A[..., :, 0:1] * B[..., None, 0, :] + A[..., :, 1:2] * B[..., None, 1, :] + A[..., :, 2:3] * B[..., None, 2, :]


def rodrigues(v: torch.Tensor) -> torch.Tensor:
    """Axis-angle ``[B, 3]`` → rotation matrices ``[B, 3, 3]`` (smooth at zero: Taylor terms)."""
    theta2 = (v * v).sum(-1, keepdim=True)
    theta = theta2.clamp_min(1e-30).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-30))
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def head_yaw_bins(R_head: torch.Tensor) -> torch.Tensor:
    """SMPL-X dynamic-contour row (0..78) from the head joint's world rotation ``[B, 3, 3]``
    (same rule as :meth:`HeadProxy.contour_bins`)."""
    yaw = torch.atan2(-R_head[:, 2, 0], torch.sqrt(R_head[:, 0, 0] ** 2 + R_head[:, 1, 0] ** 2))
    deg = torch.round(torch.clamp(-yaw * 180.0 / math.pi, min=-39, max=39)).long()
    return torch.where(deg < 0, 39 - deg, deg)


def camera_tensors(camera: Dict[str, torch.Tensor], dtype=torch.float64) -> Dict[str, torch.Tensor]:
    """fx, fy, cx, cy (scalars as 0-d tensors), R [3, 3], t [3] in ``dtype``."""
    g = lambda k: torch.as_tensor(camera[k], dtype=dtype).reshape(-1)[0]  # noqa: E731
    return {"fx": g("fx"), "fy": g("fy"), "cx": g("cx"), "cy": g("cy"),
            "R": torch.as_tensor(camera["R"], dtype=dtype).reshape(3, 3),
            "t": torch.as_tensor(camera["t"], dtype=dtype).reshape(3)}


@dataclass
class RigEval:
    """One evaluation of the rig. uv: [B, n, 2] pixels; X: [B, n, 3] world; Mb: [B, n, 3, 3]
    blended rotation of each point; bins: [B] contour rows; Xc: [B, n, 3] camera coordinates."""

    uv: torch.Tensor
    X: torch.Tensor
    Xc: torch.Tensor
    Mb: torch.Tensor
    bins: torch.Tensor
    R_head: torch.Tensor
    p: Optional[torch.Tensor] = None  # [B, n, 3] canonical points
    basis: Optional[torch.Tensor] = None  # [B, n, 3, E] gathered expression basis
    w: Optional[torch.Tensor] = None  # [B, n, 4] group weights


class TrackRig:
    """Landmark/probe model of a frozen identity (see module docstring).

    proxy: :class:`~expportrait_core.head.HeadProxy`; betas: [1, S]; static_offsets: [N_s, 3] or
    None; global_orient: [3] (frozen body turn); camera: file-format dict (fx, fy, cx, cy, R, t);
    num_expression: tracked coefficients E; probe_vertices: [Q] upsampled vertex ids (or None);
    shape_basis: also keep the shape basis (for the built-in keyframe identity fit).
    """

    def __init__(self, proxy, betas: torch.Tensor, static_offsets: Optional[torch.Tensor], global_orient: torch.Tensor,
                 camera: Dict[str, torch.Tensor], num_expression: int, probe_vertices: Optional[torch.Tensor] = None,
                 shape_basis: bool = False, dtype: torch.dtype = torch.float64) -> None:
        parents = proxy.parents.cpu().numpy()
        if parents[HEAD_JOINT] != NECK_JOINT or parents[JAW_JOINT] != HEAD_JOINT or parents[23] != HEAD_JOINT or parents[24] != HEAD_JOINT:
            raise ExpPortraitError("The SMPL-X kinematic tree is not the expected one (neck→head→jaw/eyes).")
        self.proxy_ref = [proxy]
        self.dtype = dtype
        E = int(min(num_expression, proxy.num_expression))
        self.num_expression = E
        self.dim = EXPR0 + E
        with torch.no_grad():
            dev = proxy.device
            faces = torch.cat([proxy.lmk_faces, proxy.dyn_lmk_faces.reshape(-1)])
            bary = torch.cat([proxy.lmk_bary, proxy.dyn_lmk_bary.reshape(-1, 3)])
            tri = proxy.faces[faces]  # [P, 3] upsampled ids
            base_idx = proxy.up_idx[tri].reshape(-1, 9)  # [P, 9] base vertex ids
            base_w = (proxy.up_w[tri] * bary[..., None]).reshape(-1, 9)
            up_ids, up_w = tri, bary
            if probe_vertices is not None and len(probe_vertices):
                pv = probe_vertices.to(dev).long()
                pid = torch.zeros(len(pv), 9, dtype=torch.long, device=dev)
                pw = torch.zeros(len(pv), 9, dtype=proxy.up_w.dtype, device=dev)
                pid[:, :3] = proxy.up_idx[pv]
                pw[:, :3] = proxy.up_w[pv]
                base_idx = torch.cat([base_idx, pid])
                base_w = torch.cat([base_w, pw])
                up_ids = torch.cat([up_ids, torch.stack([pv, pv, pv], 1)])
                up_w = torch.cat([up_w, torch.tensor([[1.0, 0.0, 0.0]], dtype=bary.dtype, device=dev).expand(len(pv), 3)])
                self.num_probes = int(len(pv))
            else:
                self.num_probes = 0
            b = betas[:1].to(dev, proxy.v_template.dtype)
            base = proxy.shaped_base(b)[0]  # [V, 3]
            pts = (base[base_idx] * base_w[..., None]).sum(1)
            if static_offsets is not None:
                so = static_offsets if static_offsets.dim() == 2 else static_offsets[0]
                pts = pts + (so.to(dev)[up_ids] * up_w[..., None]).sum(1)
            expr = (proxy.exprdirs[..., :E][base_idx] * base_w[..., None, None]).sum(1)  # [P, 3, E]
            skin = (proxy.skin_weights[up_ids] * up_w[..., None]).sum(1)  # [P, K]
            joints = proxy.skin_joints.cpu().numpy()
            group = np.zeros(len(joints), dtype=np.int64)
            group[joints == NECK_JOINT] = 1
            group[np.isin(joints, (HEAD_JOINT, 23, 24))] = 2
            group[joints == JAW_JOINT] = 3
            G = torch.zeros(len(joints), 4, dtype=skin.dtype, device=dev)
            G[torch.arange(len(joints)), torch.as_tensor(group, device=dev)] = 1.0
            w4 = skin @ G  # [P, 4]
            J = torch.einsum("jv,vc->jc", proxy.J_regressor, base)
            self.points0 = pts.to("cpu", dtype)
            self.expr_basis = expr.to("cpu", dtype)
            self.group_weights = w4.to("cpu", dtype)
            self.J = J.to("cpu", dtype)
            if shape_basis:
                nb = b.shape[1]
                S = proxy.shapedirs[..., :nb]
                self.shape_basis = (S[base_idx] * base_w[..., None, None]).sum(1).to("cpu", dtype)  # [P, 3, nb]
                self.joint_shape_basis = torch.einsum("jv,vcl->jcl", proxy.J_regressor, S).to("cpu", dtype)
                self.betas0 = b[0].to("cpu", dtype)
            else:
                self.shape_basis = None
        self.R_g = rodrigues(torch.as_tensor(global_orient, dtype=dtype).reshape(1, 3))[0]
        self.cam = camera_tensors(camera, dtype)
        self.num_points = int(self.points0.shape[0])
        self._basis_flat = self.expr_basis.reshape(self.num_points, -1).contiguous()
        self._probe0 = NUM_STATIC + NUM_BINS * 17

    # ------------------------------------------------------------------------------------------
    def point_index(self, bins: torch.Tensor, probes: bool = False) -> torch.Tensor:
        """[B, 68 (+Q)] row ids into the point tables for contour rows ``bins: [B]`` (iBUG order)."""
        B = bins.shape[0]
        contour = NUM_STATIC + bins[:, None] * 17 + torch.arange(17)[None]
        static = torch.arange(NUM_STATIC)[None].expand(B, -1)
        parts = [contour, static]
        if probes and self.num_probes:
            parts.append(torch.arange(self._probe0, self._probe0 + self.num_probes)[None].expand(B, -1))
        return torch.cat(parts, 1)

    def transforms(self, rot: torch.Tensor, jaw: torch.Tensor, joints: Optional[torch.Tensor] = None):
        """Group transforms. rot, jaw: [B, 3] → M: [B, 4, 3, 3], c: [B, 4, 3] (x ↦ M x + c)."""
        B = rot.shape[0]
        J = self.J[None].expand(B, -1, -1) if joints is None else joints
        Q = rodrigues(0.5 * rot)
        Rj = rodrigues(jaw)
        Rg = self.R_g[None].expand(B, 3, 3)

        def compose(Ma, ca, Mb, cb):
            return Ma @ Mb, (Ma @ cb[..., None])[..., 0] + ca

        def local(R, j):
            return R, j - (R @ j[..., None])[..., 0]

        J0, J12, J15, J22 = J[:, 0], J[:, NECK_JOINT], J[:, HEAD_JOINT], J[:, JAW_JOINT]
        body = (Rg, J0 - (Rg @ J0[..., None])[..., 0])
        neck = compose(*body, *local(Q, J12))
        head = compose(*neck, *local(Q, J15))
        jawt = compose(*head, *local(Rj, J22))
        M = torch.stack([body[0], neck[0], head[0], jawt[0]], 1)
        c = torch.stack([body[1], neck[1], head[1], jawt[1]], 1)
        return M, c

    def canonical(self, idx: torch.Tensor, expr: torch.Tensor, betas: Optional[torch.Tensor] = None,
                  basis: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, n, 3] canonical (pre-skinning) points for rows ``idx: [B, n]``, expression [B, E].
        ``basis``: the gathered expression basis [B, n, 3, E] if already at hand."""
        B, n = idx.shape
        if basis is None:
            basis = self.gather_basis(idx)
        p = self.points0.index_select(0, idx.reshape(-1)).view(B, n, 3) + (basis.view(B, n * 3, -1) @ expr[..., None]).view(B, n, 3)
        if betas is not None:
            p = p + torch.einsum("bncl,bl->bnc", self.shape_basis[idx], betas - self.betas0)
        return p

    def gather_basis(self, idx: torch.Tensor) -> torch.Tensor:
        """[B, n, 3, E] expression basis rows for ``idx: [B, n]``."""
        B, n = idx.shape
        E = self.expr_basis.shape[-1]
        return self._basis_flat.index_select(0, idx.reshape(-1)).view(B, n, 3, E)

    def joints_for(self, betas: torch.Tensor) -> torch.Tensor:
        """[B, 55, 3] rest joints for shape ``betas: [B, nb]`` (shape-basis rigs only)."""
        return self.J[None] + torch.einsum("jcl,bl->bjc", self.joint_shape_basis, betas - self.betas0)

    def project(self, X: torch.Tensor):
        """World points [..., 3] → (pixels [..., 2], camera coordinates [..., 3])."""
        c = self.cam
        Xc = X @ c["R"].T + c["t"]
        z = Xc[..., 2:3].clamp_min(1e-6)
        uv = torch.cat([c["fx"] * Xc[..., :1] / z + c["cx"], c["fy"] * Xc[..., 1:2] / z + c["cy"]], -1)
        return uv, Xc

    def evaluate(self, theta: torch.Tensor, bins: Optional[torch.Tensor] = None, probes: bool = False,
                 betas: Optional[torch.Tensor] = None) -> RigEval:
        """Pose and project. theta: [B, D] → :class:`RigEval` with n = 68 (+ probes) points."""
        theta = theta.to(self.dtype)
        joints = self.joints_for(betas) if betas is not None else None
        M, c = self.transforms(theta[:, ROT], theta[:, JAW], joints)
        R_head = M[:, 2]
        if bins is None:
            bins = head_yaw_bins(R_head)
        idx = self.point_index(bins, probes)
        basis = self.gather_basis(idx)
        p = self.canonical(idx, theta[:, EXPR0:], betas, basis=basis)
        w = self.group_weights[idx]  # [B, n, 4]
        Mb = torch.einsum("bng,bgij->bnij", w, M)
        cb = torch.einsum("bng,bgi->bni", w, c)
        X = _mv(Mb, p) + cb + theta[:, None, TRANSL]
        uv, Xc = self.project(X)
        return RigEval(uv=uv, X=X, Xc=Xc, Mb=Mb, bins=bins, R_head=R_head, p=p, basis=basis, w=w)

    def jacobian(self, theta: torch.Tensor, ev: RigEval, h: float = 1e-6, rigid_only: bool = False) -> torch.Tensor:
        """d uv / d theta: [B, 68, 2, D] at ``ev`` (68 landmarks, same contour rows, no betas).
        ``rigid_only``: only the rotation/translation/jaw columns are filled (expression ones 0)."""
        theta = theta.to(self.dtype)
        B, D = theta.shape
        n = 68
        if ev.p is not None and ev.p.shape[1] >= n:
            basis, p, w = ev.basis[:, :n], ev.p[:, :n], ev.w[:, :n]
        else:
            idx = self.point_index(ev.bins)
            basis = self.gather_basis(idx)
            p = self.canonical(idx, theta[:, EXPR0:], basis=basis)
            w = self.group_weights[idx]
        # projection Jacobian d uv / d X (world): [B, n, 2, 3]
        Xc = ev.Xc[:, :n]
        z = Xc[..., 2].clamp_min(1e-6)
        c = self.cam
        zero = torch.zeros_like(z)
        Pj = torch.stack([c["fx"] / z, zero, -c["fx"] * Xc[..., 0] / z**2,
                          zero, c["fy"] / z, -c["fy"] * Xc[..., 1] / z**2], -1).view(B, n, 2, 3)
        PR = Pj @ c["R"]  # [B, n, 2, 3]
        E = basis.shape[-1]
        J_expr = torch.zeros(B, n, 2, E, dtype=self.dtype) if rigid_only else _mm3(PR @ ev.Mb[:, :n], basis)  # [B, n, 2, E]
        # rotation unknowns: central differences of the four group transforms, applied to the points
        k = len(_FD_DIMS)
        steps = torch.zeros(2 * k, D, dtype=self.dtype)
        for i, d in enumerate(_FD_DIMS):
            steps[2 * i, d] = h
            steps[2 * i + 1, d] = -h
        th = (theta[:, None] + steps[None]).reshape(-1, D)
        M, cc = self.transforms(th[:, ROT], th[:, JAW])
        M = M.view(B, k, 2, 4, 3, 3)
        cc = cc.view(B, k, 2, 4, 3)
        dM = (M[:, :, 0] - M[:, :, 1]) / (2 * h)  # [B, k, 4, 3, 3]
        dc = (cc[:, :, 0] - cc[:, :, 1]) / (2 * h)  # [B, k, 4, 3]
        # dX[b, k, n] = sum_g w[b, n, g] (dM[b, k, g] p[b, n] + dc[b, k, g])
        dMw = torch.einsum("bkgij,bng->bknij", dM, w)  # [B, k, n, 3, 3] blended derivative
        dX = _mv(dMw, p[:, None]) + torch.einsum("bkgc,bng->bknc", dc, w)  # [B, k, n, 3]
        dUV = _mv(PR[:, None], dX)  # [B, k, n, 2]
        Jac = torch.cat([dUV[:, 0:3].permute(0, 2, 3, 1), PR, dUV[:, 3:6].permute(0, 2, 3, 1), J_expr], -1)
        return Jac

    # ------------------------------------------------------------------------------------------
    def theta_from_params(self, params: HeadParams) -> torch.Tensor:
        """HeadParams (batch T) → θ [T, D] (rotation = neck + head; extra expression dropped)."""
        T = params.batch_size
        p = params.expand(T)
        th = torch.zeros(T, self.dim, dtype=self.dtype)
        th[:, ROT] = (p.neck_pose + p.head_pose).to(self.dtype).cpu()
        th[:, TRANSL] = p.transl.to(self.dtype).cpu()
        th[:, JAW] = p.jaw_pose.to(self.dtype).cpu()
        E = min(self.num_expression, p.expression.shape[1])
        th[:, EXPR0:EXPR0 + E] = p.expression[:, :E].to(self.dtype).cpu()
        return th

    def params_from_theta(self, theta: torch.Tensor, betas: torch.Tensor, global_orient: torch.Tensor,
                          num_expression: int) -> HeadParams:
        """θ [T, D] → HeadParams (float32, CPU) with the convention neck = head = r/2."""
        T = theta.shape[0]
        th = theta.float().cpu()
        expr = torch.zeros(T, num_expression)
        expr[:, : self.num_expression] = th[:, EXPR0:]
        half = 0.5 * th[:, ROT]
        return HeadParams(
            betas=betas.float().cpu().reshape(1, -1).expand(T, -1).clone(),
            expression=expr,
            global_orient=global_orient.float().cpu().reshape(1, 3).expand(T, 3).clone(),
            neck_pose=half.clone(),
            head_pose=half.clone(),
            jaw_pose=th[:, JAW].clone(),
            leye_pose=torch.zeros(T, 3),
            reye_pose=torch.zeros(T, 3),
            transl=th[:, TRANSL].clone(),
        )
