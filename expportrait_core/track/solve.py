"""Batched per-frame Levenberg–Marquardt solve of the tracking unknowns from 2D landmarks.

Per frame ``t`` (all frames of a chunk at once, each with its own damping and accept/reject):

    E_t(θ) = Σ_i w_i ρ(|π_i(θ) − y_i| / σ) + Σ_rows w_row (Δπ_row(θ) − Δy_row)² / σ² + Σ_d P_d θ_d²

with ``ρ`` the Cauchy function (scale ``robust_scale``) applied by iteratively re-weighting,
``σ = landmark_sigma × face size``, the *rows* the vertical eyelid openings and the inner lip gap
(differences of two landmarks: blinks and lip closure are a few pixels and would otherwise drown
in the rigid residual), and ``P`` the priors on jaw and expression. Two stages: (1) rotation and
translation on the stable points (eye corners and nose), (2) everything with the rigid result as
the start. Jaw opening is kept in ``[0, jaw_max_open]``, expression within ±``expression_max``.

The solve returns ``θ̂_t`` and the Gauss–Newton Hessian ``H_t = JᵀWJ + P`` at ``θ̂_t``: the
temporal smoother (:mod:`.smooth`) uses ``(θ̂_t, H_t)`` as each frame's quadratic data term, so
directions the landmarks determine well stay close to the data while poorly determined ones are
smoothed more.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .config import TrackConfig
from .rig import EXPR0, JAW, ROT, TRANSL, TrackRig

# iBUG-68 points that do not move with expression: nose bridge/base and the eye corners.
STABLE_POINTS = np.array([27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45])
# (upper, lower) pairs whose vertical difference is an extra residual row.
EYELID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))
LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
CONTOUR = np.arange(17)
CHIN = np.arange(6, 11)
SUBJECT_RIGHT_CONTOUR = np.arange(0, 8)  # image left
SUBJECT_LEFT_CONTOUR = np.arange(9, 17)  # image right


@dataclass
class SolveResult:
    """theta: [B, D]; H: [B, D, D] Hessian of the per-frame objective at theta;
    rms: [B] RMS landmark residual in σ units (unweighted, over points with weight > 0);
    uv: [B, 68, 2] fitted projections (px)."""

    theta: torch.Tensor
    H: torch.Tensor
    rms: torch.Tensor
    uv: torch.Tensor


def prior_diag(rig: TrackRig, cfg: TrackConfig) -> torch.Tensor:
    """[D] diagonal prior weights P (rotation/translation get a tiny ridge for conditioning)."""
    P = torch.full((rig.dim,), 1e-6, dtype=rig.dtype)
    P[JAW] = torch.tensor([cfg.w_jaw_open, cfg.w_jaw_side, cfg.w_jaw_side], dtype=rig.dtype)
    P[EXPR0:] = cfg.w_expression
    return P


def profile_weights(R_head: torch.Tensor, rig: TrackRig, falloff_deg: float) -> torch.Tensor:
    """[B, 68] factors fading out the contour side turned away from the camera.

    A head yaw towards the subject's left (+y rotation: the face turns to image right) hides the
    subject's left cheek, whose contour points (9..16) then sit on the silhouette."""
    B = R_head.shape[0]
    w = torch.ones(B, 68, dtype=rig.dtype)
    if falloff_deg <= 0:
        return w
    R = rig.cam["R"] @ R_head  # head orientation in camera axes
    fwd = -R[:, :, 2]  # the face's +z, seen from the camera (OpenCV: towards the camera is -z)
    yaw = torch.atan2(fwd[:, 0], fwd[:, 2].abs().clamp_min(1e-6)) * 180.0 / math.pi  # + = face turns to image right
    fade = (1.0 - yaw.abs() / falloff_deg).clamp(0.15, 1.0)
    right_turn = yaw > 0
    w[:, SUBJECT_LEFT_CONTOUR] = torch.where(right_turn[:, None], fade[:, None], w[:, SUBJECT_LEFT_CONTOUR])
    w[:, SUBJECT_RIGHT_CONTOUR] = torch.where(~right_turn[:, None], fade[:, None], w[:, SUBJECT_RIGHT_CONTOUR])
    return w


def _select(ok: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame choice between two batched tensors (``ok: [B]`` bool)."""
    return torch.where(ok.view(-1, *([1] * (a.dim() - 1))), a, b)


class LandmarkSolver:
    """Batched LM solver for one rig. y: [B, 68, 2] px; w: [B, 68] landmark weights."""

    def __init__(self, rig: TrackRig, cfg: TrackConfig, face_size: float) -> None:
        self.rig = rig
        self.cfg = cfg
        self.sigma = max(1e-6, cfg.landmark_sigma * float(face_size))
        self.P = prior_diag(rig, cfg)
        base = torch.ones(68, dtype=rig.dtype)
        base[CONTOUR] = cfg.contour_weight
        base[CHIN] = cfg.chin_weight  # the chin follows the jaw: the cue that tells jaw from lip motion
        self.base_w = base
        self.stable_mask = torch.zeros(68, dtype=rig.dtype)
        self.stable_mask[STABLE_POINTS] = 1.0
        self.rows = [(a, b, cfg.eyelid_weight) for a, b in EYELID_PAIRS] + [(a, b, cfg.lip_gap_weight) for a, b in LIP_PAIRS]

    # --------------------------------------------------------------------------------------
    def _residuals(self, theta, y, w, stage: str, need_jac: bool = True):
        """Weighted residuals e [B, R], Jacobian J [B, R, D], robust cost [B], raw rms [B], eval."""
        rig, cfg = self.rig, self.cfg
        ev = rig.evaluate(theta)
        uv = ev.uv[:, :68]
        d = (uv - y) / self.sigma  # [B, 68, 2]
        ww = w * self.base_w * profile_weights(ev.R_head, rig, cfg.profile_falloff_deg)
        if stage == "rigid":
            ww = ww * self.stable_mask
        norm = d.norm(dim=-1)
        # Cauchy loss k² log(1 + s²/k²): quadratic for small residuals, redescending influence for
        # outliers (an occluded or mis-detected landmark 20σ away keeps ~2 % weight). The rigid stage
        # uses a 4× wider scale so a poor start is not mistaken for outliers.
        k = cfg.robust_scale * (4.0 if stage == "rigid" else 1.0)
        q = (norm / k) ** 2
        cost = (ww * k * k * torch.log1p(q)).sum(-1)
        sw = (ww / (1.0 + q)).clamp_min(0).sqrt()  # IRLS weights
        e = (d * sw[..., None]).reshape(theta.shape[0], -1)
        valid = (w > 0).to(d.dtype)
        rms = ((norm**2 * valid).sum(-1) / valid.sum(-1).clamp_min(1)).sqrt()
        J = None
        if need_jac:
            Jl = rig.jacobian(theta, ev, rigid_only=stage == "rigid") / self.sigma  # [B, 68, 2, D]
            J = (Jl * sw[..., None, None]).reshape(theta.shape[0], -1, rig.dim)
        if stage == "full" and self.rows:
            a = torch.tensor([r[0] for r in self.rows])
            b = torch.tensor([r[1] for r in self.rows])
            rw = torch.tensor([r[2] for r in self.rows], dtype=rig.dtype)
            pw = (w[:, a] * w[:, b]).clamp_min(0).sqrt() * rw  # [B, R]
            dr = (d[:, a, 1] - d[:, b, 1])  # vertical opening residual
            er = dr * pw.sqrt()
            e = torch.cat([e, er], 1)
            cost = cost + (pw * dr**2).sum(-1)
            if need_jac:
                Jr = (Jl[:, a, 1] - Jl[:, b, 1]) * pw.sqrt()[..., None]
                J = torch.cat([J, Jr], 1)
        cost = cost + (self.P * theta**2).sum(-1)
        return e, J, cost, rms, ev

    def _constrain(self, theta: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        th = theta.clone()
        th[:, 6] = th[:, 6].clamp(0.0, cfg.jaw_max_open)
        th[:, EXPR0:] = th[:, EXPR0:].clamp(-cfg.expression_max, cfg.expression_max)
        return th

    def _lm(self, theta, y, w, stage: str, iters: int) -> torch.Tensor:
        D = self.rig.dim
        free = torch.zeros(D, dtype=torch.bool)
        if stage == "rigid":
            free[ROT] = True
            free[TRANSL] = True
        else:
            free[:] = True
        fi = free.nonzero()[:, 0]
        B = theta.shape[0]
        mu = torch.full((B,), self.cfg.lm_damping, dtype=self.rig.dtype)
        cur = self._residuals(theta, y, w, stage)[:4]
        Pf = self.P[fi]
        for _ in range(iters):
            e, J, cost, _ = cur
            Jf = J[..., fi]
            A = Jf.transpose(1, 2) @ Jf + torch.diag_embed(Pf.expand(B, -1))
            g = (Jf.transpose(1, 2) @ e[..., None])[..., 0] + Pf * theta[:, fi]
            diag = torch.diagonal(A, dim1=1, dim2=2)
            step = torch.linalg.solve(A + torch.diag_embed(mu[:, None] * diag + 1e-9), -g[..., None])[..., 0]
            cand = theta.clone()
            cand[:, fi] = theta[:, fi] + step
            cand = self._constrain(cand)
            new = self._residuals(cand, y, w, stage)[:4]
            ok = torch.isfinite(new[2]) & (new[2] <= cost)
            theta = _select(ok, cand, theta)
            cur = tuple(_select(ok, a, b) for a, b in zip(new, cur))
            mu = torch.where(ok, mu / 3.0, mu * 5.0).clamp(1e-7, 1e7)
        return theta

    def solve(self, y: torch.Tensor, w: torch.Tensor, theta0: torch.Tensor, rigid_iters: Optional[int] = None,
              full_iters: Optional[int] = None) -> SolveResult:
        """Warm-started two-stage solve. y: [B, 68, 2]; w: [B, 68]; theta0: [B, D]."""
        y = y.to(self.rig.dtype)
        w = w.to(self.rig.dtype)
        th = self._constrain(theta0.to(self.rig.dtype))
        th = self._lm(th, y, w, "rigid", self.cfg.rigid_iters if rigid_iters is None else rigid_iters)
        th = self._lm(th, y, w, "full", self.cfg.full_iters if full_iters is None else full_iters)
        e, J, cost, rms, ev = self._residuals(th, y, w, "full")
        H = J.transpose(1, 2) @ J + torch.diag(self.P)
        return SolveResult(theta=th, H=H, rms=rms, uv=ev.uv[:, :68])

    # --------------------------------------------------------------------------------------
    def initial_guess(self, y: torch.Tensor, w: torch.Tensor, yaws_deg) -> torch.Tensor:
        """[B, Y, D] starts for each frame and yaw hypothesis: rotation about the vertical axis,
        translation placing the neutral landmarks' centroid and spread on the detected ones."""
        rig = self.rig
        B = y.shape[0]
        Y = len(yaws_deg)
        th = torch.zeros(B * Y, rig.dim, dtype=rig.dtype)
        yaws = torch.tensor([math.radians(a) for a in yaws_deg], dtype=rig.dtype).repeat(B)
        th[:, 1] = yaws
        ev = rig.evaluate(th)
        X = ev.X[:, 17:]  # static points (contour depends on yaw)
        yy = y.to(rig.dtype).repeat_interleave(Y, 0)[:, 17:]
        ww = w.to(rig.dtype).repeat_interleave(Y, 0)[:, 17:].clamp_min(0) + 1e-9
        c = rig.cam
        Xc = X @ c["R"].T + c["t"]
        wn = ww / ww.sum(-1, keepdim=True)
        mc = (Xc * wn[..., None]).sum(1)
        spread_m = (((Xc[..., :2] - mc[:, None, :2]) ** 2).sum(-1) * wn).sum(-1).sqrt()
        my = (yy * wn[..., None]).sum(1)
        spread_px = (((yy - my[:, None]) ** 2).sum(-1) * wn).sum(-1).sqrt()
        z = c["fx"] * spread_m / spread_px.clamp_min(1e-6)
        target = torch.stack([(my[:, 0] - c["cx"]) * z / c["fx"], (my[:, 1] - c["cy"]) * z / c["fy"], z], -1)
        # camera-space shift → world translation (R is a rotation)
        th[:, TRANSL] = (target - mc) @ c["R"]
        return th.view(B, Y, rig.dim)

    def solve_from_scratch(self, y: torch.Tensor, w: torch.Tensor) -> SolveResult:
        """Multi-hypothesis solve (no warm start): every yaw in ``init_yaws_deg``, best kept."""
        cfg = self.cfg
        B = y.shape[0]
        yaws = cfg.init_yaws_deg or (0.0,)
        th0 = self.initial_guess(y, w, yaws)
        Y = th0.shape[1]
        yr = y.repeat_interleave(Y, 0)
        wr = w.repeat_interleave(Y, 0)
        res = self.solve(yr, wr, th0.reshape(B * Y, -1), rigid_iters=max(8, cfg.rigid_iters * 2),
                         full_iters=max(6, cfg.full_iters + 2))
        best = res.rms.view(B, Y).argmin(1)
        sel = torch.arange(B) * Y + best
        return SolveResult(theta=res.theta[sel], H=res.H[sel], rms=res.rms[sel], uv=res.uv[sel])
