"""Temporal stability: data-aware smoothing of the per-frame solutions, and a One-Euro filter.

Each frame's landmark solve gives ``θ̂_t`` and the Hessian ``H_t`` of its objective, i.e. the
quadratic ``(θ − θ̂_t)ᵀ H_t (θ − θ̂_t)``. The smoothed trajectory minimises

    Σ_t (θ_t − θ̂_t)ᵀ H_t (θ_t − θ̂_t) + Σ_t ‖θ_t − θ_{t−1}‖²_V + Σ_t ‖θ_{t+1} − 2θ_t + θ_{t−1}‖²_A

with diagonal velocity and acceleration weights ``V, A`` per unknown (strong on head rotation and
translation, light on jaw and expression: :class:`~.config.TrackConfig`). It is one Gauss–Newton
step of the temporally coupled tracking problem, linearised at the per-frame solutions. Because
``H_t`` weighs each direction by how well the landmarks determine it, a blink or a jaw opening
(well observed) stays sharp while the poorly observed depth and expression mixtures are smoothed.

* :class:`WindowSmoother` (offline, the default): the quadratic over a sliding window of
  ``chunk + lookahead`` frames, with the two frames before the window fixed to their already
  emitted values; solved exactly (block-tridiagonal in pairs of frames, block Thomas algorithm).
  Memory and time per frame are constant.
* :class:`CausalSmoother`: the same terms with no look-ahead — each frame is solved given the
  previous two (previous-frame penalties; the acceleration term acts as a constant-velocity
  prediction), for live use.
* Frames with no measurement (face lost) get ``H_t = 0`` and are bridged by the temporal terms
  (an interpolating spline in the offline smoother).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

from .config import TrackConfig
from .rig import EXPR0, JAW, ROT, TRANSL


def temporal_weights(cfg: TrackConfig, dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """Velocity and acceleration weights ``[D]`` for θ = (rotation, translation, jaw, expression)."""
    s = float(cfg.smoothing_strength)
    vel = np.empty(dim)
    acc = np.empty(dim)
    vel[ROT], acc[ROT] = cfg.vel_rotation, cfg.acc_rotation
    vel[TRANSL], acc[TRANSL] = cfg.vel_translation, cfg.acc_translation
    vel[JAW], acc[JAW] = cfg.vel_jaw, cfg.acc_jaw
    vel[EXPR0:], acc[EXPR0:] = cfg.vel_expression, cfg.acc_expression
    return vel * s, acc * s


def _difference_gram(n: int, order: int) -> np.ndarray:
    """``DᵀD`` ([n, n]) of the forward difference operator of ``order`` (1 or 2) on n samples."""
    if n <= order:
        return np.zeros((n, n))
    D = np.zeros((n - order, n))
    coef = [-1.0, 1.0] if order == 1 else [1.0, -2.0, 1.0]
    for i in range(n - order):
        D[i, i : i + order + 1] = coef
    return D.T @ D


def _block_tridiag_solve(Dg: np.ndarray, C: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve a symmetric positive-definite block-tridiagonal system (block Thomas algorithm).

    Dg: [K, m, m] diagonal blocks; C: [K-1, m, m] blocks coupling k (rows) with k+1 (columns);
    b: [K, m]. Returns x [K, m]. Runs in torch (float64) so the caller's thread setting applies."""
    import torch

    Dg_t, C_t, b_t = (torch.from_numpy(np.ascontiguousarray(a)) for a in (Dg, C, b))
    K = Dg_t.shape[0]
    S = [Dg_t[0]]
    y = [b_t[0]]
    for k in range(1, K):
        L = torch.linalg.solve(S[k - 1], C_t[k - 1]).T  # Cᵀ S⁻¹ (S symmetric)
        S.append(Dg_t[k] - L @ C_t[k - 1])
        y.append(b_t[k] - L @ y[k - 1])
    x = [None] * K
    x[K - 1] = torch.linalg.solve(S[K - 1], y[K - 1])
    for k in range(K - 2, -1, -1):
        x[k] = torch.linalg.solve(S[k], y[k] - C_t[k] @ x[k + 1])
    return torch.stack(x).numpy()


def smooth_window(theta_hat: np.ndarray, H: np.ndarray, vel: np.ndarray, acc: np.ndarray,
                  past: Optional[np.ndarray] = None) -> np.ndarray:
    """Minimise the smoothing quadratic over one window (see module docstring).

    theta_hat: [N, D] per-frame solutions; H: [N, D, D] their Hessians (zeros for lost frames);
    vel, acc: [D] weights; past: [m, D] (m ≤ 2) already fixed frames just before the window.
    Returns [N, D].

    The system is block-pentadiagonal in frames (acceleration couples t with t ± 2); grouping the
    frames in pairs makes it block-tridiagonal with blocks of 2D, solved exactly by block Thomas.
    """
    N, D = theta_hat.shape
    m = 0 if past is None else int(past.shape[0])
    n_all = N + m
    S1 = _difference_gram(n_all, 1)
    S2 = _difference_gram(n_all, 2)
    rhs = np.einsum("tij,tj->ti", H, theta_hat)
    if m:
        rhs -= (S1[m:, :m] @ past) * vel + (S2[m:, :m] @ past) * acc
    S1f, S2f = S1[m:, m:], S2[m:, m:]
    # pad to an even frame count with a decoupled dummy frame
    Np = N + (N % 2)
    Hp = np.zeros((Np, D, D))
    Hp[:N] = H
    rp = np.zeros((Np, D))
    rp[:N] = rhs
    Tw = lambda t, u: (S1f[t, u] * vel + S2f[t, u] * acc) if (t < N and u < N) else np.zeros(D)  # noqa: E731
    if Np > N:
        Hp[N] = np.eye(D)
    # a tiny ridge keeps a window without any measurement solvable
    scale = max(1e-12, float(np.mean([np.abs(np.diagonal(h)).mean() for h in H] + [vel.mean(), acc.mean()])))
    ridge = 1e-9 * scale
    K = Np // 2
    Dg = np.zeros((K, 2 * D, 2 * D))
    C = np.zeros((max(K - 1, 0), 2 * D, 2 * D))
    idx = np.arange(D)
    for k in range(K):
        a, b = 2 * k, 2 * k + 1
        Dg[k, :D, :D] = Hp[a]
        Dg[k, D:, D:] = Hp[b]
        Dg[k, idx, idx] += Tw(a, a) + ridge
        Dg[k, D + idx, D + idx] += Tw(b, b) + ridge
        Dg[k, idx, D + idx] += Tw(a, b)
        Dg[k, D + idx, idx] += Tw(a, b)
        if k + 1 < K:
            c, d = 2 * k + 2, 2 * k + 3
            C[k, idx, idx] = Tw(a, c)
            C[k, idx, D + idx] = Tw(a, d)
            C[k, D + idx, idx] = Tw(b, c)
            C[k, D + idx, D + idx] = Tw(b, d)
    rp[:N] += ridge * theta_hat
    x = _block_tridiag_solve(Dg, C, rp.reshape(K, 2 * D)).reshape(Np, D)
    return x[:N]


class WindowSmoother:
    """Streaming offline smoother: push frames, receive smoothed frames ``chunk`` at a time.

    Output lags the input by up to ``chunk + lookahead`` frames; memory is O(chunk + lookahead)."""

    def __init__(self, vel: np.ndarray, acc: np.ndarray, chunk: int, lookahead: int) -> None:
        self.vel, self.acc = vel, acc
        self.chunk = max(1, int(chunk))
        self.lookahead = max(0, int(lookahead))
        self._theta: List[np.ndarray] = []
        self._H: List[np.ndarray] = []
        self._past: Optional[np.ndarray] = None

    def push(self, theta_hat: np.ndarray, H: np.ndarray) -> List[np.ndarray]:
        """Add one frame (θ̂ [D], H [D, D]); returns the frames that are final now (maybe none)."""
        self._theta.append(np.asarray(theta_hat, np.float64))
        self._H.append(np.asarray(H, np.float64))
        if len(self._theta) >= self.chunk + self.lookahead:
            return self._emit(self.chunk)
        return []

    def flush(self) -> List[np.ndarray]:
        """Emit every remaining frame."""
        return self._emit(len(self._theta)) if self._theta else []

    def _emit(self, count: int) -> List[np.ndarray]:
        th = np.stack(self._theta)
        H = np.stack(self._H)
        x = smooth_window(th, H, self.vel, self.acc, self._past)
        out = [x[i] for i in range(count)]
        prev = x[:count] if self._past is None else np.concatenate([self._past, x[:count]])
        self._past = prev[-2:]
        del self._theta[:count]
        del self._H[:count]
        return out


class CausalSmoother:
    """Previous-frame penalties, one frame at a time (no look-ahead):
    ``(H + V + A) θ_t = H θ̂_t + V θ_{t−1} + A (2θ_{t−1} − θ_{t−2})``."""

    def __init__(self, vel: np.ndarray, acc: np.ndarray) -> None:
        self.vel, self.acc = vel, acc
        self._prev: List[np.ndarray] = []

    def push(self, theta_hat: np.ndarray, H: np.ndarray) -> List[np.ndarray]:
        th = np.asarray(theta_hat, np.float64)
        H = np.asarray(H, np.float64)
        A = H.copy()
        b = H @ th
        if self._prev:
            p1 = self._prev[-1]
            A[np.diag_indices_from(A)] += self.vel
            b = b + self.vel * p1
            if len(self._prev) > 1:
                pred = 2 * p1 - self._prev[-2]
                A[np.diag_indices_from(A)] += self.acc
                b = b + self.acc * pred
        if not np.any(H):  # lost frame: hold the constant-velocity prediction
            x = th if not self._prev else (2 * self._prev[-1] - self._prev[-2] if len(self._prev) > 1 else self._prev[-1])
        else:
            A[np.diag_indices_from(A)] += 1e-12 * max(1e-12, float(np.abs(np.diag(A)).mean()))
            x = np.linalg.solve(A, b)
        self._prev = (self._prev + [x])[-2:]
        return [x]

    def flush(self) -> List[np.ndarray]:
        return []


class PassThrough:
    """No temporal smoothing: the per-frame solutions as they are."""

    def push(self, theta_hat: np.ndarray, H: np.ndarray) -> List[np.ndarray]:
        return [np.asarray(theta_hat, np.float64)]

    def flush(self) -> List[np.ndarray]:
        return []


class OneEuroFilter:
    """Causal One-Euro filter (Casiez et al. 2012) on vectors, one sample at a time.

    The cutoff rises with the filtered speed (``min_cutoff + beta·|ẋ|``, Hz), so the signal is
    smoothed strongly at rest and followed with little lag when it moves."""

    def __init__(self, fps: float, min_cutoff: float, beta: float, d_cutoff: float = 1.0) -> None:
        self.fps = float(fps)
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self._y: Optional[np.ndarray] = None
        self._dx: Optional[np.ndarray] = None

    @staticmethod
    def _alpha(cutoff, fps):
        r = 2.0 * math.pi * cutoff / fps
        return r / (r + 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._y is None:
            self._y = x.copy()
            self._dx = np.zeros_like(x)
            return x.copy()
        raw = (x - self._y) * self.fps
        ad = self._alpha(self.d_cutoff, self.fps)
        self._dx = ad * raw + (1 - ad) * self._dx
        a = self._alpha(self.min_cutoff + self.beta * np.abs(self._dx), self.fps)
        self._y = a * x + (1 - a) * self._y
        return self._y.copy()


def make_smoother(cfg: TrackConfig, dim: int):
    """The smoother selected by ``cfg.smoothing``."""
    vel, acc = temporal_weights(cfg, dim)
    if cfg.smoothing == "none" or cfg.smoothing_strength == 0:
        return PassThrough()
    if cfg.smoothing == "causal":
        return CausalSmoother(vel * cfg.causal_vel_factor, acc * cfg.causal_acc_factor)
    return WindowSmoother(vel, acc, cfg.chunk_size, cfg.lookahead)
