"""Detail path: per-frame dynamic expression offsets Δ_f(i) from the driving frames' normal maps.

With the frame's pose and expression from the fast path fixed, the canonical offsets of the face
region (``proxy.face_weight > 0``) are optimised so that the rendered normals match the target
normal map (paper §2.4–2.5):

    L = w_n · mean_pixels |n_render − n_target|₁ + w_mag · mean ‖Δ‖² + w_lap · mean ‖L_u Δ‖²

over a square crop around the face at ``detail_resolution`` (the camera intrinsics are cropped the
same way), with ``L_u`` the uniform Laplacian of the face sub-mesh (spatial smoothness). The
unknowns live on the bust's base vertices of the face region and are upsampled with the proxy's
operator B (see :class:`DetailFitter`). Because
the posed mesh is affine in the canonical offsets, it is evaluated once per frame
(``V = V₀ + G·Δ`` with ``G`` the per-vertex skinning rotation times the face mask, taken from three
probe evaluations of the proxy), so each Adam step costs one render of the face sub-mesh.
After the clip, the offsets are made zero-mean over time; their mean (what is constant over the
clip) moves into the driving identity's static offsets (§2.5, temporal disentanglement).

Target normal maps: CONTRIBUTING encoding (GL camera axes: x right, y up, z towards the viewer;
rgb = 0.5·n + 0.5). Pixels whose decoded vector does not face the camera or is far from unit
length (black background, masks) are ignored.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import ExpPortraitError
from ..grad import autograd_enabled
from ..io.files import Identity
from .config import TrackConfig

DETAIL_CROP_SCALE = 1.3  # crop side / landmark-box side: the face plus a margin for the forehead


def crop_normal_map(normal_map, landmarks: np.ndarray, res: int, image_size: Optional[Tuple[int, int]] = None):
    """Crop a normal map around the face and decode it.

    normal_map: float [H', W', 3] in 0..1 (or uint8); landmarks: [68, 2] in frame pixels;
    image_size: (H, W) of the frame (default: the map's own size).
    Returns (normals float32 [res, res, 3] unit GL-axes vectors (0 where invalid), valid bool
    [res, res], square [3] = (x0, y0, side) of the crop in frame pixels).
    """
    import cv2

    nm = np.asarray(normal_map)
    if nm.ndim != 3 or nm.shape[-1] < 3:
        raise ExpPortraitError(f"A normal map must be [H, W, 3]; got shape {nm.shape}.")
    nm = nm[..., :3].astype(np.float32)
    if nm.max() > 1.5:
        nm = nm / 255.0
    h, w = nm.shape[:2]
    H, W = image_size or (h, w)
    s = w / float(W)
    if abs(h / float(H) - s) > 0.02 * s:
        raise ExpPortraitError(f"The normal maps ({w}x{h}) must have the frames' aspect ratio ({W}x{H}).")
    lm = np.asarray(landmarks, np.float64)
    lo, hi = lm.min(0), lm.max(0)
    side = DETAIL_CROP_SCALE * float(max(hi - lo))
    cx, cy = (lo + hi) / 2
    cy -= 0.08 * side  # headroom for the forehead
    x0, y0 = cx - side / 2, cy - side / 2
    k = res / (side * s)
    M = np.array([[k, 0.0, (0.5 - x0 * s) * k - 0.5], [0.0, k, (0.5 - y0 * s) * k - 0.5]])
    crop = cv2.warpAffine(nm, M, (res, res), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    n = crop * 2.0 - 1.0
    norm = np.linalg.norm(n, axis=-1)
    valid = (n[..., 2] > 0.05) & (np.abs(norm - 1.0) < 0.35)
    n = np.where(valid[..., None], n / np.maximum(norm, 1e-6)[..., None], 0.0).astype(np.float32)
    return n, valid, np.array([x0, y0, side], np.float64)


def uniform_laplacian(faces: torch.Tensor, n: int) -> torch.Tensor:
    """Sparse [n, n] uniform Laplacian ``I − D⁻¹A`` of a triangle mesh (faces [F, 3] local ids)."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = torch.cat([e, e.flip(1)])
    e = torch.unique(e, dim=0)
    deg = torch.bincount(e[:, 0], minlength=n).clamp_min(1).float()
    vals = -1.0 / deg[e[:, 0]]
    idx = torch.cat([e.T, torch.arange(n).repeat(2, 1)], 1)
    v = torch.cat([vals, torch.ones(n)])
    return torch.sparse_coo_tensor(idx, v, (n, n), check_invariants=False).coalesce()


class DetailFitter:
    """Collects frames with final parameters and fits their dynamic offsets in small batches.

    The offsets are optimised on the bust's *base* vertices of the face region (the first
    ``len(proxy.bust_vertex_ids)`` proxy vertices) with the base triangles rendered: at the
    detail resolution (≈128² for the face) a base triangle already covers about a pixel, so the
    upsampled mesh would only cost time. The result is upsampled with the proxy's operator B to
    the upsampled face-region vertices (``Motion.dynamic_offsets_index``)."""

    def __init__(self, proxy, identity: Identity, cfg: TrackConfig, normals: Dict[int, tuple]) -> None:
        self.proxy = proxy
        self.cfg = cfg
        self.normals = normals  # frame -> (normals [r, r, 3], valid [r, r], square [3]); filled while streaming
        fw = proxy.face_weight.cpu()
        n_base = int(proxy.bust_vertex_ids.numel())
        self.n_base = n_base
        self.idx_b = torch.nonzero(fw[:n_base] > 0.01)[:, 0]  # face vertices among the base ones
        self.idx = torch.nonzero(fw > 0.01)[:, 0]  # upsampled face vertices (output)
        if len(self.idx_b) < 3:
            raise ExpPortraitError("The head proxy has an empty face region; detail tracking is not possible.")
        local_b = -torch.ones(proxy.v_template.shape[0], dtype=torch.long)
        local_b[proxy.bust_vertex_ids.cpu()] = torch.arange(n_base)
        coarse = local_b[proxy.base_faces.cpu()]
        coarse = coarse[(coarse >= 0).all(1)]  # bust faces, numbered like the first n_base proxy vertices
        local = -torch.ones(n_base, dtype=torch.long)
        local[self.idx_b] = torch.arange(len(self.idx_b))
        f = local[coarse]
        self.faces = f[(f >= 0).all(1)]
        self.L = uniform_laplacian(self.faces, len(self.idx_b))
        self.smooth = None
        if cfg.detail_smoothing > 0:
            try:  # Nicolet et al.'s "large steps" parametrization, shared with the identity fit
                from ..fit.laplacian import SmoothSolve

                self.smooth = SmoothSolve(self.faces.numpy(), len(self.idx_b), cfg.detail_smoothing)
            except ImportError:
                self.smooth = None
        self.betas = identity.betas
        self.static = identity.static_offsets.to(proxy.device)
        self.camera = identity.camera
        self.offsets: Dict[int, torch.Tensor] = {}
        self.queue: List[Tuple[int, torch.Tensor]] = []
        self.frames_done = 0
        self.last_loss: Dict[str, float] = {}

    def upsample(self, delta_b: torch.Tensor) -> torch.Tensor:
        """Base face-region offsets [B, M_b, 3] → upsampled face-region offsets [B, M, 3]."""
        proxy = self.proxy
        B = delta_b.shape[0]
        base = torch.zeros(B, proxy.v_template.shape[0], 3, dtype=delta_b.dtype, device=delta_b.device)
        base[:, proxy.bust_vertex_ids[self.idx_b]] = delta_b
        return proxy.upsample(base)[:, self.idx.to(delta_b.device)]

    def _skin_rotations(self, params, ib: torch.Tensor) -> torch.Tensor:
        """Linear part of the posed position w.r.t. a canonical offset, per vertex: the blended
        skinning rotation times the face mask (the proxy applies dynamic offsets that way)."""
        from smplx.lbs import batch_rigid_transform, batch_rodrigues

        proxy = self.proxy
        B = params.batch_size
        p = params.expand(B)
        base = proxy.shaped_base(p.betas, p.expression)
        J = torch.einsum("jv,bvc->bjc", proxy.J_regressor, base)
        rot = batch_rodrigues(proxy.full_pose(p).reshape(-1, 3)).view(B, -1, 3, 3)
        _, A = batch_rigid_transform(rot, J, proxy.parents)
        R = torch.einsum("nk,bkij->bnij", proxy.skin_weights[ib], A[:, proxy.skin_joints, :3, :3])
        return R * proxy.face_weight[ib][None, :, None, None]

    def process(self, start: int, theta: torch.Tensor, rig, global_orient) -> None:
        for i in range(theta.shape[0]):
            if (start + i) in self.normals:
                self.queue.append((start + i, theta[i]))
        while len(self.queue) >= self.cfg.detail_batch:
            batch = self.queue[: self.cfg.detail_batch]
            del self.queue[: self.cfg.detail_batch]
            self._fit(batch, rig, global_orient)

    def flush(self, rig, global_orient) -> None:
        if self.queue:
            self._fit(self.queue, rig, global_orient)
            self.queue = []

    def _fit(self, batch, rig, global_orient) -> None:
        from .pipeline import torch_threads

        with torch_threads(self.cfg.detail_threads):
            self._fit_batch(batch, rig, global_orient)

    @autograd_enabled
    def _fit_batch(self, batch, rig, global_orient) -> None:
        from ..render import Camera, render_normals

        cfg = self.cfg
        proxy = self.proxy
        dev = proxy.device
        frames = [b[0] for b in batch]
        theta = torch.stack([b[1] for b in batch])
        B = len(frames)
        params = rig.params_from_theta(theta, self.betas, global_orient, proxy.num_expression).to(dev)
        ib = self.idx_b.to(dev)
        with torch.no_grad():
            V_full = proxy(params, self.static).vertices
            V0 = V_full[:, ib]
            G = self._skin_rotations(params, ib)  # [B, M_b, 3, 3]: d posed / d Δ (skinning × face mask)
        r = cfg.detail_resolution
        tgt = torch.stack([torch.from_numpy(self.normals[f][0]) for f in frames]).to(dev)
        valid = torch.stack([torch.from_numpy(self.normals[f][1]) for f in frames]).to(dev)
        sq = np.stack([self.normals[f][2] for f in frames])
        g = lambda k: float(self.camera[k].reshape(-1)[0])  # noqa: E731
        s = torch.tensor(r / sq[:, 2], dtype=torch.float32)
        cam = Camera(fx=g("fx") * s, fy=g("fy") * s, cx=(g("cx") - torch.tensor(sq[:, 0], dtype=torch.float32)) * s,
                     cy=(g("cy") - torch.tensor(sq[:, 1], dtype=torch.float32)) * s,
                     R=self.camera["R"].float(), t=self.camera["t"].float(), width=r, height=r)
        faces = self.faces.to(dev)
        with torch.no_grad():
            # Discretisation correction: the base mesh's interpolated normals differ from the
            # upsampled mesh's by ~0.015 (L1); subtract that difference (rendered once at Δ = 0)
            # so the offsets explain only what the personalized mesh does not already show.
            fine = render_normals(V_full, proxy.faces, cam)
            coarse = render_normals(V0, faces, cam)
            both = (fine.mask > 0.5) & (coarse.mask > 0.5) & (fine.face_id >= 0)
            tgt = torch.where(both[..., None], tgt - (fine.normals - coarse.normals), tgt)
            del V_full, fine, coarse
        Mb = len(self.idx_b)
        u = torch.zeros(Mb, 3 * B, device=dev, requires_grad=True)  # Δ = S⁻¹ u, columns = (frame, axis)

        def field() -> torch.Tensor:
            x = self.smooth.solve(u) if self.smooth is not None else u
            return x.view(Mb, B, 3).permute(1, 0, 2)

        opt = torch.optim.Adam([u], lr=cfg.detail_lr)
        L = self.L.to(dev)
        for _ in range(cfg.detail_iters):
            opt.zero_grad()
            delta = field()
            n = delta.norm(dim=-1, keepdim=True)
            delta = delta * torch.clamp(cfg.detail_max_offset / n.clamp_min(1e-12), max=1.0)
            verts = V0 + (G @ delta[..., None])[..., 0]
            out = render_normals(verts, faces, cam)
            m = (out.mask > 0.5) & valid
            diff = (out.normals - tgt).abs().sum(-1)
            l_n = diff[m].mean() if bool(m.any()) else diff.sum() * 0.0
            l_mag = (delta**2).sum(-1).mean()
            lap = torch.sparse.mm(L, delta.permute(1, 0, 2).reshape(Mb, -1))
            l_lap = (lap**2).sum() / (B * Mb)
            loss = cfg.w_detail_normal * l_n + cfg.w_detail_magnitude * l_mag + cfg.w_detail_laplacian * l_lap
            loss.backward()
            opt.step()
        if cfg.detail_iters > 0:
            self.last_loss = {"normal": float(l_n.detach()), "magnitude": float(l_mag.detach()), "laplacian": float(l_lap.detach())}
        with torch.no_grad():
            delta = field()
            n = delta.norm(dim=-1, keepdim=True)
            delta = delta * torch.clamp(cfg.detail_max_offset / n.clamp_min(1e-12), max=1.0)
            up = self.upsample(delta).cpu()
        for b, f in enumerate(frames):
            self.offsets[f] = up[b]
            self.normals.pop(f, None)  # release the target
        self.frames_done += B

    def result(self, identity: Identity, lost: np.ndarray):
        """(dynamic_offsets [T, M, 3], index [M], identity with the temporal mean moved into its
        static offsets). Frames without a normal map or lost get interpolated offsets."""
        T = len(lost)
        M = len(self.idx)
        have = np.zeros(T, bool)
        for f in self.offsets:
            if f < T:
                have[f] = True
        if not have.any():
            return None, None, identity
        out = torch.zeros(T, M, 3)
        for f, d in self.offsets.items():
            if f < T:
                out[f] = d
        if self.cfg.detail_zero_mean:
            mean = out[torch.from_numpy(have)].mean(0)
            out[torch.from_numpy(have)] -= mean
            static = identity.static_offsets.clone()
            static[self.idx] += self.proxy.face_weight.cpu()[self.idx, None] * mean
            identity = Identity(betas=identity.betas, static_offsets=static, params=identity.params, camera=identity.camera,
                                image_size=identity.image_size, model=identity.model, name=identity.name,
                                embedding=identity.embedding)
        if not have.all():
            from .pipeline import _bridge

            out = torch.from_numpy(_bridge(out.numpy().reshape(T, -1), ~have, interpolate=True).reshape(T, M, 3))
        return out, self.idx.clone(), identity
