"""Jitter and accuracy metrics for tracked sequences.

Jitter is the RMS frame-to-frame *acceleration* (second difference) — of projected points in
pixels and of the head rotation in degrees. Velocity would penalise real motion; acceleration is
near zero for smooth motion and large for frame-to-frame noise (white noise of standard deviation
s has an RMS second difference of √6·s).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ..errors import ExpPortraitError


def _rotvec_to_matrix(r: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(r, np.float64)).as_matrix()


def rotation_acceleration_deg(rotations: np.ndarray) -> np.ndarray:
    """[T-2] angular acceleration magnitudes (degrees/frame²) of axis-angle rotations [T, 3].

    The per-frame angular velocity is ω_t = log(R_tᵀ R_{t+1}) (body frame); acceleration is
    ``|ω_{t+1} − ω_t|``."""
    from scipy.spatial.transform import Rotation

    R = _rotvec_to_matrix(rotations)
    if len(R) < 3:
        return np.zeros(0)
    rel = np.einsum("tji,tjk->tik", R[:-1], R[1:])
    w = Rotation.from_matrix(rel).as_rotvec()
    return np.degrees(np.linalg.norm(w[1:] - w[:-1], axis=-1))


def jitter_metrics(points_2d: np.ndarray, rotations: Optional[np.ndarray] = None,
                   mask: Optional[np.ndarray] = None) -> Dict[str, float]:
    """RMS frame-to-frame acceleration of projected points and of head rotation.

    points_2d: [T, N, 2] pixels (e.g. projected face vertices or landmarks); rotations: [T, 3]
    axis-angle head rotations (or None); mask: optional [T] bool — only accelerations whose three
    frames are all True count (e.g. skip bridged frames, or select still segments).
    Returns ``{"accel_px": RMS over points and frames, "accel_px_p95": 95th percentile of the
    per-frame RMS, "accel_deg": RMS angular acceleration (if rotations), "frames": count}``.
    """
    p = np.asarray(points_2d, np.float64)
    if p.ndim != 3 or p.shape[-1] != 2:
        raise ExpPortraitError(f"jitter_metrics: points_2d must be [T, N, 2], got {p.shape}.")
    T = p.shape[0]
    if T < 3:
        return {"accel_px": 0.0, "accel_px_p95": 0.0, "accel_deg": 0.0, "frames": 0}
    keep = np.ones(T - 2, bool)
    if mask is not None:
        m = np.asarray(mask, bool)
        keep = m[:-2] & m[1:-1] & m[2:]
    acc = p[2:] - 2 * p[1:-1] + p[:-2]  # [T-2, N, 2]
    per_frame = np.sqrt((acc**2).sum(-1).mean(-1))[keep]
    out = {
        "accel_px": float(np.sqrt(np.mean(per_frame**2))) if per_frame.size else 0.0,
        "accel_px_p95": float(np.percentile(per_frame, 95)) if per_frame.size else 0.0,
        "frames": int(keep.sum()),
    }
    if rotations is not None:
        a = rotation_acceleration_deg(rotations)[keep]
        out["accel_deg"] = float(np.sqrt(np.mean(a**2))) if a.size else 0.0
    return out


class JitterAccumulator:
    """Streaming version of :func:`jitter_metrics` (constant memory: keeps two frames)."""

    def __init__(self) -> None:
        self._pts: list = []
        self._rot: list = []
        self._ok: list = []
        self._sum_px = 0.0
        self._sum_deg = 0.0
        self._per_frame: list = []
        self._n = 0

    def push(self, points_2d: np.ndarray, rotation: Optional[np.ndarray], ok: bool = True) -> None:
        self._pts = (self._pts + [np.asarray(points_2d, np.float64)])[-3:]
        self._rot = (self._rot + [None if rotation is None else np.asarray(rotation, np.float64)])[-3:]
        self._ok = (self._ok + [bool(ok)])[-3:]
        if len(self._pts) == 3 and all(self._ok):
            a = self._pts[2] - 2 * self._pts[1] + self._pts[0]
            pf = float(np.sqrt((a**2).sum(-1).mean()))
            self._sum_px += pf**2
            self._per_frame.append(np.float32(pf))
            if self._rot[0] is not None:
                self._sum_deg += float(rotation_acceleration_deg(np.stack(self._rot))[0] ** 2)
            self._n += 1

    def result(self) -> Dict[str, float]:
        n = max(self._n, 1)
        pf = np.asarray(self._per_frame, np.float64)
        return {
            "accel_px": float(np.sqrt(self._sum_px / n)) if self._n else 0.0,
            "accel_px_p95": float(np.percentile(pf, 95)) if pf.size else 0.0,
            "accel_deg": float(np.sqrt(self._sum_deg / n)) if self._n else 0.0,
            "frames": int(self._n),
        }


def inter_ocular(landmarks: np.ndarray) -> np.ndarray:
    """Outer-eye-corner distance (iBUG 36–45) per frame. landmarks: [..., 68, 2] → [...]."""
    lm = np.asarray(landmarks, np.float64)
    return np.linalg.norm(lm[..., 36, :] - lm[..., 45, :], axis=-1)


def mouth_gap(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip opening (mean of the 61–67, 62–66, 63–65 distances) over the inter-ocular
    distance. landmarks: [..., 68, 2] → [...]."""
    lm = np.asarray(landmarks, np.float64)
    g = sum(np.linalg.norm(lm[..., a, :] - lm[..., b, :], axis=-1) for a, b in ((61, 67), (62, 66), (63, 65))) / 3
    return g / np.maximum(inter_ocular(lm), 1e-6)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-D series (0 when either is constant)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else 0.0
