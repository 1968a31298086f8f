"""A synthetic driving sequence with known ground truth, for tests and benchmarks.

The head proxy performs smooth, known trajectories — head turns up to ±``max_yaw_deg``, nods and
tilts, two jaw openings, three blinks, a smile that rises, holds and falls, a brow raise and a
small translation drift — and the landmarks of the full proxy (not the tracker's landmark model)
are projected with a portrait camera, plus Gaussian pixel noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch

from ..head.params import HeadParams
from ..io.files import Identity


@dataclass
class SyntheticSequence:
    """params: ground-truth HeadParams [T]; identity: the subject (betas, zero static offsets,
    camera); landmarks: [T, 68, 2] noisy projections (px); clean: [T, 68, 2] exact projections;
    image_size: (H, W); fps; expression_index: named expression coefficients driven here."""

    params: HeadParams
    identity: Identity
    landmarks: np.ndarray
    clean: np.ndarray
    image_size: Tuple[int, int]
    fps: float
    expression_index: Dict[str, int]


def _bump(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Smooth 0→1→0 bump (raised cosine) of total ``width`` frames."""
    x = (t - centre) / (width / 2)
    return np.where(np.abs(x) < 1, 0.5 * (1 + np.cos(np.pi * x)), 0.0)


def _ramp(t: np.ndarray, a: float, b: float) -> np.ndarray:
    x = np.clip((t - a) / max(b - a, 1e-9), 0, 1)
    return x * x * (3 - 2 * x)


def expression_names(proxy) -> Dict[str, int]:
    """Indices of the smile, blinks and brow raise (the synthetic model's names when available)."""
    try:
        from ..head.synthetic import SYNTHETIC_EXPRESSION_NAMES as names
    except Exception:  # the generated model is optional here
        names = {}
    if proxy.synthetic and names:
        return {k: names[k] for k in ("smile", "blink_left", "blink_right", "brow_raise") if k in names}
    return {"smile": 0, "blink_left": 1, "blink_right": 2, "brow_raise": 3}


def make_synthetic_sequence(proxy, num_frames: int = 120, fps: float = 30.0, image_size: Tuple[int, int] = (512, 512),
                            noise_px: float = 1.0, max_yaw_deg: float = 30.0, seed: int = 0,
                            still_frames: int = 0) -> SyntheticSequence:
    """Generate the sequence of the module docstring. ``still_frames`` appends a held pose at the end
    (useful to measure jitter on a still segment)."""
    from ..head.framing import portrait_camera_params

    g = np.random.default_rng(seed)
    T = int(num_frames)
    t = np.arange(T, dtype=np.float64)
    H, W = image_size
    names = expression_names(proxy)
    nb, ne = proxy.num_betas, proxy.num_expression
    betas = torch.zeros(1, nb)
    betas[0, :10] = torch.from_numpy(g.normal(0, 0.6, 10)).float()
    period = T
    yaw = np.radians(max_yaw_deg) * np.sin(2 * np.pi * t / period)
    pitch = np.radians(8.0) * np.sin(2 * np.pi * 2 * t / period + 0.7)
    roll = np.radians(5.0) * np.sin(2 * np.pi * t / period + 1.9)
    rot = np.stack([pitch, yaw, roll], 1)
    jaw = np.zeros((T, 3))
    jaw[:, 0] = 0.28 * _bump(t, 0.18 * T, 0.2 * T) + 0.2 * _bump(t, 0.62 * T, 0.16 * T)
    expr = np.zeros((T, ne))
    blink = sum(_bump(t, c * T, 6) for c in (0.12, 0.45, 0.8))
    expr[:, names["blink_left"]] = 1.0 * blink
    expr[:, names["blink_right"]] = 1.0 * blink
    expr[:, names["smile"]] = 1.5 * (_ramp(t, 0.3 * T, 0.45 * T) - _ramp(t, 0.8 * T, 0.92 * T))
    expr[:, names["brow_raise"]] = 1.0 * _bump(t, 0.55 * T, 0.25 * T)
    transl = np.stack([0.01 * np.sin(2 * np.pi * t / period + 0.3), 0.006 * np.sin(2 * np.pi * t / period * 1.5),
                       0.01 * np.sin(2 * np.pi * t / period * 0.5)], 1)
    if still_frames:
        S = int(still_frames)
        hold = lambda a: np.concatenate([a, np.repeat(a[-1:], S, 0)])  # noqa: E731
        rot, jaw, expr, transl = hold(rot), hold(jaw), hold(expr), hold(transl)
        T += S
    go = torch.tensor([[0.0, 0.05, 0.0]])
    f = lambda a: torch.from_numpy(np.asarray(a)).float()  # noqa: E731
    params = HeadParams(
        betas=betas.expand(T, -1).clone(), expression=f(expr), global_orient=go.expand(T, 3).clone(),
        neck_pose=f(rot / 2), head_pose=f(rot / 2), jaw_pose=f(jaw), leye_pose=torch.zeros(T, 3),
        reye_pose=torch.zeros(T, 3), transl=f(transl))
    with torch.no_grad():
        lm0 = proxy(proxy.zero_params(1).replace(betas=betas, global_orient=go)).landmarks[0].cpu()
    head_h = float(lm0[:, 1].max() - lm0[:, 1].min()) * 1.9
    camera = portrait_camera_params(lm0.mean(0), head_h, W, H)
    lms = []
    with torch.no_grad():
        for s in range(0, T, 32):
            out = proxy(params.index(slice(s, min(T, s + 32))).to(proxy.device))
            X = out.landmarks.double().cpu()
            Xc = X @ camera["R"].double().T + camera["t"].double()
            uv = torch.stack([camera["fx"].double() * Xc[..., 0] / Xc[..., 2] + camera["cx"].double(),
                              camera["fy"].double() * Xc[..., 1] / Xc[..., 2] + camera["cy"].double()], -1)
            lms.append(uv.numpy())
    clean = np.concatenate(lms)
    noisy = clean + g.normal(0, noise_px, clean.shape)
    ident = Identity(betas=betas, static_offsets=torch.zeros(proxy.num_vertices, 3), params=params.index(0),
                     camera=camera, image_size=(H, W), model=proxy.describe(), name="synthetic")
    return SyntheticSequence(params=params, identity=ident, landmarks=noisy.astype(np.float32),
                             clean=clean.astype(np.float32), image_size=(H, W), fps=float(fps), expression_index=names)


def rotation_error_deg(r_est: np.ndarray, r_gt: np.ndarray) -> np.ndarray:
    """[T] angle (degrees) between axis-angle rotations [T, 3]."""
    from scipy.spatial.transform import Rotation

    a = Rotation.from_rotvec(np.asarray(r_est, np.float64))
    b = Rotation.from_rotvec(np.asarray(r_gt, np.float64))
    return np.degrees((a.inv() * b).magnitude())


def world_head_rotation(params: HeadParams) -> np.ndarray:
    """[T, 3] the head's world orientation ``R(global_orient)·R(neck)·R(head)`` as axis-angle
    (comparable between fits that split body turn and head rotation differently)."""
    from scipy.spatial.transform import Rotation

    g = lambda a: Rotation.from_rotvec(a.detach().cpu().double().numpy().reshape(-1, 3))  # noqa: E731
    T = params.batch_size
    p = params.expand(T)
    return (g(p.global_orient) * g(p.neck_pose) * g(p.head_pose)).as_rotvec()


def head_rotation(params: HeadParams) -> np.ndarray:
    """[T, 3] the per-frame rigid head rotation ``r = neck_pose + head_pose`` (split convention)."""
    return (params.neck_pose + params.head_pose).detach().cpu().double().numpy()
