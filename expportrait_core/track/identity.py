"""Per-clip setup: the driving subject's identity (shape, static offsets, camera), fitted once.

Keyframes are chosen among the first frames with a face for diversity (farthest-point sampling on
landmark configurations normalised for position and scale, starting from the most typical one),
then the shared identity is fitted with :func:`expportrait_core.fit.fit_shared_identity`
(landmarks only: no static offsets without dense targets). When the fitting package is missing
or fails, a built-in landmark-only keyframe fit is used: alternating per-keyframe pose/expression
solves (the tracker's own solver) and a Gauss–Newton step on the shared shape coefficients.

Camera convention (shared with identity fitting): rotation ``framing.FRONT_R``, focal length from
the vertical field of view, centred principal point, camera on the axis through the rest-pose
face at the distance where the model's face has the detected size; ``transl`` absorbs the rest.
"""
from __future__ import annotations

import logging
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ExpPortraitError
from ..io.files import Identity
from .config import TrackConfig

log = logging.getLogger(__name__)


def face_size(landmarks: np.ndarray) -> float:
    """Diagonal of the landmark bounding box (px). landmarks: [68, 2]."""
    p = np.asarray(landmarks, np.float64)
    return float(np.linalg.norm(p.max(0) - p.min(0)))


def choose_keyframes(landmarks: Sequence[np.ndarray], k: int) -> List[int]:
    """Indices of ``k`` diverse near-neutral frames (see module docstring). landmarks: list of [68, 2].

    Only frames whose inner-lip gap and nose-to-chin length are at most their medians are
    candidates (a closed mouth with the jaw at rest — lips can also stay closed while the jaw
    drops), so the face's proportions go into the shape and not into a half-open jaw; then
    farthest-point sampling picks varied head poses among them."""
    from .metrics import mouth_gap

    n = len(landmarks)
    if n <= k:
        return list(range(n))
    L = np.stack([np.asarray(l, np.float64) for l in landmarks])
    gap = mouth_gap(L)
    iod = np.linalg.norm(L[:, 36] - L[:, 45], axis=-1).clip(1e-6)
    length = np.linalg.norm(L[:, 8] - L[:, 27], axis=-1) / iod  # nose bridge to chin: grows when the jaw drops
    closed = gap <= np.median(gap) + 1e-9
    for cand in (np.nonzero(closed & (length <= np.median(length) + 1e-9))[0], np.nonzero(closed)[0]):
        if len(cand) >= k:
            return sorted(int(cand[i]) for i in _farthest(L[cand], k))
    return sorted(int(i) for i in _farthest(L, k))


def _farthest(L: np.ndarray, k: int) -> List[int]:
    n = len(L)
    L = L - L.mean(1, keepdims=True)
    L = L / np.sqrt((L**2).sum((1, 2), keepdims=True)).clip(1e-9)
    flat = L.reshape(n, -1)
    med = np.median(flat, 0)
    first = int(np.argmin(((flat - med) ** 2).sum(1)))
    chosen = [first]
    d = ((flat - flat[first]) ** 2).sum(1)
    while len(chosen) < min(k, n):
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, ((flat - flat[nxt]) ** 2).sum(1))
    return chosen


def default_camera(proxy, betas: torch.Tensor, landmarks: Sequence[np.ndarray], image_size: Tuple[int, int],
                   fov_y_deg: float) -> dict:
    """The frontal camera of the module docstring for a face of the detected size."""
    from ..head.framing import FRONT_R

    H, W = image_size
    f = 0.5 * H / math.tan(math.radians(fov_y_deg) / 2)
    with torch.no_grad():
        lm = proxy(proxy.zero_params(1).replace(betas=betas.reshape(1, -1).to(proxy.device))).landmarks[0].double().cpu().numpy()
    model_size = float(np.linalg.norm(lm[:, :2].max(0) - lm[:, :2].min(0)))
    img_size = float(np.median([face_size(l) for l in landmarks]))
    dist = f * model_size / max(img_size, 1e-6)
    c = lm.mean(0)
    eye = np.array([c[0], c[1], c[2] + dist])
    R = FRONT_R.double()
    t = -R @ torch.tensor(eye)
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return {"fx": one(f), "fy": one(f), "cx": one(W / 2), "cy": one(H / 2), "R": R.float(), "t": t.float()}


def fit_identity_builtin(proxy, landmarks: List[np.ndarray], weights: List[np.ndarray], image_size: Tuple[int, int],
                         cfg: TrackConfig) -> Tuple[Identity, float]:
    """Landmark-only keyframe fit of betas (shared) + per-keyframe pose/expression.

    Returns (identity, RMS landmark error in px)."""
    from .rig import TrackRig
    from .solve import LandmarkSolver

    nb = int(min(cfg.identity_num_betas, proxy.num_betas))
    # Keyframes are near-neutral (closed mouths, see choose_keyframes): strong jaw and expression
    # priors make the shape coefficients, not a half-open jaw, explain the face's proportions.
    cfg = cfg.with_(w_jaw_open=cfg.identity_w_jaw, w_expression=cfg.identity_w_expression)
    K = len(landmarks)
    y = torch.tensor(np.stack(landmarks), dtype=torch.float64)
    w = torch.tensor(np.stack(weights), dtype=torch.float64)
    fs = float(np.median([face_size(l) for l in landmarks]))
    betas = torch.zeros(nb, dtype=torch.float64)
    go = torch.zeros(3)
    camera = default_camera(proxy, betas.float(), landmarks, image_size, cfg.fov_y_deg)
    w_betas = 0.5  # ridge on the shape coefficients (unit-variance PCA space)
    theta = None
    outer = max(2, cfg.identity_fit_iters // 5)
    for _ in range(outer):
        rig = TrackRig(proxy, betas.float()[None], None, go, camera, cfg.num_expression, shape_basis=True)
        solver = LandmarkSolver(rig, cfg, fs)
        res = solver.solve_from_scratch(y, w) if theta is None else solver.solve(y, w, theta)
        theta = res.theta
        # Gauss–Newton on the shape with the per-keyframe unknowns fixed (finite differences).
        h = 1e-4
        b0 = rig.betas0
        steps = torch.eye(nb, dtype=torch.float64) * h
        bb = torch.cat([b0[None], b0[None] + steps, b0[None] - steps])  # [1 + 2nb, nb]
        th_rep = theta.repeat(bb.shape[0], 1)
        b_rep = bb.repeat_interleave(K, 0)
        ev = rig.evaluate(th_rep, bins=None, betas=b_rep)
        uv = ev.uv[:, :68].view(bb.shape[0], K, 68, 2)
        sw = (w * solver.base_w).sqrt()[None, ..., None] / solver.sigma
        r0 = ((uv[0] - y) * sw[0]).reshape(-1)
        Jb = ((uv[1 : 1 + nb] - uv[1 + nb :]) / (2 * h) * sw).reshape(nb, -1).T  # [R, nb]
        A = Jb.T @ Jb + w_betas * torch.eye(nb, dtype=torch.float64)
        g = Jb.T @ r0 + w_betas * b0
        betas = b0 - torch.linalg.solve(A, g)
    static = torch.zeros(proxy.num_vertices, 3)
    for it in range(1 + max(0, cfg.identity_offset_iters)):
        rig = TrackRig(proxy, betas.float()[None], static, go, camera, cfg.num_expression)
        solver = LandmarkSolver(rig, cfg, fs)
        res = solver.solve(y, w, theta) if theta is not None else solver.solve_from_scratch(y, w)
        theta = res.theta
        if it == cfg.identity_offset_iters:
            break
        static = static + landmark_static_offsets(proxy, rig, theta, y, w * solver.base_w, betas.float(), static, cfg)
    err = float(torch.sqrt(((res.uv - y) ** 2).sum(-1).mean()))
    full_betas = torch.zeros(1, proxy.num_betas)
    full_betas[0, :nb] = betas.float()
    params = rig.params_from_theta(res.theta[:1], full_betas, go, proxy.num_expression)
    ident = Identity(betas=full_betas, static_offsets=static, params=params,
                     camera=camera, image_size=tuple(int(s) for s in image_size), model=proxy.describe(),
                     name="driving")
    return ident, err


def landmark_static_offsets(proxy, rig, theta: torch.Tensor, y: torch.Tensor, w: torch.Tensor, betas: torch.Tensor,
                            static: torch.Tensor, cfg: TrackConfig) -> torch.Tensor:
    """Static offsets (a smooth field [N_s, 3]) that move the landmarks toward what the keyframes show.

    The shape space (especially of a stylized or generic head) cannot match every face's
    proportions; what remains after the shape fit is, per landmark, a consistent residual across
    keyframes. It is lifted to a canonical 3-D displacement (in the image plane at the landmark's
    depth, rotated back by the landmark's skinning rotation), averaged over keyframes (weighted),
    shrunk by ``identity_offset_shrink``, and spread to the mesh with Gaussian radial basis
    functions of radius ``identity_offset_radius`` that interpolate it at the landmarks (paper
    §2: the static offset holds the identity geometry the shape space misses).
    theta: [K, D]; y: [K, 68, 2]; w: [K, 68]. Returns the *increment* to add to ``static``."""
    ev = rig.evaluate(theta)
    r = y - ev.uv[:, :68]
    Xc = ev.Xc[:, :68]
    c = rig.cam
    dXc = torch.stack([r[..., 0] * Xc[..., 2] / c["fx"], r[..., 1] * Xc[..., 2] / c["fy"], torch.zeros_like(r[..., 0])], -1)
    dX = dXc @ c["R"]  # camera → world (Rᵀ applied to row vectors)
    dp = torch.einsum("knji,knj->kni", ev.Mb[:, :68], dX)  # world → canonical (inverse skinning rotation)
    ww = w.clamp_min(0)[..., None]
    off = (dp * ww).sum(0) / ww.sum(0).clamp_min(1e-9) * cfg.identity_offset_shrink  # [68, 3]
    n = off.norm(dim=-1, keepdim=True)
    off = off * torch.clamp(0.02 / n.clamp_min(1e-12), max=1.0)
    # canonical landmark positions (frontal contour row) and of all proxy vertices
    idx = rig.point_index(torch.zeros(1, dtype=torch.long))[0]
    ck = rig.points0[idx]  # [68, 3]
    with torch.no_grad():
        cv = proxy.neutral(betas.reshape(1, -1).to(proxy.device), static.to(proxy.device))[0].double().cpu()
    s2 = 2.0 * cfg.identity_offset_radius**2
    Phi = torch.exp(-torch.cdist(ck, ck) ** 2 / s2)
    a = torch.linalg.solve(Phi + 1e-3 * torch.eye(68, dtype=Phi.dtype), off)
    field = torch.exp(-torch.cdist(cv, ck) ** 2 / s2) @ a  # [N_s, 3]
    return field.float()


def fit_driving_identity(proxy, frames: List[Optional[np.ndarray]], landmarks: List[np.ndarray], weights: List[np.ndarray],
                         image_size: Tuple[int, int], cfg: TrackConfig) -> Tuple[Identity, dict]:
    """The driving identity from keyframes (fitting package, or the built-in fit as fallback).

    Returns (identity, info) where info has ``method``, ``keyframe_error_px`` and a ``warning``
    when the fallback was used because the fitting package failed."""
    info: dict = {}
    if cfg.use_fit_module:
        try:
            from ..fit import FitConfig, fit_shared_identity
        except ImportError as exc:  # the fitting package is optional for tracking
            info["warning"] = f"expportrait_core.fit unavailable ({exc}); used the built-in keyframe fit"
        else:
            fcfg = FitConfig.preset("fast", fit_static_offsets=False, fov_y_deg=cfg.fov_y_deg,
                                    num_fit_expression=min(cfg.num_expression, proxy.num_expression))
            try:
                res = fit_shared_identity(proxy, [None] * len(landmarks), list(landmarks), landmark_weights=list(weights),
                                          config=fcfg, image_size=tuple(image_size))
            except ExpPortraitError:
                raise
            except Exception as exc:  # keep tracking usable if the fitter has a bug on odd input
                info["warning"] = f"fit_shared_identity failed ({type(exc).__name__}: {exc}); used the built-in keyframe fit"
                log.warning("%s", info["warning"])
            else:
                ident = res.identity
                ident.name = ident.name or "driving"
                info["method"] = "fit_shared_identity"
                errs = res.per_image_landmark_error_px or [res.landmark_error_px]
                info["keyframe_error_px"] = float(np.mean(errs))
                return ident, info
    ident, err = fit_identity_builtin(proxy, landmarks, weights, image_size, cfg)
    info["method"] = "builtin"
    info["keyframe_error_px"] = err
    return ident, info
