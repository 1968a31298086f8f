"""The personalized head proxy (paper §2): SMPL-X bust, barycentrically upsampled, with dense
static (identity) and dynamic (expression) per-vertex offsets.

Per frame ``i`` the canonical (pre-skinning) upsampled mesh is

    T_s(i) = B(v_template + S·β + E·ψ_i + P(θ_i)) + Δ_g + m_face ⊙ Δ_f(i)

where ``B`` is the upsampling gather, ``S``/``E``/``P`` are SMPL-X's shape, expression and pose
corrective blend shapes, ``Δ_g: [N_s, 3]`` the static identity offset, ``Δ_f(i): [N_s, 3]`` the
dynamic expression offset and ``m_face: [N_s]`` the soft face mask. ``T_s`` is then posed by
linear blend skinning with SMPL-X's joints, so both offsets follow jaw, neck and head rotations.
The neutral personalized mesh of the paper is ``V_neutral = B(v_template + S·β) + Δ_g``.

Regions (explicit and configurable in :class:`RegionConfig`):
- *bust*: vertices skinned mostly (≥ ``bust_weight_min``) to the spine3/neck/collar/shoulder/head/
  jaw/eye joints, no lower than ``chest_depth`` neck-to-head lengths below the neck joint and no
  wider than the shoulder joints plus ``shoulder_margin``;
- *face*: bust vertices in front of the head joint whose (x, y) lies within the convex hull of the
  68 template landmarks (extended up to the forehead by ``forehead``), with a soft edge of width
  ``falloff`` metres around a ``margin``. Dynamic offsets are multiplied by this mask.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues

from ..errors import ExpPortraitError
from .params import POSE_JOINTS, HeadParams
from .smplx_file import file_sha256, is_synthetic, load_smplx_arrays
from .subdivide import Upsampling, locate_on_upsampled, subdivide

log = logging.getLogger(__name__)

NUM_JOINTS = 55
HEAD_JOINT, NECK_JOINT, JAW_JOINT = 15, 12, 22
SHOULDER_JOINTS = (16, 17)


@dataclass
class RegionConfig:
    """How the bust and face regions are cut from the SMPL-X mesh (see module docstring)."""

    bust_joints: Sequence[int] = (6, 9, 12, 13, 14, 15, 16, 17, 22, 23, 24)
    bust_weight_min: float = 0.5
    chest_depth: float = 1.6
    shoulder_margin: float = 0.04
    face_margin: float = 0.01
    forehead: float = 0.035
    falloff: float = 0.015


@dataclass
class ProxyConfig:
    """num_betas <= 300, num_expression <= 100; ``subdivision``: levels of 4:1 midpoint
    subdivision of the bust, or "auto" = the most levels that keep N_s <= ``max_vertices``
    (SMPL-X 2020's bust of ~6.7k vertices → 2 levels, ~100k vertices; the synthetic model's
    10.5k-vertex bust → 1 level, ~42k)."""

    num_betas: int = 300
    num_expression: int = 100
    subdivision: Union[int, str] = "auto"
    max_vertices: int = 120_000
    regions: RegionConfig = field(default_factory=RegionConfig)


@dataclass
class HeadOutput:
    """vertices: [B, N_s, 3] posed upsampled mesh (world, metres); landmarks: [B, 68, 3] in iBUG-68
    order; joints: [B, 55, 3] posed joints; canonical: [B, N_s, 3] pre-skinning mesh (optional)."""

    vertices: torch.Tensor
    landmarks: torch.Tensor
    joints: torch.Tensor
    canonical: Optional[torch.Tensor] = None


def _convex_hull_distance(points_xy: np.ndarray, hull_pts: np.ndarray) -> np.ndarray:
    """Signed distance-like value of 2-D points to a convex polygon (≤ 0 inside)."""
    from scipy.spatial import ConvexHull

    hull = ConvexHull(hull_pts)
    eq = hull.equations  # [k, 3] unit normals + offset
    return (points_xy @ eq[:, :2].T + eq[:, 2]).max(axis=1)


class HeadProxy(torch.nn.Module):
    """SMPL-X bust proxy with dense displacement. Build with :func:`load_head_proxy`."""

    def __init__(self, arrays: dict, config: ProxyConfig | None = None, source: str = "", sha256: str = "") -> None:
        super().__init__()
        cfg = config or ProxyConfig()
        self.config = cfg
        self.source = source
        self.sha256 = sha256
        self.synthetic = is_synthetic(arrays)
        nb, ne = int(cfg.num_betas), int(cfg.num_expression)
        dirs = arrays["shapedirs"]
        if not (1 <= nb <= 300) or not (0 <= ne <= min(100, dirs.shape[-1] - 300)):
            raise ExpPortraitError(
                f"num_betas must be 1..300 and num_expression 0..{dirs.shape[-1] - 300}; got {nb}, {ne}."
            )
        self.num_betas, self.num_expression = nb, ne
        v_template = arrays["v_template"].astype(np.float64)
        faces = arrays["f"].astype(np.int64)
        weights = arrays["weights"].astype(np.float64)
        J_reg = arrays["J_regressor"].astype(np.float64)
        parents = arrays["kintree_table"][0].astype(np.int64)
        parents[0] = -1
        joints_t = J_reg @ v_template
        r = cfg.regions

        # --- bust region -------------------------------------------------------------------
        bust_w = weights[:, list(r.bust_joints)].sum(1)
        head_len = np.linalg.norm(joints_t[HEAD_JOINT] - joints_t[NECK_JOINT])
        y_cut = joints_t[NECK_JOINT, 1] - r.chest_depth * head_len
        x_max = np.abs(joints_t[list(SHOULDER_JOINTS), 0]).max() + r.shoulder_margin
        in_bust = (bust_w >= r.bust_weight_min) & (v_template[:, 1] >= y_cut) & (np.abs(v_template[:, 0]) <= x_max)
        bust_faces_mask = in_bust[faces].all(1)
        bust_faces = faces[bust_faces_mask]
        used = np.unique(bust_faces)
        face_of_subset = -np.ones(len(faces), dtype=np.int64)
        face_of_subset[np.nonzero(bust_faces_mask)[0]] = np.arange(bust_faces_mask.sum())

        levels = cfg.subdivision
        if levels == "auto":
            levels = 0
            while len(used) * 4 ** (levels + 1) <= cfg.max_vertices * 1.05 and levels < 3:
                levels += 1
            levels = max(levels, 1)
        up: Upsampling = subdivide(used, bust_faces, int(levels))
        self.levels = int(levels)

        # --- landmarks on the upsampled mesh ------------------------------------------------
        try:
            lmk_f, lmk_b = locate_on_upsampled(up, face_of_subset, arrays["lmk_faces_idx"].astype(np.int64), arrays["lmk_bary_coords"])
            dyn_f, dyn_b = locate_on_upsampled(
                up, face_of_subset, arrays["dynamic_lmk_faces_idx"].astype(np.int64), arrays["dynamic_lmk_bary_coords"]
            )
        except ValueError as exc:
            raise ExpPortraitError(f"The bust region does not contain the face landmarks ({exc}); widen RegionConfig.") from exc

        # --- face region (soft mask on upsampled vertices, in template space) -----------------
        vs_t = (v_template[up.idx] * up.weights[..., None]).sum(1)
        lmk_pts = self._bary_points(vs_t, up.faces, lmk_f, lmk_b)
        contour = self._bary_points(vs_t, up.faces, dyn_f[0], dyn_b[0])  # yaw bin 0 = frontal
        hull = np.concatenate([lmk_pts[:, :2], contour[:, :2], lmk_pts[:10, :2] + np.array([0.0, r.forehead])], 0)
        d = _convex_hull_distance(vs_t[:, :2], hull)
        face_w = np.clip(1.0 - (d - r.face_margin) / max(r.falloff, 1e-6), 0.0, 1.0)
        face_w *= (vs_t[:, 2] > joints_t[HEAD_JOINT, 2]).astype(np.float64)

        f32 = torch.float32
        S = dirs[:, :, :nb]
        E = dirs[:, :, 300 : 300 + ne]
        self.register_buffer("v_template", torch.tensor(v_template, dtype=f32))
        self.register_buffer("shapedirs", torch.tensor(S, dtype=f32))
        self.register_buffer("exprdirs", torch.tensor(E, dtype=f32))
        P = arrays["posedirs"]
        self.register_buffer("posedirs", torch.tensor(P.reshape(-1, P.shape[-1]).T, dtype=f32))  # [486, V*3]
        self.register_buffer("J_regressor", torch.tensor(J_reg, dtype=f32))
        self.register_buffer("parents", torch.tensor(parents, dtype=torch.long))
        self.register_buffer("base_faces", torch.tensor(faces, dtype=torch.long))
        self.register_buffer("up_idx", torch.tensor(up.idx, dtype=torch.long))
        self.register_buffer("up_w", torch.tensor(up.weights, dtype=f32))
        self.register_buffer("faces", torch.tensor(up.faces, dtype=torch.long))
        ws = (weights[up.idx] * up.weights[..., None]).sum(1)
        active = np.nonzero(ws.max(0) > 0)[0]
        ws = ws[:, active] / ws[:, active].sum(1, keepdims=True)
        self.register_buffer("skin_joints", torch.tensor(active, dtype=torch.long))
        self.register_buffer("skin_weights", torch.tensor(ws, dtype=f32))  # [N_s, K]
        self.register_buffer("lmk_faces", torch.tensor(lmk_f, dtype=torch.long))
        self.register_buffer("lmk_bary", torch.tensor(lmk_b, dtype=f32))
        self.register_buffer("dyn_lmk_faces", torch.tensor(dyn_f, dtype=torch.long))
        self.register_buffer("dyn_lmk_bary", torch.tensor(dyn_b, dtype=f32))
        self.register_buffer("face_weight", torch.tensor(face_w, dtype=f32))
        self.register_buffer("bust_vertex_ids", torch.tensor(used, dtype=torch.long))
        self.bust_face_count = int(len(bust_faces))

    @staticmethod
    def _bary_points(verts: np.ndarray, faces: np.ndarray, f: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (verts[faces[f]] * b[..., None]).sum(-2)

    # ------------------------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        """N_s, the number of upsampled proxy vertices."""
        return int(self.up_idx.shape[0])

    @property
    def device(self) -> torch.device:
        return self.v_template.device

    def describe(self) -> dict:
        """Facts recorded in identity/motion files to detect a mismatched model."""
        return {
            "smplx_sha256": self.sha256,
            "num_base_vertices": int(self.v_template.shape[0]),
            "num_vertices": self.num_vertices,
            "num_faces": int(self.faces.shape[0]),
            "subdivision": self.levels,
            "num_betas": self.num_betas,
            "num_expression": self.num_expression,
            "synthetic": bool(self.synthetic),
            "regions": asdict(self.config.regions),
        }

    def zero_params(self, batch: int = 1) -> HeadParams:
        return HeadParams.zeros(batch, self.num_betas, self.num_expression, device=self.device)

    def upsample(self, base_verts: torch.Tensor) -> torch.Tensor:
        """Apply the barycentric upsampler B. base_verts: [B, V, C] → [B, N_s, C]."""
        return (base_verts[:, self.up_idx] * self.up_w[None, :, :, None]).sum(2)

    def full_pose(self, params: HeadParams) -> torch.Tensor:
        """[B, 55, 3] axis-angle pose with the bust joints filled in, others at rest."""
        B = params.batch_size
        pose = torch.zeros(B, NUM_JOINTS, 3, device=self.device, dtype=self.v_template.dtype)
        for name, j in POSE_JOINTS.items():
            pose[:, j] = getattr(params, name).expand(B, 3)
        return pose

    def shaped_base(self, betas: torch.Tensor, expression: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Base-mesh vertices with shape (and expression) blend shapes. betas: [B, S] → [B, V, 3]."""
        v = self.v_template[None] + torch.einsum("bl,vcl->bvc", betas[:, : self.num_betas], self.shapedirs[..., : betas.shape[1]])
        if expression is not None and self.num_expression > 0:
            e = expression[:, : self.num_expression]
            v = v + torch.einsum("bl,vcl->bvc", e, self.exprdirs[..., : e.shape[1]])
        return v

    def neutral(self, betas: torch.Tensor, static_offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The paper's V_neutral = B(v_template + S·β) + Δ_g. betas: [B, S]; returns [B, N_s, 3]."""
        v = self.upsample(self.shaped_base(betas))
        if static_offsets is not None:
            v = v + static_offsets
        return v

    def forward(
        self,
        params: HeadParams,
        static_offsets: Optional[torch.Tensor] = None,
        dynamic_offsets: Optional[torch.Tensor] = None,
        return_canonical: bool = False,
    ) -> HeadOutput:
        """Pose the personalized proxy.

        params: :class:`HeadParams` with batch B; static_offsets: [N_s, 3] or [B, N_s, 3];
        dynamic_offsets: [B, N_s, 3] (masked by the face region). Returns :class:`HeadOutput`.
        """
        B = params.batch_size
        p = params.expand(B)
        base = self.shaped_base(p.betas, p.expression)  # [B, V, 3]
        J = torch.einsum("jv,bvc->bjc", self.J_regressor, base)
        pose = self.full_pose(p)
        rot = batch_rodrigues(pose.reshape(-1, 3)).view(B, NUM_JOINTS, 3, 3)
        eye = torch.eye(3, device=rot.device, dtype=rot.dtype)
        pose_feature = (rot[:, 1:] - eye).reshape(B, -1)
        base = base + (pose_feature @ self.posedirs).view(B, -1, 3)
        J_posed, A = batch_rigid_transform(rot, J, self.parents)
        canon = self.upsample(base)
        if static_offsets is not None:
            canon = canon + (static_offsets if static_offsets.dim() == 3 else static_offsets[None])
        if dynamic_offsets is not None:
            canon = canon + self.face_weight[None, :, None] * dynamic_offsets
        A_k = A[:, self.skin_joints]  # [B, K, 4, 4]
        T = torch.einsum("nk,bkij->bnij", self.skin_weights, A_k[:, :, :3, :])  # [B, N_s, 3, 4]
        verts = torch.einsum("bnij,bnj->bni", T[..., :3], canon) + T[..., 3]
        verts = verts + p.transl[:, None]
        joints = J_posed + p.transl[:, None]
        lmk = self.landmarks(verts, A)
        return HeadOutput(verts, lmk, joints, canon if return_canonical else None)

    def contour_bins(self, A: torch.Tensor) -> torch.Tensor:
        """Yaw bin (0..78, SMPL-X's dynamic-contour table) from the head joint's world rotation."""
        R = A[:, HEAD_JOINT, :3, :3]
        yaw = torch.atan2(-R[:, 2, 0], torch.sqrt(R[:, 0, 0] ** 2 + R[:, 1, 0] ** 2))
        deg = torch.round(torch.clamp(-yaw * 180.0 / np.pi, min=-39, max=39)).long()
        return torch.where(deg < 0, 39 - deg, deg)

    def landmarks(self, verts: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """[B, 68, 3] iBUG-68 landmarks: 17 yaw-dependent contour points + 51 static points."""
        B = verts.shape[0]
        bins = self.contour_bins(A)
        f = torch.cat([self.dyn_lmk_faces[bins], self.lmk_faces[None].expand(B, -1)], 1)  # [B, 68]
        b = torch.cat([self.dyn_lmk_bary[bins], self.lmk_bary[None].expand(B, -1, -1)], 1)
        tri = self.faces[f]  # [B, 68, 3]
        pts = torch.gather(verts, 1, tri.reshape(B, -1, 1).expand(-1, -1, 3)).view(B, 68, 3, 3)
        return (pts * b[..., None]).sum(2)

    def landmark_rig(self, betas: torch.Tensor, static_offsets: Optional[torch.Tensor] = None) -> "LandmarkRig":
        """A :class:`LandmarkRig` for fixed shape ``betas: [1, S]`` and ``static_offsets: [N_s, 3]``."""
        return LandmarkRig(self, betas, static_offsets)


def load_head_proxy(
    path: str | Path,
    config: ProxyConfig | None = None,
    device: str | torch.device = "cpu",
    allow_pickle_file: bool = False,
) -> HeadProxy:
    """Load an SMPL-X 2020 ``.npz`` (or the synthetic stand-in) as a :class:`HeadProxy`."""
    arrays = load_smplx_arrays(path, allow_pickle_file=allow_pickle_file)
    proxy = HeadProxy(arrays, config, source=str(path), sha256=file_sha256(path))
    log.info(
        "Head proxy: %d base vertices, bust %d faces, %d subdivision levels → %d vertices / %d faces%s",
        proxy.v_template.shape[0], proxy.bust_face_count, proxy.levels, proxy.num_vertices,
        proxy.faces.shape[0], " (synthetic model)" if proxy.synthetic else "",
    )
    return proxy.to(device)


def synthetic_head_proxy(config: ProxyConfig | None = None, device: str | torch.device = "cpu", seed: int = 0) -> HeadProxy:
    """A proxy built on the project's synthetic SMPL-X-format model (no download needed)."""
    from .synthetic import ensure_synthetic_smplx

    return load_head_proxy(ensure_synthetic_smplx(seed=seed), config, device)


class LandmarkRig(torch.nn.Module):
    """A landmark-only version of the proxy for fast fitting and tracking (no full-mesh evaluation).

    With shape and static offsets fixed, every landmark's canonical position is linear in the
    expression coefficients; it is then posed by linear blend skinning with the same joint
    transforms as the mesh. Pose-corrective blend shapes and the (tiny) dependence of joint
    locations on expression are left out, so landmarks match :meth:`HeadProxy.forward` to well
    under a millimetre for ordinary poses (tested).

    points0: [P, 3] canonical candidate points (51 static + 79×17 contour-table points);
    expr_basis: [P, 3, E]; skin_weights: [P, K]; J: [55, 3] joints of the shaped rest mesh.
    """

    def __init__(self, proxy: "HeadProxy", betas: torch.Tensor, static_offsets: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.proxy_ref = [proxy]  # not a submodule: keep state_dict small
        with torch.no_grad():
            base = proxy.shaped_base(betas[:1])
            J = torch.einsum("jv,bvc->bjc", proxy.J_regressor, base)[0]
            faces = torch.cat([proxy.lmk_faces, proxy.dyn_lmk_faces.reshape(-1)])
            bary = torch.cat([proxy.lmk_bary, proxy.dyn_lmk_bary.reshape(-1, 3)])
            tri = proxy.faces[faces]  # [P, 3]
            idx = proxy.up_idx[tri]  # [P, 3, 3] base ids
            w = proxy.up_w[tri] * bary[..., None]  # [P, 3, 3]
            pts = (base[0][idx] * w[..., None]).sum((1, 2))
            if static_offsets is not None:
                so = static_offsets if static_offsets.dim() == 2 else static_offsets[0]
                pts = pts + (so[tri] * bary[..., None]).sum(1)
            E = proxy.exprdirs[idx]  # [P, 3, 3, 3, E]
            expr_basis = (E * w[..., None, None]).sum((1, 2))
            skin = (proxy.skin_weights[tri] * bary[..., None]).sum(1)
        self.num_static = int(proxy.lmk_faces.shape[0])
        self.register_buffer("points0", pts)
        self.register_buffer("expr_basis", expr_basis)
        self.register_buffer("skin_weights", skin)
        self.register_buffer("J", J)

    def forward(self, params: HeadParams, contour_bins: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, 68, 3] landmarks (iBUG-68 order). ``contour_bins`` [B] overrides the yaw bin choice."""
        proxy = self.proxy_ref[0]
        B = params.batch_size
        p = params.expand(B)
        pts = self.points0[None] + torch.einsum("pce,be->bpc", self.expr_basis, p.expression[:, : self.expr_basis.shape[-1]])
        pose = proxy.full_pose(p)
        rot = batch_rodrigues(pose.reshape(-1, 3)).view(B, NUM_JOINTS, 3, 3)
        _, A = batch_rigid_transform(rot, self.J[None].expand(B, -1, -1), proxy.parents)
        T = torch.einsum("pk,bkij->bpij", self.skin_weights, A[:, proxy.skin_joints, :3, :])
        posed = torch.einsum("bpij,bpj->bpi", T[..., :3], pts) + T[..., 3] + p.transl[:, None]
        bins = proxy.contour_bins(A) if contour_bins is None else contour_bins
        dyn = posed[:, self.num_static :].view(B, 79, 17, 3)
        contour = dyn[torch.arange(B), bins]
        return torch.cat([contour, posed[:, : self.num_static]], 1)
