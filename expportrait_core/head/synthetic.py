"""A synthetic head-and-shoulders model in SMPL-X's ``.npz`` format (NOT SMPL-X).

SMPL-X is licence-gated, so tests, the demo and first-time users need a stand-in that loads
through exactly the same code paths (including ``smplx.SMPLX`` itself). This module *generates*
one, deterministically from a seed, with SMPL-X's array names, shapes and dtypes:

- 10,475 vertices and 20,908 triangles: a closed bust surface (skull, face with brows, eye
  openings, nose, lips with a mouth slit and a mouth cavity, chin, ears, neck, shoulders, top of
  the chest, flat bottom cap) plus two eyeballs with a cornea bulge;
- the real SMPL-X kinematic tree (55 joints) with a joint regressor and smooth skinning weights
  (skull → head, jaw/chin/lower lip → jaw, eyeballs → eyes, neck, collars, shoulders, spine);
- 300 smooth global shape directions with PCA-like decaying magnitudes and 100 local expression
  directions, the first :data:`SYNTHETIC_EXPRESSION_NAMES` of them named (smile, blinks, ...);
- iBUG-68 landmark embeddings (51 static + 17 jaw-contour points for 79 head-yaw bins).

Canonical space as SMPL-X: metres, +y up, the face looks towards +z, the subject's left is +x.
Nothing here is derived from SMPL-X data; it is sculpted from signed-distance primitives.

The surface is a (column θ, row s) grid: column ``i`` is a half-plane around a vertical axis at
azimuth θ_i (0 = front, +π/2 = subject's left); row ``j`` is placed by arclength along that
half-plane's profile curve, between anatomical key heights (brow, eyelids, mouth line, chin,
...) so that the eyelid margins and the mouth line are grid rows that can be cut open.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

SYNTHETIC_FILENAME = "SYNTHETIC_SMPLX_NEUTRAL.npz"
# Bump whenever the generated arrays change: cached files with another version are regenerated.
SYNTHETIC_VERSION = 1

# Named expression directions (index into the 100 expression coefficients). One unit moves the
# named region by a few millimetres to about a centimetre; directions 16..99 are smaller random
# local deformations around the face.
SYNTHETIC_EXPRESSION_NAMES: Dict[str, int] = {
    "smile": 0,
    "mouth_stretch": 1,
    "lip_pucker": 2,
    "lip_press": 3,
    "brow_raise": 4,
    "brow_furrow": 5,
    "blink_left": 6,
    "blink_right": 7,
    "cheek_puff": 8,
    "frown": 9,
    "sneer": 10,
    "lips_part": 11,
    "eye_wide": 12,
    "squint": 13,
    "mouth_left": 14,
    "nose_wrinkle": 15,
}

NUM_VERTICES = 10475
NUM_FACES = 20908
NUM_JOINTS = 55
NUM_SHAPE = 300
NUM_EXPR = 100

# SMPL-X's kinematic tree (parent of each of the 55 joints; the root's parent is stored as
# 4294967295, i.e. uint32(-1), as in the released files).
SMPLX_PARENTS = [
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
]
SMPLX_JOINT_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "jaw",
    "left_eye_smplhf", "right_eye_smplhf",
    "left_index1", "left_index2", "left_index3", "left_middle1", "left_middle2", "left_middle3",
    "left_pinky1", "left_pinky2", "left_pinky3", "left_ring1", "left_ring2", "left_ring3",
    "left_thumb1", "left_thumb2", "left_thumb3",
    "right_index1", "right_index2", "right_index3", "right_middle1", "right_middle2", "right_middle3",
    "right_pinky1", "right_pinky2", "right_pinky3", "right_ring1", "right_ring2", "right_ring3",
    "right_thumb1", "right_thumb2", "right_thumb3",
]
J_PELVIS, J_SPINE1, J_SPINE2, J_SPINE3, J_NECK, J_LCOLLAR, J_RCOLLAR, J_HEAD = 0, 3, 6, 9, 12, 13, 14, 15
J_LSHOULDER, J_RSHOULDER, J_JAW, J_LEYE, J_REYE = 16, 17, 22, 23, 24

# smplx's extra "vertex joints" (smplx.vertex_ids['smplx']) that fall on the bust: we place
# the matching anatomical vertex at these indices so smplx's nose/eye/ear keypoints are meaningful.
_SMPLX_VERTEX_IDS = {"nose": 9120, "reye": 9929, "leye": 9448, "rear": 616, "lear": 6}


# ================================================================================================
# Anatomy (metres). Only the sculpture lives here; the rig is derived from it.
# ================================================================================================
@dataclass(frozen=True)
class _Anatomy:
    y_bottom: float = -0.14  # flat cut through the chest
    eye_center: Tuple[float, float, float] = (0.0305, 0.345, 0.0685)  # subject's left eye (+x)
    eye_radius: float = 0.0122
    lid_gap: float = 0.0021  # eyelid shell radius - eyeball radius
    cornea_height: float = 0.0012
    cornea_angle: float = 0.52  # half-angle (rad) of the cornea bulge
    # eyelid fissure on the lid shell: horizontal angles (rad, + lateral) of the corners,
    # their vertical angles, and the opening heights of the upper/lower lid (rad on the shell)
    fissure_medial: float = -1.05
    fissure_lateral: float = 0.95
    canthus_medial_b: float = 0.015
    canthus_lateral_b: float = 0.06
    upper_open: float = 0.50
    lower_open: float = 0.34
    corner_gap: float = 0.0008  # eyelid opening left at the eye corners (m)
    mouth_y: float = 0.2822  # mouth line at the midline
    mouth_corner_theta: float = 0.285  # azimuth (rad) of the mouth corners
    mouth_corner_drop: float = 0.0016


A = _Anatomy()


# ---------------------------------------------------------------- signed-distance primitives ----
# Primitives take coordinate arrays x, y, z (any equal shapes); bilateral features are evaluated
# at |x|. The ellipsoid distance is the usual first-order approximation (exact on the surface).
def _ellipsoid(x, y, z, c, r):
    qx, qy, qz = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    k0 = np.sqrt(qx * qx + qy * qy + qz * qz)
    k1 = np.sqrt((qx / r[0]) ** 2 + (qy / r[1]) ** 2 + (qz / r[2]) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _sphere(x, y, z, c, r: float):
    return np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r


def _cone(x, y, z, a, b, ra: float, rb: float):
    """Capsule with a radius interpolated from ra (at a) to rb (at b)."""
    d = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
    dd = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    px, py, pz = x - a[0], y - a[1], z - a[2]
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0.0, 1.0)
    return np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2) - (ra + t * (rb - ra))


def _smin(a, b, k: float):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a, b, k: float):
    return -_smin(-a, -b, k)


def _elliptic_column(x, y, z, c, r_xz, half_height: float, rounding: float):
    """Vertical elliptic cylinder (radii r_xz, centre c) with rounded top and bottom edges."""
    rx, rz = r_xz[0] - rounding, r_xz[1] - rounding
    qx, qz = (x - c[0]) / rx, (z - c[2]) / rz
    k0 = np.sqrt(qx * qx + qz * qz)
    k1 = np.sqrt((qx / rx) ** 2 + (qz / rz) ** 2)
    d_xz = k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)
    d_y = np.abs(y - c[1]) - (half_height - rounding)
    out = np.sqrt(np.maximum(d_xz, 0) ** 2 + np.maximum(d_y, 0) ** 2)
    return out + np.minimum(np.maximum(d_xz, d_y), 0.0) - rounding


def _head_sdf(x, y, z):
    """Skull, face, eyelid shells, nose, lips and ears."""
    m = np.abs(x)
    ex, ey, ez = A.eye_center
    # ---- skull and face masses
    head = _ellipsoid(x, y, z, (0, 0.366, -0.016), (0.0745, 0.091, 0.098))
    head = _smin(head, _ellipsoid(x, y, z, (0, 0.392, 0.016), (0.064, 0.05, 0.076)), 0.02)
    taper = 1.0 - 0.30 * _smoothstep(0.335, 0.235, y)  # the face narrows towards the chin
    head = _smin(head, _ellipsoid(x / taper, y, z, (0, 0.305, 0.012), (0.064, 0.075, 0.078)), 0.02)
    head = _smin(head, _ellipsoid(m, y, z, (0.043, 0.326, 0.046), (0.026, 0.019, 0.03)), 0.02)
    head = _smin(head, _cone(m, y, z, (0.052, 0.312, -0.012), (0.049, 0.268, -0.010), 0.010, 0.011), 0.025)
    head = _smin(head, _cone(m, y, z, (0.049, 0.268, -0.010), (0.022, 0.247, 0.060), 0.009, 0.010), 0.025)
    head = _smin(head, _ellipsoid(x, y, z, (0, 0.2505, 0.0745), (0.023, 0.016, 0.021)), 0.018)
    # ---- brows, eye sockets, eyelid shells
    head = _smin(head, _ellipsoid(m, y, z, (0.030, 0.372, 0.076), (0.026, 0.009, 0.014)), 0.02)
    head = _smax(head, -_ellipsoid(m, y, z, (ex, ey + 0.002, 0.088), (0.018, 0.012, 0.016)), 0.008)
    head = _smin(head, _sphere(m, y, z, (ex, ey, ez), A.eye_radius + A.lid_gap), 0.008)
    # ---- nose
    nose = _cone(x, y, z, (0, 0.352, 0.086), (0, 0.314, 0.109), 0.0055, 0.0085)
    nose = _smin(nose, _sphere(x, y, z, (0, 0.307, 0.1105), 0.011), 0.008)
    nose = _smin(nose, _sphere(m, y, z, (0.0135, 0.3025, 0.0955), 0.0075), 0.008)
    nose = _smin(nose, _ellipsoid(x, y, z, (0, 0.309, 0.093), (0.012, 0.015, 0.017)), 0.008)
    head = _smin(head, nose, 0.012)
    # ---- mouth: perioral mass, then the two lips meeting in a crease at the mouth line
    zb = z + 16.0 * x * x  # bent frame: the lips follow the dental arch
    head = _smin(head, _ellipsoid(x, y, zb, (0, 0.286, 0.083), (0.033, 0.024, 0.016)), 0.012)
    upper = _ellipsoid(x, y, zb, (0, A.mouth_y + 0.0069, 0.0932), (0.0272, 0.0076, 0.0104))
    lower = _ellipsoid(x, y, zb, (0, A.mouth_y - 0.0076, 0.0912), (0.0245, 0.0086, 0.0114))
    head = _smin(head, _smin(upper, lower, 0.002), 0.005)
    # ---- ears
    return _smin(head, _ellipsoid(m, y, z, (0.0735, 0.327, -0.011), (0.010, 0.029, 0.017)), 0.008)


def _torso_sdf(x, y, z):
    """Chest, shoulders, arm stumps and collarbones."""
    m = np.abs(x)
    torso = _elliptic_column(x, y, z, (0.0, -0.05, -0.008), (0.148, 0.088), 0.115, 0.045)
    torso = _smin(torso, _ellipsoid(m, y, z, (0.06, 0.012, 0.014), (0.07, 0.055, 0.066)), 0.04)
    # shoulder yoke: one flattened ellipsoid gives a smooth trapezius-to-deltoid line
    torso = _smin(torso, _ellipsoid(x, y, z, (0.0, 0.088, -0.016), (0.19, 0.052, 0.082)), 0.04)
    torso = _smin(torso, _cone(m, y, z, (0.02, 0.158, -0.03), (0.13, 0.104, -0.02), 0.03, 0.022), 0.045)
    return _smin(torso, _cone(m, y, z, (0.15, 0.075, -0.013), (0.153, -0.2, -0.012), 0.041, 0.039), 0.04)


# Heights beyond which the head (or the torso) is more than a blend radius away from the surface.
_HEAD_MIN_Y, _TORSO_MAX_Y = 0.15, 0.28


def _bust_sdf(p: np.ndarray) -> np.ndarray:
    """Signed distance (approximate, metres; < 0 inside) of the sculpted bust. p: [..., 3]."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    body = _cone(x, y, z, (0, 0.075, -0.010), (0, 0.30, -0.026), 0.061, 0.055)
    hs = y > _HEAD_MIN_Y
    if hs.any():
        body[hs] = _smin(_head_sdf(x[hs], y[hs], z[hs]), body[hs], 0.03)
    ts = y < _TORSO_MAX_Y
    if ts.any():
        body[ts] = _smin(body[ts], _torso_sdf(x[ts], y[ts], z[ts]), 0.05)
    return np.maximum(body, A.y_bottom - y)


# ================================================================================================
# Surface parameterisation: rays from a vertical axis, profiles per azimuth
# ================================================================================================
def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((np.asarray(x, float) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _axis_z(y: np.ndarray) -> np.ndarray:
    """z of the vertical axis the rays start from (it follows the neck, which sits further back)."""
    return -0.008 - 0.012 * _smoothstep(0.09, 0.15, y) * (1.0 - _smoothstep(0.24, 0.29, y))


def _ray_points(theta: np.ndarray, y: np.ndarray, rho: np.ndarray) -> np.ndarray:
    return np.stack([rho * np.sin(theta), y, _axis_z(y) + rho * np.cos(theta)], -1)


def _cast(theta: np.ndarray, y: np.ndarray, rho0: float = 0.3) -> np.ndarray:
    """Distance ρ from the axis to the outermost surface crossing along horizontal rays.

    theta, y: [N] (azimuth, height). Marches inwards from ``rho0`` (sphere tracing with a
    minimum step so thin features are not skipped), then bisects the bracketing interval."""
    theta = np.asarray(theta, float).ravel()
    y = np.asarray(y, float).ravel()
    rho = np.full(theta.shape, rho0)
    prev = rho.copy()
    active = np.ones(theta.shape, bool)
    for _ in range(400):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        d = _bust_sdf(_ray_points(theta[idx], y[idx], rho[idx]))
        inside = d < 0
        hit = idx[inside]
        active[hit] = False
        go = idx[~inside]
        prev[go] = rho[go]
        rho[go] = np.maximum(rho[go] - np.maximum(0.7 * d[~inside], 0.0012), 0.0)
    lo, hi = rho.copy(), prev.copy()  # lo inside, hi outside
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        d = _bust_sdf(_ray_points(theta, y, mid))
        ins = d < 0
        lo = np.where(ins, mid, lo)
        hi = np.where(ins, hi, mid)
    return 0.5 * (lo + hi)


def _project_in_halfplane(theta: np.ndarray, rho: np.ndarray, y: np.ndarray, iters: int = 10):
    """Newton steps that move (ρ, y) points of the azimuth-θ half-plane onto the surface."""
    h = 2e-4
    rho, y = rho.copy(), y.copy()
    for _ in range(iters):
        f = _bust_sdf(_ray_points(theta, y, rho))
        gr = (_bust_sdf(_ray_points(theta, y, rho + h)) - _bust_sdf(_ray_points(theta, y, rho - h))) / (2 * h)
        gy = (_bust_sdf(_ray_points(theta, y + h, rho)) - _bust_sdf(_ray_points(theta, y - h, rho))) / (2 * h)
        g2 = np.maximum(gr * gr + gy * gy, 1e-8)
        step_r, step_y = f * gr / g2, f * gy / g2
        lim = 0.003  # stay close to the interpolated placement
        rho = rho - np.clip(step_r, -lim, lim)
        y = np.clip(y - np.clip(step_y, -lim, lim), A.y_bottom + 1e-5, None)
    return rho, y


def _top_of_axis() -> float:
    """Height where the axis leaves the skull (the top pole)."""
    lo, hi = 0.40, 0.50
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        ins = _bust_sdf(np.array([[0.0, mid, float(_axis_z(np.array(mid)))]]))[0] < 0
        lo, hi = (mid, hi) if ins else (lo, mid)
    return lo


def _monotone_interp(xk: np.ndarray, yk: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Monotone piecewise-cubic (Fritsch-Carlson) interpolation; xk strictly increasing."""
    xk, yk = np.asarray(xk, float), np.asarray(yk, float)
    h = np.diff(xk)
    delta = np.diff(yk) / h
    m = np.zeros_like(yk)
    m[0], m[-1] = delta[0], delta[-1]
    for k in range(1, len(xk) - 1):
        if delta[k - 1] * delta[k] <= 0:
            m[k] = 0.0
        else:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            m[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])
    x = np.asarray(x, float)
    k = np.clip(np.searchsorted(xk, x) - 1, 0, len(xk) - 2)
    t = (x - xk[k]) / h[k]
    h00, h10 = 2 * t ** 3 - 3 * t ** 2 + 1, t ** 3 - 2 * t ** 2 + t
    h01, h11 = -2 * t ** 3 + 3 * t ** 2, t ** 3 - t ** 2
    return h00 * yk[k] + h10 * h[k] * m[k] + h01 * yk[k + 1] + h11 * h[k] * m[k + 1]


# ================================================================================================
# Mesh: grid topology with eyelid openings, a mouth slit with a cavity, and two eyeballs
# ================================================================================================
@dataclass
class _Layout:
    """Resolution of the mesh; solved so that the totals are exactly SMPL-X's."""

    n_cols: int = 96  # columns around the vertical axis (even: mirror-symmetric)
    eye_med_col: int = 7  # column of the medial eye corner (= mouth corner column)
    eye_cols: int = 7  # quads across an eyelid opening
    side_col: int = 30  # column at azimuth 90°
    row_counts: Tuple[int, ...] = ()  # rows between consecutive row keys
    bag_rings: int = 3
    eyeball_rings: int = 25
    eyeball_segments: int = 25


# Row keys from the top pole down: (name, base number of rows since the previous key).
_ROW_KEYS = [
    ("pole", 0), ("hairline", 11), ("brow", 11), ("lid_upper", 6), ("lid_lower", 1), ("nose_base", 10),
    ("mouth", 5), ("chin", 11), ("throat", 6), ("neck_base", 6), ("shoulder", 8), ("chest", 5), ("bottom", 4),
    ("bottom_pole", 5),
]
_FIXED_ROW_GAPS = {"lid_lower": 1}


def _solve_layout() -> _Layout:
    """Pick row count, cavity rings and eyeball resolution that give exactly 10,475 vertices.

    Vertices: grid (n_cols × rows) + 2 poles + (mouth slit duplicates) + 2 (eyelid split
    vertices) + cavity rings + 2 eyeballs. Faces then follow from the topology (a genus-0 bust
    with two eyelid holes of 17 edges each, two closed eyeballs): F = 2V - 42 = 20,908."""
    lay = _Layout()
    m = 2 * lay.eye_med_col  # mouth edges per lip
    base_rows = sum(c for _, c in _ROW_KEYS) - 1  # grid rows between the poles
    best = None
    for rows in range(base_rows - 6, base_rows + 12):
        for rings in range(2, 7):
            rest = NUM_VERTICES - (lay.n_cols * rows + 2 + (m - 1) + 2 + 2 * m * rings)
            if rest <= 0 or rest % 2:
                continue
            per_eye = rest // 2 - 2
            for a in range(16, 31):
                if per_eye % a == 0 and 18 <= per_eye // a <= 40:
                    b = per_eye // a
                    cost = abs(rows - base_rows) * 2 + abs(rings - 3) * 3 + abs(a - 20) + abs(b - 28)
                    if best is None or cost < best[0]:
                        best = (cost, rows, rings, a, b)
    if best is None:  # only reachable if the constants above are edited inconsistently
        raise RuntimeError("no mesh layout gives exactly 10,475 vertices")
    _, rows, rings, a, b = best
    # distribute the extra/missing rows over the flexible gaps (largest first)
    counts = [c for _, c in _ROW_KEYS[1:]]
    names = [n for n, _ in _ROW_KEYS[1:]]
    diff = rows - base_rows
    order = [k for k in np.argsort(-np.array(counts), kind="stable") if names[k] not in _FIXED_ROW_GAPS]
    k = 0
    while diff != 0:
        counts[order[k % len(order)]] += int(np.sign(diff))
        diff -= int(np.sign(diff))
        k += 1
    lay.row_counts = tuple(counts)
    lay.bag_rings, lay.eyeball_rings, lay.eyeball_segments = rings, a, b
    return lay


def _column_angles(lay: _Layout) -> np.ndarray:
    """Azimuth of every column: dense on the face, sparse at the back; eye corners on columns."""
    th_med, th_lat = _fissure_corner_thetas()
    half = lay.n_cols // 2
    ik = np.array([0, lay.eye_med_col, lay.eye_med_col + lay.eye_cols, lay.side_col, half], float)
    tk = np.array([0.0, th_med, th_lat, 0.5 * np.pi, np.pi])
    pos = _monotone_interp(ik, tk, np.arange(half + 1))
    th = np.concatenate([pos, -pos[1:half][::-1]])  # columns 0..half, then the mirrored side
    return th


def _shell_point(a: np.ndarray, b: np.ndarray, side: float = 1.0) -> np.ndarray:
    """Point on the eyelid shell of the eye on ``side`` (+1 left/+x, -1 right), at horizontal
    angle a (+ lateral) and vertical angle b."""
    ex, ey, ez = A.eye_center
    R = A.eye_radius + A.lid_gap
    return np.stack([side * (ex + R * np.sin(a) * np.cos(b)), ey + R * np.sin(b) + 0 * a,
                     ez + R * np.cos(a) * np.cos(b)], -1)


def _fissure_curves(n: int = 400) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper and lower eyelid margins of the left eye on the shell: a: [n]; points [n, 3] each."""
    a = np.linspace(A.fissure_medial, A.fissure_lateral, n)
    u = (a - A.fissure_medial) / (A.fissure_lateral - A.fissure_medial)
    b_c = A.canthus_medial_b + (A.canthus_lateral_b - A.canthus_medial_b) * u
    R = A.eye_radius + A.lid_gap
    g = 0.5 * A.corner_gap / R
    bump_up = np.sin(np.pi * u ** 0.85) ** 1.1  # upper lid peaks slightly medially
    bump_lo = np.sin(np.pi * u ** 1.1) ** 1.3
    up = _shell_point(a, b_c + g + A.upper_open * bump_up)
    lo = _shell_point(a, b_c - g - A.lower_open * bump_lo)
    return a, up, lo


def _theta_of(p: np.ndarray) -> np.ndarray:
    return np.arctan2(p[..., 0], p[..., 2] - _axis_z(p[..., 1]))


def _fissure_corner_thetas() -> Tuple[float, float]:
    _, up, lo = _fissure_curves()
    mid = 0.5 * (up + lo)
    t = _theta_of(mid)
    return float(t[0]), float(t[-1])


def _margin_y(theta: np.ndarray, which: str) -> np.ndarray:
    """Height of an eyelid margin (left/right eye by the sign of θ) at azimuth θ (inside the fissure)."""
    _, up, lo = _fissure_curves()
    c = up if which == "upper" else lo
    t = _theta_of(c)
    return np.interp(np.abs(theta), t, c[:, 1])


def _eye_row_keys(theta: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Heights of the two eyelid rows at every azimuth: the margins inside the fissure, rows
    that open up to a normal spacing away from the eye corners elsewhere."""
    th_med, th_lat = _fissure_corner_thetas()
    at = np.abs(theta)
    _, up, lo = _fissure_curves()
    y_med = 0.5 * (up[0, 1] + lo[0, 1])
    y_lat = 0.5 * (up[-1, 1] + lo[-1, 1])
    gap_n = 0.004
    y_up = np.empty_like(at)
    y_lo = np.empty_like(at)
    inner = at < th_med
    outer = at > th_lat
    inside = ~inner & ~outer
    y_up[inside] = _margin_y(at[inside], "upper")
    y_lo[inside] = _margin_y(at[inside], "lower")
    g_in = A.corner_gap + (gap_n - A.corner_gap) * _smoothstep(0.0, 0.6 * th_med, th_med - at[inner])
    y_up[inner], y_lo[inner] = y_med + 0.5 * g_in, y_med - 0.5 * g_in
    w = _smoothstep(0.0, 0.14, at[outer] - th_lat)
    g_out = A.corner_gap + (gap_n - A.corner_gap) * w
    y_mid = y_lat + (A.eye_center[1] - y_lat) * _smoothstep(0.0, 1.0, at[outer] - th_lat)
    y_up[outer], y_lo[outer] = y_mid + 0.5 * g_out, y_mid - 0.5 * g_out
    return y_up, y_lo


def _mouth_row_key(theta: np.ndarray, th_corner: float) -> np.ndarray:
    u = np.minimum(np.abs(theta) / th_corner, 1.0)
    return A.mouth_y - A.mouth_corner_drop * u ** 2


def _row_key_heights(theta: np.ndarray, th_corner: float) -> Dict[str, np.ndarray]:
    one = np.ones_like(theta)
    y_up, y_lo = _eye_row_keys(theta)
    return {
        "hairline": 0.415 * one, "brow": 0.372 * one, "lid_upper": y_up, "lid_lower": y_lo,
        "nose_base": 0.303 * one, "mouth": _mouth_row_key(theta, th_corner), "chin": 0.236 * one,
        "throat": 0.205 * one, "neck_base": 0.16 * one, "shoulder": 0.085 * one, "chest": -0.02 * one,
        "bottom": A.y_bottom * one,
    }


def _profiles(theta: np.ndarray, y_top: float, n_side: int = 420, n_cap: int = 40):
    """Profile polylines (ρ, y) of every column from the top pole to the bottom pole.

    Returns rho: [C, P], y: [C, P], s: [C, P] cumulative arclength, n_body (index of the
    bottom-edge sample; samples after it lie on the flat bottom cap)."""
    u = np.linspace(0.0, 1.0, n_side)
    span = y_top - A.y_bottom
    # dense near the top pole (ρ ~ sqrt(y_top - y)) and uniform below
    yy = y_top - span * (0.25 * u ** 2 + 0.75 * u)
    yy[0] = y_top
    yy[-1] = A.y_bottom + 1e-4
    C = theta.shape[0]
    T = np.repeat(theta[:, None], n_side - 1, 1)
    Y = np.repeat(yy[None, 1:], C, 0)
    rho = np.zeros((C, n_side))
    rho[:, 1:] = _cast(T.ravel(), Y.ravel()).reshape(C, n_side - 1)
    ys = np.repeat(yy[None], C, 0)
    cap_u = np.linspace(0.0, 1.0, n_cap + 1)[1:]
    rho_cap = rho[:, -1:] * (1.0 - cap_u[None])
    y_cap = np.full((C, n_cap), A.y_bottom)
    R = np.concatenate([rho, rho_cap], 1)
    Yp = np.concatenate([ys, y_cap], 1)
    seg = np.hypot(np.diff(R, axis=1), np.diff(Yp, axis=1))
    S = np.concatenate([np.zeros((C, 1)), np.cumsum(seg, 1)], 1)
    return R, Yp, S, n_side - 1


@dataclass
class _Mesh:
    """The generated template and the bookkeeping the rig and blend shapes need."""

    v: np.ndarray  # [V, 3]
    f: np.ndarray  # [F, 3]
    part: np.ndarray  # [V] 0 bust grid/poles, 1 mouth cavity, 2 left eyeball, 3 right eyeball
    row: np.ndarray  # [V] grid row (-1 off-grid), 0 = top pole
    col: np.ndarray  # [V] grid column (-1 off-grid)
    lip: np.ndarray  # [V] +1 upper side of the mouth slit/cavity, -1 lower side, 0 elsewhere
    theta: np.ndarray  # [C] column azimuths
    n_rows: int  # grid rows including both poles
    key_rows: Dict[str, int]
    grid: np.ndarray  # [n_rows, C] vertex index of each grid node (poles repeated)
    mouth_upper: np.ndarray  # slit vertices, corner to corner (upper copies)
    mouth_lower: np.ndarray  # same, lower copies
    lid_upper: Dict[str, np.ndarray]  # per eye ("left"/"right"): upper margin, medial → lateral
    lid_lower: Dict[str, np.ndarray]
    eye_center: Dict[str, np.ndarray]
    eyeball: Dict[str, np.ndarray]  # vertex ids
    cavity_rings: List[Tuple[np.ndarray, np.ndarray]]
    vt: np.ndarray
    ft: np.ndarray


def _build_mesh(lay: _Layout) -> _Mesh:
    theta = _column_angles(lay)
    C = lay.n_cols
    half = C // 2
    i_med = lay.eye_med_col
    i_lat = i_med + lay.eye_cols
    y_top = _top_of_axis()
    R, Yp, S, n_body = _profiles(theta, y_top)

    names = [n for n, _ in _ROW_KEYS]
    key_rows = {}
    r = 0
    for (n, _), c in zip(_ROW_KEYS, (0,) + lay.row_counts):
        r += c
        key_rows[n] = r
    n_rows = key_rows["bottom_pole"] + 1
    keys = _row_key_heights(theta, abs(float(theta[i_med])))

    # arclength of every row in every column (monotone cubic through the key rows)
    s_rows = np.zeros((C, n_rows))
    for c in range(C):
        s_body = S[c, : n_body + 1]
        y_body = Yp[c, : n_body + 1]
        kr = [0]
        ks = [0.0]
        for n in names[1:-1]:
            kr.append(key_rows[n])
            ks.append(float(np.interp(-keys[n][c], -y_body, s_body)))
        kr.append(key_rows["bottom_pole"])
        ks.append(float(S[c, -1]))
        s_rows[c] = _monotone_interp(np.array(kr, float), np.array(ks), np.arange(n_rows))

    # positions: interpolate the profile polylines, then snap onto the surface. Eyelid and mouth
    # rows keep their designed height (horizontal ray cast); other rows are projected within
    # their half-plane, which also handles near-horizontal surfaces (under the chin, shoulders).
    RHO = np.zeros((C, n_rows))
    YY = np.zeros((C, n_rows))
    cap = np.zeros((C, n_rows), bool)
    for c in range(C):
        cap[c] = s_rows[c] > S[c, n_body] + 1e-9
        YY[c] = np.interp(s_rows[c], S[c], Yp[c])
        RHO[c] = np.interp(s_rows[c], S[c], R[c])
    TT = np.repeat(theta[:, None], n_rows, 1)
    body = ~cap
    body[:, 0] = False
    body[:, -1] = False
    fixed = np.zeros_like(body)
    for n in ("lid_upper", "lid_lower", "mouth"):
        fixed[:, key_rows[n]] = True
    sel = body & fixed
    RHO[sel] = _cast(TT[sel], YY[sel])
    sel = body & ~fixed
    RHO[sel], YY[sel] = _project_in_halfplane(TT[sel], RHO[sel], YY[sel])
    P = _ray_points(TT, YY, RHO)
    top = np.array([0.0, y_top, float(_axis_z(np.array(y_top)))])
    bot = np.array([0.0, A.y_bottom, float(_axis_z(np.array(A.y_bottom)))])

    # ---- vertices of the grid
    verts: List[np.ndarray] = [top[None]]
    grid = np.zeros((n_rows, C), np.int64)
    grid[0] = 0
    nv = 1
    for j in range(1, n_rows - 1):
        verts.append(P[:, j])
        grid[j] = nv + np.arange(C)
        nv += C
    verts.append(bot[None])
    grid[-1] = nv
    nv += 1
    n_grid = nv
    part = [np.zeros(n_grid, np.int64)]
    rowv = np.full(n_grid, -1, np.int64)
    colv = np.full(n_grid, -1, np.int64)
    for j in range(n_rows):
        rowv[grid[j]] = j
        if 0 < j < n_rows - 1:
            colv[grid[j]] = np.arange(C)
    rowv[0], rowv[n_grid - 1] = 0, n_rows - 1

    # ---- mouth slit: duplicate the interior nodes of the mouth row for the lower lip
    jm = key_rows["mouth"]
    mouth_cols = [(c % C) for c in range(-i_med, i_med + 1)]  # corner .. corner (right → left)
    lower_grid_row = grid[jm].copy()
    dup = []
    for c in mouth_cols[1:-1]:
        lower_grid_row[c] = nv
        dup.append(P[c, jm])
        nv += 1
    verts.append(np.array(dup))
    part.append(np.zeros(len(dup), np.int64))
    mouth_upper = grid[jm, mouth_cols]
    mouth_lower = lower_grid_row[mouth_cols]

    # ---- faces of the grid
    je = key_rows["lid_upper"]
    hole_cols = set(range(i_med, i_lat)) | set(C - 1 - c for c in range(i_med, i_lat))
    faces: List[Tuple[int, int, int]] = []
    for c in range(C):
        faces.append((grid[0, 0], grid[1, c], grid[1, (c + 1) % C]))
        faces.append((grid[-1, 0], grid[-2, (c + 1) % C], grid[-2, c]))
    split_quads = {i_med + 3: "left", C - 1 - (i_med + 3): "right"}
    split_verts = {}
    for j in range(1, n_rows - 2):
        top_row = lower_grid_row if j == jm else grid[j]
        bot_row = grid[j + 1]
        for c in range(C):
            if j == je and c in hole_cols:
                continue
            c1 = (c + 1) % C
            a, b, cc, d = top_row[c], top_row[c1], bot_row[c1], bot_row[c]
            if j == je - 1 and c in split_quads:
                # one extra vertex on the middle of the upper eyelid margin (17-edge openings)
                th_mid = 0.5 * (theta[c] + theta[c1])
                y_mid = float(_margin_y(np.array([th_mid]), "upper")[0])
                pm = _ray_points(np.array([th_mid]), np.array([y_mid]), _cast(np.array([th_mid]), np.array([y_mid])))
                verts.append(pm)
                part.append(np.zeros(1, np.int64))
                n = nv
                nv += 1
                split_verts[split_quads[c]] = (n, d, cc)
                if theta[c] >= 0:
                    faces += [(a, d, n), (a, n, cc), (a, cc, b)]
                else:
                    faces += [(a, d, b), (b, d, n), (b, n, cc)]
                continue
            if theta[c] >= 0:  # mirror-symmetric diagonals
                faces += [(a, d, cc), (a, cc, b)]
            else:
                faces += [(a, d, b), (b, d, cc)]

    # ---- mouth cavity: rings of the slit loop pushed into the head, closed by a zipper
    m = len(mouth_cols) - 1
    xs = P[mouth_cols, jm, 0]
    x_c = max(abs(xs[0]), abs(xs[-1]))
    rings = [(mouth_upper, mouth_lower)]
    cav = []
    cav_lip = []
    K = lay.bag_rings
    for k in range(1, K + 1):
        t = k / K
        base = P[mouth_cols, jm].copy()
        w = np.sqrt(np.clip(1.0 - (base[:, 0] / x_c) ** 2, 0.0, 1.0))
        shrink = base.copy()
        shrink[:, 0] *= 1.0 - 0.4 * t
        shrink[:, 2] -= 0.002 + 0.02 * t
        # the first ring continues the lips' contact surface straight back (sensible normals at
        # the slit); deeper rings open into a cavity
        lift = (0.001 + 0.007 * np.sin(np.pi * min((k - 1) / max(K - 1, 1), 0.8))) * w
        ids_u = np.zeros(m + 1, np.int64)
        ids_l = np.zeros(m + 1, np.int64)
        for q in range(m + 1):
            if q in (0, m):
                cav.append(shrink[q]); cav_lip.append(0)
                ids_u[q] = ids_l[q] = nv
                nv += 1
            else:
                pu = shrink[q].copy(); pu[1] += lift[q]
                pl = shrink[q].copy(); pl[1] -= lift[q]
                cav.append(pu); cav_lip.append(1); ids_u[q] = nv; nv += 1
                cav.append(pl); cav_lip.append(-1); ids_l[q] = nv; nv += 1
        rings.append((ids_u, ids_l))
    verts.append(np.array(cav))
    part.append(np.ones(len(cav), np.int64))
    for k in range(1, K + 1):
        (u0, l0), (u1, l1) = rings[k - 1], rings[k]
        for q in range(m):
            faces += [(u0[q], u1[q], u1[q + 1]), (u0[q], u1[q + 1], u0[q + 1])]
            faces += [(l0[q], l0[q + 1], l1[q + 1]), (l0[q], l1[q + 1], l1[q])]
    uK, lK = rings[K]
    faces.append((uK[0], lK[1], uK[1]))
    for q in range(1, m - 1):
        faces += [(uK[q], lK[q], lK[q + 1]), (uK[q], lK[q + 1], uK[q + 1])]
    faces.append((uK[m - 1], lK[m - 1], uK[m]))

    # ---- eyelid margins (medial → lateral) for each eye
    lid_upper, lid_lower = {}, {}
    for side, cols in (("left", list(range(i_med, i_lat + 1))), ("right", [C - c for c in range(i_med, i_lat + 1)])):
        up = list(grid[je, cols])
        n_split, d, cc = split_verts[side]
        k = max(up.index(d), up.index(cc))  # the split vertex sits between d and cc
        up.insert(k, n_split)
        lid_upper[side] = np.array(up)
        lid_lower[side] = grid[je + 1, cols]

    # ---- eyeballs: UV spheres around the gaze axis with a cornea bulge
    eyeball = {}
    eye_center = {}
    for side, sgn, pid in (("left", 1.0, 2), ("right", -1.0, 3)):
        ev, ef = _eyeball(lay.eyeball_rings, lay.eyeball_segments)
        c = np.array([sgn * A.eye_center[0], A.eye_center[1], A.eye_center[2]])
        if sgn < 0:  # mirror the left eyeball exactly (and keep the triangles outward)
            ev = ev * np.array([-1.0, 1.0, 1.0])
            ef = ef[:, ::-1]
        ids = nv + np.arange(len(ev))
        verts.append(ev + c)
        part.append(np.full(len(ev), pid, np.int64))
        faces += [tuple(t) for t in (ef + nv)]
        nv += len(ev)
        eyeball[side] = ids
        eye_center[side] = c

    V = np.concatenate(verts, 0)
    Fc = np.array(faces, np.int64)
    partv = np.concatenate(part)
    rowv = np.concatenate([rowv, np.full(len(V) - n_grid, -1, np.int64)])
    colv = np.concatenate([colv, np.full(len(V) - n_grid, -1, np.int64)])
    for cidx, c in enumerate(mouth_cols[1:-1]):
        rowv[mouth_lower[cidx + 1]] = jm
        colv[mouth_lower[cidx + 1]] = c
    for side, (n, d, cc) in split_verts.items():
        rowv[n] = je
    lip = np.zeros(len(V), np.int64)
    lip[mouth_upper[1:-1]] = 1
    lip[mouth_lower[1:-1]] = -1
    cav_ids = np.nonzero(partv == 1)[0]
    lip[cav_ids] = np.array(cav_lip)
    vt, ft = _uvs(V, Fc, partv, theta, rowv, colv, n_rows)
    return _Mesh(
        v=V, f=Fc, part=partv, row=rowv, col=colv, lip=lip, theta=theta, n_rows=n_rows, key_rows=key_rows,
        grid=grid, mouth_upper=mouth_upper, mouth_lower=mouth_lower, lid_upper=lid_upper, lid_lower=lid_lower,
        eye_center=eye_center, eyeball=eyeball, cavity_rings=rings, vt=vt, ft=ft,
    )


def _eyeball(n_rings: int, n_seg: int) -> Tuple[np.ndarray, np.ndarray]:
    """Unit-centred eyeball of radius ``A.eye_radius`` with poles on the gaze axis (+z) and a
    cornea bulge around the front pole. Returns verts [2 + n_rings·n_seg, 3], faces [2·n_rings·n_seg, 3]."""
    # polar angle from +z; rings pulled towards the front so the cornea gets more of them
    g = np.pi * (np.arange(1, n_rings + 1) / (n_rings + 1)) ** 1.35
    ph = 2 * np.pi * np.arange(n_seg) / n_seg
    G, PH = np.meshgrid(g, ph, indexing="ij")
    r = A.eye_radius + A.cornea_height * np.clip(1.0 - G / A.cornea_angle, 0.0, 1.0) ** 2 * (3 - 2 * np.clip(1.0 - G / A.cornea_angle, 0.0, 1.0))
    ring = np.stack([r * np.sin(G) * np.cos(PH), r * np.sin(G) * np.sin(PH), r * np.cos(G)], -1).reshape(-1, 3)
    front = np.array([[0.0, 0.0, A.eye_radius + A.cornea_height]])
    back = np.array([[0.0, 0.0, -A.eye_radius]])
    v = np.concatenate([front, ring, back], 0)
    idx = 1 + np.arange(n_rings * n_seg).reshape(n_rings, n_seg)
    f = []
    for s in range(n_seg):
        s1 = (s + 1) % n_seg
        f.append((0, idx[0, s], idx[0, s1]))
        f.append((len(v) - 1, idx[-1, s1], idx[-1, s]))
        for k in range(n_rings - 1):
            a, b, c, d = idx[k, s], idx[k, s1], idx[k + 1, s1], idx[k + 1, s]
            f += [(a, d, c), (a, c, b)]
    return v, np.array(f, np.int64)


def _uvs(V, F, part, theta, row, col, n_rows):
    """A simple UV layout: the bust grid by (azimuth, row) in v ∈ [0.25, 1], with the seam at the
    back; cavity and eyeballs packed by position below it. Returns vt [N, 2], ft [F, 3]."""
    C = len(theta)
    uv = np.zeros((len(V), 2))
    g = part == 0
    r = np.where(row >= 0, row, 0)
    uv[g, 1] = 1.0 - 0.75 * r[g] / (n_rows - 1)
    th = np.where(col >= 0, theta[np.maximum(col, 0)], 0.0)
    uv[g, 0] = 0.5 + th[g] / (2 * np.pi)
    for pid, (u0, u1) in ((1, (0.0, 0.3)), (2, (0.35, 0.65)), (3, (0.7, 1.0))):
        sel = part == pid
        p = V[sel]
        lo, hi = p.min(0), p.max(0)
        uv[sel, 0] = u0 + (u1 - u0) * (p[:, 0] - lo[0]) / max(hi[0] - lo[0], 1e-9)
        uv[sel, 1] = 0.02 + 0.2 * (p[:, 1] - lo[1]) / max(hi[1] - lo[1], 1e-9)
    vt = [uv]
    ft = F.copy()
    # faces that straddle the back seam (θ = π ↔ -π) use duplicates of their u ≈ 1 corners at u - 1 ≈ 0
    fu = uv[F, 0]
    straddle = (part[F[:, 0]] == 0) & (fu.max(1) - fu.min(1) > 0.5)
    dup_map = {}
    extra = []
    n0 = len(V)
    for fi in np.nonzero(straddle)[0]:
        for k in range(3):
            vi = F[fi, k]
            if uv[vi, 0] > 0.5:
                if vi not in dup_map:
                    dup_map[vi] = n0 + len(extra)
                    extra.append([uv[vi, 0] - 1.0, uv[vi, 1]])
                ft[fi, k] = dup_map[vi]
    if extra:
        vt.append(np.array(extra))
    return np.concatenate(vt, 0), ft


# ================================================================================================
# Small geometric helpers
# ================================================================================================
def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-15)


def _bump(p: np.ndarray, c, r) -> np.ndarray:
    """Compactly supported smooth bump (1 at c, exactly 0 outside the ellipsoid of radii r)."""
    q = (p - np.asarray(c, float)) / np.asarray(r, float)
    d2 = (q * q).sum(-1)
    return np.clip(1.0 - d2, 0.0, 1.0) ** 3


def _mirror_map(M: _Mesh) -> np.ndarray:
    """Index of every vertex's mirror image (x → -x); exact for this symmetric mesh."""
    from scipy.spatial import cKDTree

    mir = np.full(len(M.v), -1, np.int64)
    key = np.where(M.part == 3, 2, M.part) * 10 + (M.lip + 1)  # the eyeballs mirror each other
    for k in np.unique(key):
        ids = np.nonzero(key == k)[0]
        tree = cKDTree(M.v[ids])
        d, j = tree.query(M.v[ids] * np.array([-1.0, 1.0, 1.0]))
        mir[ids] = ids[j]
    return mir


def _face_of_edge(f: np.ndarray, a: int, b: int, allowed: Optional[np.ndarray] = None) -> Tuple[int, np.ndarray]:
    """A face containing the edge (a, b) and the barycentric slots of a and b in it."""
    hit = np.nonzero(((f == a).any(1)) & ((f == b).any(1)))[0]
    if allowed is not None:
        hit = hit[allowed[hit]]
    fi = int(hit[0])
    return fi, np.array([int(np.nonzero(f[fi] == a)[0][0]), int(np.nonzero(f[fi] == b)[0][0])])


def _frontal_hit(v: np.ndarray, f: np.ndarray, faces: np.ndarray, x: float, y: float) -> Tuple[int, np.ndarray]:
    """First face hit by the ray from (x, y, +∞) towards -z, with barycentric coordinates."""
    tri = v[f[faces]]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    d = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    ok = np.abs(d) > 1e-14
    d = np.where(ok, d, 1.0)
    w0 = ((b[:, 1] - c[:, 1]) * (x - c[:, 0]) + (c[:, 0] - b[:, 0]) * (y - c[:, 1])) / d
    w1 = ((c[:, 1] - a[:, 1]) * (x - c[:, 0]) + (a[:, 0] - c[:, 0]) * (y - c[:, 1])) / d
    w2 = 1.0 - w0 - w1
    inside = ok & (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
    z = w0 * a[:, 2] + w1 * b[:, 2] + w2 * c[:, 2]
    z = np.where(inside, z, -np.inf)
    k = int(np.argmax(z))
    if not np.isfinite(z[k]):
        raise RuntimeError(f"no surface at ({x}, {y})")
    return int(faces[k]), np.clip(np.array([w0[k], w1[k], w2[k]]), 0.0, 1.0)


# ================================================================================================
# Rig: joints, regressor, skinning weights
# ================================================================================================
def _joint_targets(M: _Mesh) -> np.ndarray:
    """Rest positions of the 55 joints. [55, 3]"""
    J = np.zeros((NUM_JOINTS, 3))
    yb = A.y_bottom
    J[J_PELVIS] = (0.0, yb + 0.006, -0.012)
    J[1], J[2] = (0.06, yb + 0.005, -0.012), (-0.06, yb + 0.005, -0.012)  # hips
    J[J_SPINE1] = (0.0, yb + 0.022, -0.016)
    J[4], J[5] = (0.066, yb + 0.004, -0.006), (-0.066, yb + 0.004, -0.006)  # knees
    J[J_SPINE2] = (0.0, -0.07, -0.02)
    J[7], J[8] = (0.07, yb + 0.003, 0.0), (-0.07, yb + 0.003, 0.0)  # ankles
    J[J_SPINE3] = (0.0, 0.02, -0.018)
    J[10], J[11] = (0.07, yb + 0.003, 0.02), (-0.07, yb + 0.003, 0.02)  # feet
    J[J_NECK] = (0.0, 0.125, -0.024)
    J[J_LCOLLAR], J[J_RCOLLAR] = (0.045, 0.115, -0.018), (-0.045, 0.115, -0.018)
    J[J_HEAD] = (0.0, 0.272, -0.022)
    J[J_LSHOULDER], J[J_RSHOULDER] = (0.16, 0.084, -0.013), (-0.16, 0.084, -0.013)
    J[18], J[19] = (0.153, -0.04, -0.013), (-0.153, -0.04, -0.013)  # elbows (inside the arm stumps)
    J[20], J[21] = (0.154, -0.11, -0.013), (-0.154, -0.11, -0.013)  # wrists
    J[J_JAW] = (0.0, 0.31, 0.008)
    J[J_LEYE], J[J_REYE] = M.eye_center["left"], M.eye_center["right"]
    # fingers: three joints per finger, collapsed just below each wrist
    for side, base, wrist in ((1.0, 25, 20), (-1.0, 40, 21)):
        for finger in range(5):
            for k in range(3):
                J[base + 3 * finger + k] = J[wrist] + np.array(
                    [side * 0.004 * (k + 1), -0.006 * (k + 1), -0.012 + 0.006 * finger])
    return J


def _regress_point(v: np.ndarray, cand: np.ndarray, target: np.ndarray, sigma: float) -> np.ndarray:
    """Positive weights over ``cand`` vertices, summing to 1, whose weighted mean is ``target``.

    Maximum-entropy tilt of a Gaussian profile around the target: w_i ∝ g_i·exp(λ·(v_i - t)),
    with λ found by Newton's method (the mean is exact whenever the target lies inside the hull
    of the candidates). Returns [len(cand)]."""
    P = (v[cand] - target) / sigma
    logg = -0.5 * (P ** 2).sum(1)
    lam = np.zeros(3)

    def objective(l):
        a = logg + P @ l
        mx = a.max()
        return mx + np.log(np.exp(a - mx).sum())

    for _ in range(60):
        a = logg + P @ lam
        w = np.exp(a - a.max())
        w /= w.sum()
        mean = w @ P
        if np.linalg.norm(mean) * sigma < 1e-11:
            break
        cov = (P * w[:, None]).T @ P - np.outer(mean, mean)
        step = np.linalg.solve(cov + 1e-12 * np.eye(3), mean)
        f0, t = objective(lam), 1.0
        while objective(lam - t * step) > f0 - 1e-4 * t * (mean @ step) and t > 1e-6:
            t *= 0.5
        if t <= 1e-6:  # no progress: the target is (numerically) outside the hull
            break
        lam = lam - t * step
    a = logg + P @ lam
    w = np.exp(a - a.max())
    return w / w.sum()


def _joint_regressor(M: _Mesh, J: np.ndarray, mir: np.ndarray) -> np.ndarray:
    """[55, V] non-negative rows summing to 1 with J_regressor @ v_template == J."""
    V = len(M.v)
    reg = np.zeros((NUM_JOINTS, V))
    bust = np.nonzero(M.part == 0)[0]
    for j in range(NUM_JOINTS):
        t = J[j]
        if t[0] < -1e-9:
            continue  # right-side joints: mirrored from the left below
        if j in (J_LEYE, J_REYE):
            cand = M.eyeball["left" if j == J_LEYE else "right"]
            sigma = 0.02
            w = _regress_point(M.v, cand, t, sigma)
        else:
            # grow the neighbourhood until the joint lies inside the hull of its vertices
            d = np.linalg.norm(M.v[bust] - t, axis=1)
            r = max(0.03, float(np.sort(d)[40]))
            while True:
                cand = bust[d < r]
                w = _regress_point(M.v, cand, t, r)
                if np.linalg.norm(w @ M.v[cand] - t) < 1e-8 or r > 0.5:
                    break
                r *= 1.25
        row = np.zeros(V)
        row[cand] = w
        if abs(t[0]) < 1e-9:
            row = 0.5 * (row + row[mir])  # midline joints: exactly symmetric
        reg[j] = row
    for j in range(NUM_JOINTS):
        if J[j, 0] < -1e-9:
            jl = int(np.argmin(np.linalg.norm(J - J[j] * np.array([-1.0, 1.0, 1.0]), axis=1)))
            reg[j] = reg[jl][mir]
    return reg


def _mouth_line(x: np.ndarray, x_c: float) -> np.ndarray:
    """Height of the mouth line, continued over the cheeks up towards the jaw hinge."""
    ax = np.abs(x)
    y = A.mouth_y - A.mouth_corner_drop * np.minimum(ax / x_c, 1.0) ** 2
    return y + 0.45 * np.maximum(ax - x_c, 0.0)


def _upper_mask(M: _Mesh, x_c: float) -> np.ndarray:
    """1 on the upper-lip/upper-face side of the mouth, 0 on the lower side, smooth on the cheeks."""
    v = M.v
    ax = np.abs(v[:, 0])
    width = 0.0015 + 0.6 * np.maximum(ax - 0.8 * x_c, 0.0)
    up = _smoothstep(-1.0, 1.0, (v[:, 1] - _mouth_line(v[:, 0], x_c)) / width)
    up[M.lip == 1] = 1.0
    up[M.lip == -1] = 0.0
    corners = np.array([M.mouth_upper[0], M.mouth_upper[-1]])
    up[corners] = 0.5
    up[(M.part == 1) & (M.lip == 0)] = 0.5
    return up


def _mandible_border(z: np.ndarray) -> np.ndarray:
    """Height of the lower border of the jaw, from the jaw angle (back) to the chin (front)."""
    return 0.262 - 0.027 * np.clip((np.asarray(z) + 0.01) / 0.09, 0.0, 1.0)


def _skinning_weights(M: _Mesh) -> np.ndarray:
    """[V, 55] smooth, normalised skinning weights over the bust joints."""
    v = M.v
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    ax = np.abs(x)
    x_c = float(np.abs(v[M.mouth_upper[0], 0]))
    W = np.zeros((len(v), NUM_JOINTS))
    # height along the neck, tilted so the under-chin belongs to the head and the nape lower
    h = y + 0.25 * (z + 0.02)
    head = _smoothstep(0.20, 0.25, h)
    neck = _smoothstep(0.10, 0.165, h) * (1.0 - head) * (1.0 - _smoothstep(0.055, 0.085, ax))
    rest = 1.0 - head - neck
    sh = _smoothstep(0.10, 0.15, ax)
    col = _smoothstep(0.04, 0.10, ax) * (1.0 - sh) * _smoothstep(-0.03, 0.06, y)  # collars: upper chest only
    trunk = 1.0 - sh - col
    low = 1.0 - _smoothstep(-0.10, 0.0, y)
    left = x >= 0
    W[:, J_NECK] = neck
    W[:, J_SPINE3] = rest * trunk * (1.0 - low)
    W[:, J_SPINE2] = rest * trunk * low
    W[:, J_LCOLLAR] = rest * col * left
    W[:, J_RCOLLAR] = rest * col * ~left
    W[:, J_LSHOULDER] = rest * sh * left
    W[:, J_RSHOULDER] = rest * sh * ~left
    # jaw: below the mouth line, in front of the jaw hinge, above the throat
    up = _upper_mask(M, x_c)
    below = 1.0 - up
    front = _smoothstep(-0.03, 0.02, z)
    y_jl = _mandible_border(z)
    above_throat = 1.0 - _smoothstep(0.0, 0.045, y_jl - y)
    jaw = np.clip(below * front * above_throat, 0.0, 1.0)
    jaw[M.part == 1] = below[M.part == 1]
    W[:, J_JAW] = head * jaw
    W[:, J_HEAD] = head * (1.0 - jaw)
    # eyeballs are rigid
    for side, j in (("left", J_LEYE), ("right", J_REYE)):
        ids = M.eyeball[side]
        W[ids] = 0.0
        W[ids, j] = 1.0
    W = np.clip(W, 0.0, None)
    return W / W.sum(1, keepdims=True)


# ================================================================================================
# Landmarks (iBUG-68): 51 static points and the yaw-dependent jaw contour
# ================================================================================================
def _polyline_point(v: np.ndarray, f: np.ndarray, chain: np.ndarray, frac: float,
                    allowed: np.ndarray) -> Tuple[int, np.ndarray]:
    """Face + barycentrics of the point at arclength fraction ``frac`` along a vertex chain
    (the face is taken among ``allowed`` faces that contain the chain edge)."""
    p = v[chain]
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = frac * s[-1]
    k = int(np.clip(np.searchsorted(s, t) - 1, 0, len(seg) - 1))
    u = (t - s[k]) / max(seg[k], 1e-15)
    fi, slots = _face_of_edge(f, int(chain[k]), int(chain[k + 1]), allowed)
    b = np.zeros(3)
    b[slots[0]], b[slots[1]] = 1.0 - u, u
    return fi, b


def _static_landmarks(M: _Mesh) -> Tuple[np.ndarray, np.ndarray]:
    """iBUG points 17..67 (brows, nose, eyes, mouth) as (faces [51], barycentrics [51, 3])."""
    v, f = M.v, M.f
    bust_faces = np.nonzero(M.part[f].max(1) == 0)[0]
    allowed = np.zeros(len(f), bool)
    allowed[bust_faces] = True
    out_f, out_b = [], []

    def frontal(x, y):
        fi, b = _frontal_hit(v, f, bust_faces, x, y)
        out_f.append(fi)
        out_b.append(b)

    def on_chain(chain, frac):
        fi, b = _polyline_point(v, f, chain, frac, allowed)
        out_f.append(fi)
        out_b.append(b)

    # brows 17-21 (subject's right, outer → inner), 22-26 (left, inner → outer)
    bu = np.linspace(1.0, 0.0, 5)
    for u in bu:
        frontal(-(0.012 + 0.04 * u), 0.3685 + 0.0075 * np.sin(np.pi * (0.25 + 0.6 * u)))
    for u in bu[::-1]:
        frontal(0.012 + 0.04 * u, 0.3685 + 0.0075 * np.sin(np.pi * (0.25 + 0.6 * u)))
    # nose bridge 27-30 (nasion → tip); the tip is the front-most nose point
    nose = np.nonzero((M.part == 0) & (np.abs(v[:, 0]) < 1e-9) & (v[:, 1] > 0.29) & (v[:, 1] < 0.33))[0]
    tip = v[nose[np.argmax(v[nose, 2])]]
    for y in np.linspace(0.351, tip[1], 4):
        frontal(0.0, y)
    # nostrils 31-35 (right → left) along the nose base
    for x in (-0.0125, -0.0063, 0.0, 0.0063, 0.0125):
        frontal(x, 0.2995 + 0.0025 * (abs(x) / 0.0125))
    # eyes: margins run medial → lateral
    for side in ("right", "left"):
        up, lo = M.lid_upper[side], M.lid_lower[side]
        if side == "right":  # 36 outer, 37-38 upper (outer → inner), 39 inner, 40-41 lower (inner → outer)
            seq = [("c", lo[-1]), ("u", 2 / 3), ("u", 1 / 3), ("c", lo[0]), ("l", 1 / 3), ("l", 2 / 3)]
        else:  # 42 inner, 43-44 upper (inner → outer), 45 outer, 46-47 lower (outer → inner)
            seq = [("c", lo[0]), ("u", 1 / 3), ("u", 2 / 3), ("c", lo[-1]), ("l", 2 / 3), ("l", 1 / 3)]
        for kind, val in seq:
            if kind == "c":  # corner: midpoint of the short edge that closes the opening
                chain = np.array([up[0], lo[0]]) if val == lo[0] else np.array([up[-1], lo[-1]])
                on_chain(chain, 0.5)
            else:
                on_chain(up if kind == "u" else lo, float(val))
    # outer lip contour 48-59
    on_chain(M.mouth_upper, 0.0)  # 48: right corner (−x)
    for x in (-0.017, -0.0075, 0.0, 0.0075, 0.017):  # 49-53: upper vermilion border
        frontal(x, A.mouth_y + 0.0118 - 0.003 * (abs(x) / 0.017) ** 2 + (0.0008 if 0 < abs(x) < 0.01 else 0.0))
    on_chain(M.mouth_upper, 1.0)  # 54: left corner (+x)
    for x in (0.016, 0.0075, 0.0, -0.0075, -0.016):  # 55-59: lower vermilion border
        frontal(x, A.mouth_y - 0.0135 + 0.004 * (abs(x) / 0.016) ** 2)
    # inner lip contour 60-67 on the slit (upper copies for 61-63, lower copies for 65-67)
    inner = 0.06
    on_chain(M.mouth_upper, inner)  # 60
    for fr in (0.3, 0.5, 0.7):  # 61-63
        on_chain(M.mouth_upper, fr)
    on_chain(M.mouth_upper, 1.0 - inner)  # 64
    for fr in (0.7, 0.5, 0.3):  # 65-67
        on_chain(M.mouth_lower, fr)
    return np.array(out_f, np.int64), np.array(out_b)


_CONTOUR_CENTER = (0.0, 0.31)  # (x, y) the jaw-contour directions radiate from


def _contour_directions() -> np.ndarray:
    """In-image directions (angles, rad) of the 17 jaw-contour landmarks, iBUG 0 → 16."""
    return np.radians(160.0 + 13.75 * np.arange(17))


def _dynamic_contour(M: _Mesh) -> Tuple[np.ndarray, np.ndarray]:
    """Jaw contour (iBUG 0..16) for SMPL-X's 79 head-yaw bins: ([79, 17] faces, [79, 17, 3] bary).

    Each landmark lives on a slice (a half-plane through the view axis at its in-image angle).
    At yaw 0 it is the slice's outermost point (the frontal silhouette of the face, in front of
    the ears). When the head turns, landmarks on the side turning away slide along their slice
    towards the face to stay on the visible silhouette; those on the near side keep their place.
    Bin b maps to yaw -b° for b ≤ 39 and (b - 39)° above, as in smplx.lbs."""
    v, f = M.v, M.f
    cx, cy = _CONTOUR_CENTER
    grid_face = M.part[f].max(1) == 0
    z_min = 0.012  # stay in front of the ears
    faces_f, faces_b = np.zeros((79, 17), np.int64), np.zeros((79, 17, 3))
    yaws = np.radians(np.concatenate([-np.arange(40), np.arange(1, 40)]).astype(float))
    for l, psi in enumerate(_contour_directions()):
        u = np.array([np.cos(psi), np.sin(psi)])
        n = np.array([-np.sin(psi), np.cos(psi)])
        sd = (v[:, 0] - cx) * n[0] + (v[:, 1] - cy) * n[1]
        cands = []  # (face, bary, point)
        for k in range(3):
            a, b = f[:, k], f[:, (k + 1) % 3]
            cross = grid_face & (np.sign(sd[a]) != np.sign(sd[b]))
            for fi in np.nonzero(cross)[0]:
                ia, ib = f[fi, k], f[fi, (k + 1) % 3]
                t = sd[ia] / (sd[ia] - sd[ib])
                p = v[ia] + t * (v[ib] - v[ia])
                if (p[0] - cx) * u[0] + (p[1] - cy) * u[1] <= 0 or p[2] < z_min or p[1] < _mandible_border(p[2]):
                    continue
                if abs(p[0]) < 0.026 and p[1] > 0.26:  # the contour never jumps onto nose or lips
                    continue
                bc = np.zeros(3)
                bc[k], bc[(k + 1) % 3] = 1.0 - t, t
                cands.append((fi, bc, p))
        pts = np.array([c[2] for c in cands])
        radial0 = (pts[:, 0] - cx) * u[0] + (pts[:, 1] - cy) * u[1]
        a0 = int(np.argmax(radial0))
        front = pts[:, 2] >= pts[a0, 2] - 1e-12  # from the anatomical point towards the face
        for bi, yaw in enumerate(yaws):
            away = (l > 8 and yaw > 0) or (l < 8 and yaw < 0)
            k = a0
            if away:
                xr = np.cos(yaw) * pts[:, 0] + np.sin(yaw) * pts[:, 2]
                radial = (xr - cx) * u[0] + (pts[:, 1] - cy) * u[1]
                radial = np.where(front, radial, -np.inf)
                k = int(np.argmax(radial))
            faces_f[bi, l] = cands[k][0]
            faces_b[bi, l] = cands[k][1]
    return faces_f, faces_b


# ================================================================================================
# Blend shapes
# ================================================================================================
def _head_weight(p: np.ndarray) -> np.ndarray:
    return _smoothstep(0.20, 0.27, p[:, 1] + 0.25 * (p[:, 2] + 0.02))


def _named_shape_fields(p: np.ndarray) -> List[np.ndarray]:
    """The leading, interpretable shape directions (≈1 cm at their largest per unit), as
    displacement fields of arbitrary points p: [N, 3] → list of [N, 3]."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    ax, sx = np.abs(x), np.sign(x)
    hw = _head_weight(p)
    front = _smoothstep(-0.01, 0.04, z)
    zero = np.zeros_like(x)

    def vec(a, b, c):
        return np.stack([a + zero, b + zero, c + zero], -1)

    neck = _smoothstep(0.10, 0.16, y) * (1 - _smoothstep(0.22, 0.27, y)) * (1 - _smoothstep(0.05, 0.09, ax))
    out = [
        hw[:, None] * 0.075 * (p - np.array([0.0, 0.33, -0.01])),  # head size
        vec(hw * 0.12 * x, 0, 0),  # head width
        vec(0, hw * front * 0.11 * np.minimum(y - 0.345, 0.0), 0),  # lower-face length
        vec(hw * (1 - _smoothstep(0.27, 0.32, y)) * _smoothstep(-0.03, 0.0, z) * 0.16 * x, 0, 0),  # jaw width
        _bump(p, (0, 0.318, 0.105), (0.024, 0.036, 0.032))[:, None] * np.array([0.0, -0.002, 0.008]),  # nose size
        vec((1 - hw) * _smoothstep(0.06, 0.16, ax) * 0.06 * x, 0, 0),  # shoulder width
        vec(neck * 0.12 * x, 0, neck * 0.12 * (z - _axis_z(y))),  # neck thickness
        vec(0, 0, hw * 0.08 * (z + 0.01)),  # head depth
        _bump(p, (0, 0.245, 0.085), (0.03, 0.026, 0.032))[:, None] * np.array([0.0, -0.003, 0.006]),  # chin
        vec(_bump(np.stack([ax, y, z], -1), (0.0305, 0.345, 0.07), (0.026, 0.024, 0.032)) * 0.003 * sx, 0, 0),  # eye spacing
        _bump(np.stack([ax, y, z], -1), (0.045, 0.31, 0.06), (0.03, 0.03, 0.035))[:, None] * np.stack([0.0025 * sx, zero, 0.004 + zero], -1),  # cheeks
        vec(0, 0, hw * front * _smoothstep(0.36, 0.44, y) * -0.008),  # forehead slope
        vec(0, 0, _bump(np.stack([ax, y, z], -1), (0.03, 0.372, 0.08), (0.036, 0.016, 0.022)) * 0.003),  # brow ridge
        vec(0, 0, _bump(p, (0, 0.282, 0.095), (0.034, 0.018, 0.022)) * 0.0035),  # lip fullness
        vec(_bump(np.stack([ax, y, z], -1), (0.075, 0.327, -0.011), (0.02, 0.04, 0.03)) * 0.004 * sx, 0, 0),  # ears
        vec(0, 0, (1 - hw) * (1 - _smoothstep(0.1, 0.16, y)) * 0.08 * (z + 0.008)),  # chest depth
    ]
    return out


def _random_smooth_fields(p: np.ndarray, rng: np.random.Generator, wavelengths: np.ndarray,
                          n_terms: int = 4) -> np.ndarray:
    """Smooth, global, mirror-symmetric random displacement fields, one per wavelength (metres),
    each a sum of ``n_terms`` random plane waves, scaled to max |d| = 1. Returns [N, 3, K]."""
    K = len(wavelengths)
    om = rng.normal(size=(K, n_terms, 3)) / wavelengths[:, None, None] * 2 * np.pi
    ph = rng.uniform(0, 2 * np.pi, (K, n_terms))
    amp = rng.normal(size=(K, n_terms, 3))
    mirror = np.array([-1.0, 1.0, 1.0])
    om_flat = om.reshape(K * n_terms, 3).T.astype(np.float32)
    ph_flat = ph.reshape(-1).astype(np.float32)

    def raw(q):  # [N, 3, K]; float32 is plenty for sub-millimetre fields and twice as fast
        s = np.sin(q.astype(np.float32) @ om_flat + ph_flat).reshape(len(q), K, n_terms).transpose(1, 0, 2)
        return np.matmul(s, amp.astype(np.float32)).transpose(1, 2, 0).astype(np.float64)  # [N, 3, K]

    d = 0.5 * (raw(p) + raw(p * mirror) * mirror[None, :, None])
    return d / np.maximum(np.abs(d).max(axis=(0, 1)), 1e-12)


def _shape_dirs(M: _Mesh, rng: np.random.Generator) -> np.ndarray:
    """[V, 3, 300] smooth global shape directions with PCA-like decaying magnitudes."""
    p = M.v
    V = len(p)
    centers = np.stack([M.eye_center["left"], M.eye_center["right"]])
    named = _named_shape_fields(p)
    named_c = _named_shape_fields(centers)
    dirs = np.zeros((V, 3, NUM_SHAPE))
    for k, (d, dc) in enumerate(zip(named, named_c)):
        dirs[:, :, k] = d
        for side, c in (("left", dc[0]), ("right", dc[1])):
            dirs[M.eyeball[side], :, k] = c  # eyeballs move rigidly with their socket
    n_named = len(named)
    k = np.arange(n_named, NUM_SHAPE)
    sigma = 0.005 * (n_named / (k + 1.0)) ** 0.9  # 5 mm → ~0.35 mm
    wl = 0.55 - 0.3 * (k - n_named) / (NUM_SHAPE - n_named)  # longer waves first
    both = _random_smooth_fields(np.concatenate([p, centers]), rng, wl) * sigma
    dirs[:, :, n_named:] = both[:V]
    for side, c in (("left", both[V]), ("right", both[V + 1])):
        dirs[M.eyeball[side], :, n_named:] = c  # eyeballs move rigidly with their socket
    return dirs


def _face_mask(p: np.ndarray) -> np.ndarray:
    """Where expressions may act: the face, exactly 0 on the skull top/back, neck and body."""
    return _smoothstep(-0.005, 0.03, p[:, 2]) * _smoothstep(0.215, 0.24, p[:, 1]) * (1 - _smoothstep(0.40, 0.425, p[:, 1]))


def _lid_rotation(M: _Mesh, side: str, lid: str, amount: float) -> np.ndarray:
    """Displacement that rotates an eyelid about the eye's horizontal axis.

    lid "upper": amount 1 closes the upper lid onto the lower margin (negative opens it);
    lid "lower": amount 1 raises the lower margin by the same angle. Falls off over ~0.6 rad
    of the lid away from its margin and to zero at the eye corners. Returns [V, 3]."""
    v = M.v
    c = M.eye_center[side]
    up, lo = M.lid_upper[side], M.lid_lower[side]

    def elev(q):
        return np.arctan2(q[..., 1] - c[1], q[..., 2] - c[2])

    th_up, th_lo = _theta_of(v[up]), _theta_of(v[lo])
    order_u, order_l = np.argsort(th_up), np.argsort(th_lo)
    th_v = _theta_of(v)
    phi_u = np.interp(th_v, th_up[order_u], elev(v[up])[order_u])
    phi_l = np.interp(th_v, th_lo[order_l], elev(v[lo])[order_l])
    inside = (th_v >= min(th_up.min(), th_lo.min())) & (th_v <= max(th_up.max(), th_lo.max()))
    gap = np.where(inside, phi_u - phi_l, 0.0)  # opening angle at this azimuth
    phi = elev(v)
    r = np.linalg.norm(v - c, axis=1)
    near = 1.0 - _smoothstep(0.004, 0.010, r - (A.eye_radius + A.lid_gap))
    if lid == "upper":
        dist = phi - phi_u
        sign = -1.0
    else:
        dist = phi_l - phi
        sign = 1.0
    fall = (1.0 - _smoothstep(0.0, 0.6, dist)) * (dist >= -1e-9)
    ang = sign * amount * gap * fall * near * (M.part == 0)
    ca, sa = np.cos(ang), np.sin(ang)
    q = v - c
    # rotation about the eye's x axis that adds ``ang`` to the elevation φ = atan2(y, z)
    y2 = q[:, 1] * ca + q[:, 2] * sa
    z2 = q[:, 2] * ca - q[:, 1] * sa
    d = np.zeros_like(v)
    d[:, 1], d[:, 2] = y2 - q[:, 1], z2 - q[:, 2]
    return d


def _expression_dirs(M: _Mesh, rng: np.random.Generator) -> np.ndarray:
    """[V, 3, 100] local expression directions; the first 16 named (SYNTHETIC_EXPRESSION_NAMES)."""
    p = M.v
    V = len(p)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    x_c = float(abs(p[M.mouth_upper[0], 0]))
    z_c = float(p[M.mouth_upper[0], 2])
    y_c = float(p[M.mouth_upper[0], 1])
    up = _upper_mask(M, x_c)[:, None]
    lo = 1.0 - up
    normals = _vertex_normals(p, M.f)
    y_line = _mouth_line(x, x_c)
    E = np.zeros((V, 3, NUM_EXPR))
    n = SYNTHETIC_EXPRESSION_NAMES

    def corners(r, d):
        out = np.zeros((V, 3))
        for s in (-1.0, 1.0):
            out += _bump(p, (s * x_c, y_c, z_c), r)[:, None] * np.array([s * d[0], d[1], d[2]])
        return out

    def bilateral(c, r, d):
        out = np.zeros((V, 3))
        for s in (-1.0, 1.0):
            out += _bump(p, (s * c[0], c[1], c[2]), r)[:, None] * np.array([s * d[0], d[1], d[2]])
        return out

    mouth_k = _bump(p, (0, A.mouth_y, 0.095), (0.036, 0.022, 0.032))[:, None]
    E[:, :, n["smile"]] = corners((0.022, 0.02, 0.026), (0.003, 0.005, -0.003)) + bilateral(
        (0.036, 0.302, 0.075), (0.02, 0.02, 0.026), (0.001, 0.002, 0.0015))
    E[:, :, n["mouth_stretch"]] = corners((0.024, 0.02, 0.026), (0.006, -0.0015, -0.002))
    pucker_k = _bump(p, (0, A.mouth_y, 0.095), (0.042, 0.028, 0.036))[:, None]
    E[:, :, n["lip_pucker"]] = pucker_k * np.stack([-0.3 * x, 0.0 * x, 0.009 + 0.0 * x], -1)
    E[:, :, n["lip_press"]] = mouth_k * np.stack([0.0 * x, -0.35 * (y - y_line), -0.003 + 0.0 * x], -1)
    E[:, :, n["brow_raise"]] = bilateral((0.032, 0.374, 0.08), (0.05, 0.032, 0.06), (0.0, 0.0065, 0.001))
    E[:, :, n["brow_furrow"]] = bilateral((0.014, 0.367, 0.088), (0.018, 0.016, 0.02), (-0.003, -0.003, 0.001))
    E[:, :, n["blink_left"]] = _lid_rotation(M, "left", "upper", 1.0)
    E[:, :, n["blink_right"]] = _lid_rotation(M, "right", "upper", 1.0)
    cheek = np.zeros((V, 3))
    for s in (-1.0, 1.0):
        cheek += _bump(p, (s * 0.043, 0.288, 0.062), (0.028, 0.028, 0.035))[:, None] * normals
    E[:, :, n["cheek_puff"]] = 0.006 * cheek
    E[:, :, n["frown"]] = corners((0.022, 0.02, 0.026), (0.001, -0.004, -0.001)) + lo * _bump(
        p, (0, 0.255, 0.09), (0.02, 0.018, 0.02))[:, None] * np.array([0.0, 0.002, 0.002])
    E[:, :, n["sneer"]] = up * bilateral((0.015, 0.296, 0.095), (0.014, 0.013, 0.016), (0.0, 0.003, 0.001))
    E[:, :, n["lips_part"]] = mouth_k * (up * np.array([0.0, 0.0025, 0.0]) - lo * np.array([0.0, 0.0025, 0.0]))
    E[:, :, n["eye_wide"]] = sum(_lid_rotation(M, s, "upper", -0.3) + _lid_rotation(M, s, "lower", -0.1)
                                 for s in ("left", "right"))
    E[:, :, n["squint"]] = sum(_lid_rotation(M, s, "lower", 0.25) + _lid_rotation(M, s, "upper", 0.15)
                               for s in ("left", "right")) + bilateral(
        (0.036, 0.315, 0.07), (0.022, 0.02, 0.025), (0.0, 0.0015, 0.0005))
    E[:, :, n["mouth_left"]] = _bump(p, (0, 0.28, 0.09), (0.045, 0.03, 0.04))[:, None] * np.array([0.005, 0.0, -0.0005])
    E[:, :, n["nose_wrinkle"]] = bilateral((0.011, 0.333, 0.093), (0.014, 0.016, 0.02), (0.0, 0.0025, 0.001)) + \
        _bump(p, (0, 0.302, 0.11), (0.02, 0.012, 0.02))[:, None] * np.array([0.0, 0.0015, 0.0])

    # the rest: small random local deformations around the face
    fm = _face_mask(p)
    pool = np.nonzero((M.part == 0) & (fm > 0.9) & (np.abs(x) < 0.055) & (y > 0.245) & (y < 0.39))[0]
    n_named = len(n)
    for k in range(n_named, NUM_EXPR):
        amp = 0.003 * (1.0 / 3.0) ** ((k - n_named) / (NUM_EXPR - n_named - 1))  # 3 mm → 1 mm
        d = np.zeros((V, 3))
        for _ in range(int(rng.integers(2, 4))):
            ci = int(rng.choice(pool))
            c = p[ci]
            r = rng.uniform(0.012, 0.025)
            dirv = normals[ci] * rng.normal() * 0.8 + rng.normal(size=3) * 0.5
            w = _bump(p, c, (r, r, r))[:, None]
            if abs(c[1] - _mouth_line(np.array([c[0]]), x_c)[0]) < r:  # keep the lips from crossing
                w = w * (up if c[1] > _mouth_line(np.array([c[0]]), x_c)[0] else lo)
            d += w * dirv
        E[:, :, k] = amp * d / max(np.linalg.norm(d, axis=1).max(), 1e-12)
    E *= fm[:, None, None]
    for side in ("left", "right"):
        E[M.eyeball[side]] = 0.0
    return E


# ================================================================================================
# Assembly, file writing, cache
# ================================================================================================
_PART2NUM = {"global": 0, "head": 1, "leftEye": 2, "rightEye": 3, "neck": 4, "spine2": 5, "spine3": 6,
             "leftShoulder": 7, "rightShoulder": 8, "jaw": 9, "mouth": 10}


def _special_vertices(M: _Mesh) -> Dict[str, int]:
    """Our vertices for smplx's keypoint vertex ids (nose tip, pupils, ears)."""
    v = M.v
    g = M.part == 0
    nose = np.nonzero(g & (np.abs(v[:, 0]) < 1e-9) & (v[:, 1] > 0.29) & (v[:, 1] < 0.33))[0]
    ear_band = g & (np.abs(v[:, 1] - 0.327) < 0.012) & (np.abs(v[:, 2] + 0.011) < 0.012)
    lear = np.nonzero(ear_band & (v[:, 0] > 0))[0]
    rear = np.nonzero(ear_band & (v[:, 0] < 0))[0]
    return {
        "nose": int(nose[np.argmax(v[nose, 2])]),
        "leye": int(M.eyeball["left"][0]),  # front pole = cornea apex
        "reye": int(M.eyeball["right"][0]),
        "lear": int(lear[np.argmax(v[lear, 0])]),
        "rear": int(rear[np.argmin(v[rear, 0])]),
    }


def build_synthetic_smplx(seed: int = 0) -> Dict[str, np.ndarray]:
    """Generate the synthetic model's arrays (the keys, shapes and dtypes of SMPLX_NEUTRAL_2020.npz).

    Deterministic in ``seed`` (the sculpted template, rig and landmarks are fixed; the seed
    drives the random shape/expression directions and hand PCA). Takes ~5-10 s on one core.

    Returns v_template [10475, 3], f [20908, 3] uint32, shapedirs [10475, 3, 400] (300 shape +
    100 expression), posedirs [10475, 3, 486] (zero: no pose correctives), J_regressor [55, 10475],
    kintree_table [2, 55], weights [10475, 55], lmk_faces_idx [51], lmk_bary_coords [51, 3],
    dynamic_lmk_faces_idx [79, 17], dynamic_lmk_bary_coords [79, 17, 3], hands_components{l,r}
    [45, 45], hands_mean{l,r} [45], vt [N, 2], ft [20908, 3], joint2num / part2num (0-d object
    arrays holding dicts, as in the real file), expportrait_synthetic / expportrait_seed markers.
    """
    seed = int(seed)
    rng = np.random.default_rng(np.random.SeedSequence([0x5E7C, seed]))
    rng_shape, rng_expr, rng_hand = (np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(3))
    lay = _solve_layout()
    M = _build_mesh(lay)
    mir = _mirror_map(M)
    J = _joint_targets(M)
    reg = _joint_regressor(M, J, mir)
    W = _skinning_weights(M)
    lmk_f, lmk_b = _static_landmarks(M)
    dyn_f, dyn_b = _dynamic_contour(M)
    lmk_b, dyn_b = (np.clip(b, 0.0, 1.0) for b in (lmk_b, dyn_b))
    lmk_b, dyn_b = (b / b.sum(-1, keepdims=True) for b in (lmk_b, dyn_b))
    # float32 precision (stored as float64, like the real file): ~40 MB compressed instead of ~75 MB
    shapedirs = np.concatenate([_shape_dirs(M, rng_shape).astype(np.float32),
                                _expression_dirs(M, rng_expr).astype(np.float32)], axis=2)

    # place smplx's keypoint vertices (nose, eyes, ears) at the indices smplx expects
    order = np.arange(len(M.v))
    for name, src in _special_vertices(M).items():
        dst = _SMPLX_VERTEX_IDS[name]
        pos = int(np.nonzero(order == src)[0][0])
        order[pos], order[dst] = order[dst], order[pos]
    new_of_old = np.empty_like(order)
    new_of_old[order] = np.arange(len(order))

    q, r = np.linalg.qr(rng_hand.normal(size=(45, 45)))
    comps_l = (q * np.sign(np.diag(r))).T
    flip = np.tile(np.array([1.0, -1.0, -1.0]), 15)  # mirror axis-angle for the right hand
    parents = np.array(SMPLX_PARENTS, np.int64)
    parents[0] = 4294967295
    out = {
        "v_template": M.v[order].astype(np.float64),
        "f": new_of_old[M.f].astype(np.uint32),
        "shapedirs": shapedirs[order].astype(np.float64),
        "posedirs": np.zeros((NUM_VERTICES, 3, 9 * (NUM_JOINTS - 1))),
        "J_regressor": reg[:, order],
        "kintree_table": np.stack([parents, np.arange(NUM_JOINTS, dtype=np.int64)]),
        "weights": W[order],
        "lmk_faces_idx": lmk_f.astype(np.int64),
        "lmk_bary_coords": lmk_b.astype(np.float64),
        "dynamic_lmk_faces_idx": dyn_f.astype(np.int64),
        "dynamic_lmk_bary_coords": dyn_b.astype(np.float64),
        "hands_componentsl": comps_l,
        "hands_componentsr": comps_l * flip[None, :],
        "hands_meanl": np.zeros(45),
        "hands_meanr": np.zeros(45),
        "vt": M.vt.astype(np.float64),
        "ft": M.ft.astype(np.uint32),
        "joint2num": np.array({name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}, dtype=object),
        "part2num": np.array(dict(_PART2NUM), dtype=object),
        "expportrait_synthetic": np.array(SYNTHETIC_VERSION, dtype=np.int64),
        "expportrait_seed": np.array(seed, dtype=np.int64),
        "expportrait_source": np.array(_source_fingerprint(), dtype=np.int64),
    }
    return out


def _source_fingerprint() -> int:
    """63-bit hash of this module's source: a cached model made by other code is regenerated, even
    when someone changed the geometry and forgot to bump SYNTHETIC_VERSION."""
    import hashlib

    digest = hashlib.sha256(Path(__file__).read_bytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _write_npz(fh, arrays: Dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with fast deflate (level 1): ~40 MB in ~3 s instead of ~15 s."""
    import zipfile

    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as entry:
                # the two name tables are object arrays, pickled exactly as in the real file
                np.lib.format.write_array(entry, np.asanyarray(arr), allow_pickle=arr.dtype == object)


def write_synthetic_smplx(path: str | Path, seed: int = 0) -> Path:
    """Generate the model and write it to ``path`` atomically (temp file + rename). Returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = build_synthetic_smplx(seed)
    from ..io.atomic import atomic_path

    with atomic_path(path, suffix=".tmp") as tmp, open(tmp, "wb") as fh:
        _write_npz(fh, arrays)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def _cached_ok(path: Path, seed: int) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return (int(data["expportrait_synthetic"]) == SYNTHETIC_VERSION
                    and int(data["expportrait_seed"]) == int(seed)
                    and "expportrait_source" in data.files
                    and int(data["expportrait_source"]) == _source_fingerprint()
                    and data["v_template"].shape == (NUM_VERTICES, 3))
    except Exception:  # missing, truncated or foreign file: regenerate
        return False


def ensure_synthetic_smplx(folder: str | Path | None = None, seed: int = 0) -> Path:
    """Path of the cached synthetic model in ``folder`` (default: expportrait_core.paths.cache_dir()),
    generating it when missing or when its stored version/seed differ. Safe with concurrent
    callers: each writes a private temp file and renames it into place."""
    if folder is None:
        from ..paths import cache_dir

        folder = cache_dir()
    path = Path(folder) / SYNTHETIC_FILENAME
    if _cached_ok(path, seed):
        return path
    return write_synthetic_smplx(path, seed)
