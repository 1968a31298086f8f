"""Landmark layouts: iBUG-68, its mapping onto the SMPL-X head proxy, and insightface 106 → 68.

One table, :data:`IBUG68_TABLE`, documents every point of the 68-point iBUG (300-W) layout that
all backends return:

* ``name`` / ``region``: what the point is. "Left" and "right" are the **subject's** (iBUG
  convention): the subject's right eye (points 36-41) appears on the image's left.
* ``smplx``: where SMPL-X's landmark embedding puts the point. SMPL-X ships its landmark embedding
  in iBUG-68 order, split in two parts (``SMPLX_*.npz`` keys):

  - points 0..16 (jaw contour) come from the *dynamic* contour embedding
    ``dynamic_lmk_faces_idx [79, 17]`` / ``dynamic_lmk_bary_coords [79, 17, 3]``: one row per
    head yaw from -39° to +39°, because a 2D detector puts the contour on the visible silhouette,
    which slides over the surface as the head turns (``smplx.lbs.find_dynamic_lmk_idx_and_bcoords``
    picks the row);
  - points 17..67 come from the 51 *static* ones ``lmk_faces_idx [51]`` / ``lmk_bary_coords [51, 3]``
    (static row ``k`` is iBUG point ``17 + k``).

  ``smplx.SMPLX(..., use_face_contour=True)`` returns them in ``output.joints`` after the 55 body
  joints and 21 extra vertex joints: static 51 at joint indices 76..126, contour 17 at 127..143
  (column ``smplx_joint``).
* ``weight``: per-point confidence for landmark fitting (the backend's detection confidence
  multiplies it, see :data:`LANDMARK_WEIGHTS_68`). Contour points are ambiguous along the
  silhouette (and the dynamic embedding is a coarse yaw lookup), so they weigh least; nose and
  eye corners are rigid and well localised (they carry head pose); mouth corners and lips weigh
  most because expression and jaw opening are read from them; eyelids and brows move with
  expression but are noisier (brows sit on a hair boundary).

``INSIGHTFACE106_TO_IBUG68`` maps insightface's ``2d106det`` layout onto iBUG-68. Source: the
community mapping used by ByteDance's LatentSync (``latentsync/utils/face_detector.py``,
``LMK_ADAPT_ORIGIN_ORDER``: its first 30 entries, contour + brows + nose bridge) and, complete
with eyes and mouth, by roop-unleashed (``roop/processors/Enhance_DMDNet.py``). It agrees with
the index groups insightface users rely on (LivePortrait's ``parse_pt2_from_pt106``: eye groups
33..42 and 87..96, mouth corners 52 and 61). The 106 layout has 33 contour points (every other
one is kept), 9 points per brow (upper edge kept), and its nose/mouth points are a superset of
iBUG's, so the mapping is a pure index selection with no interpolation.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import numpy as np


class LandmarkInfo(NamedTuple):
    index: int  #: iBUG-68 index
    name: str
    region: str  #: contour | brow | nose | eye | mouth_outer | mouth_inner
    smplx: Tuple[str, int]  #: ("dynamic", contour column 0..16) or ("static", row 0..50)
    smplx_joint: int  #: index in smplx.SMPLX(use_face_contour=True) output.joints
    weight: float  #: fitting weight (before the backend's confidence)


def _row(i: int, name: str, region: str, weight: float) -> LandmarkInfo:
    if i < 17:
        return LandmarkInfo(i, name, region, ("dynamic", i), 127 + i, weight)
    return LandmarkInfo(i, name, region, ("static", i - 17), 76 + (i - 17), weight)


# fmt: off
#: The documented iBUG-68 ↔ SMPL-X table (one row per point, in iBUG order).
IBUG68_TABLE: Tuple[LandmarkInfo, ...] = (
    # jaw contour, subject's right ear (image left) → chin (8) → subject's left ear; dynamic contour
    _row(0, "contour_r8", "contour", 0.3), _row(1, "contour_r7", "contour", 0.3),
    _row(2, "contour_r6", "contour", 0.3), _row(3, "contour_r5", "contour", 0.3),
    _row(4, "contour_r4", "contour", 0.3), _row(5, "contour_r3", "contour", 0.3),
    _row(6, "contour_r2", "contour", 0.3), _row(7, "contour_r1", "contour", 0.5),
    _row(8, "chin", "contour", 0.5),
    _row(9, "contour_l1", "contour", 0.5), _row(10, "contour_l2", "contour", 0.3),
    _row(11, "contour_l3", "contour", 0.3), _row(12, "contour_l4", "contour", 0.3),
    _row(13, "contour_l5", "contour", 0.3), _row(14, "contour_l6", "contour", 0.3),
    _row(15, "contour_l7", "contour", 0.3), _row(16, "contour_l8", "contour", 0.3),
    # brows (upper edge), outer → inner for the right brow, inner → outer for the left one
    _row(17, "brow_r_outer", "brow", 0.7), _row(18, "brow_r_2", "brow", 0.7),
    _row(19, "brow_r_mid", "brow", 0.7), _row(20, "brow_r_4", "brow", 0.7),
    _row(21, "brow_r_inner", "brow", 0.7),
    _row(22, "brow_l_inner", "brow", 0.7), _row(23, "brow_l_4", "brow", 0.7),
    _row(24, "brow_l_mid", "brow", 0.7), _row(25, "brow_l_2", "brow", 0.7),
    _row(26, "brow_l_outer", "brow", 0.7),
    # nose bridge top → tip, then the nostril base right → left
    _row(27, "nose_bridge_1", "nose", 1.0), _row(28, "nose_bridge_2", "nose", 1.0),
    _row(29, "nose_bridge_3", "nose", 1.0), _row(30, "nose_tip", "nose", 1.0),
    _row(31, "nose_base_r_outer", "nose", 0.9), _row(32, "nose_base_r", "nose", 0.9),
    _row(33, "nose_base_mid", "nose", 0.9), _row(34, "nose_base_l", "nose", 0.9),
    _row(35, "nose_base_l_outer", "nose", 0.9),
    # right eye: outer corner, upper lid ×2, inner corner, lower lid ×2
    _row(36, "eye_r_outer", "eye", 1.0), _row(37, "eye_r_upper_outer", "eye", 0.8),
    _row(38, "eye_r_upper_inner", "eye", 0.8), _row(39, "eye_r_inner", "eye", 1.0),
    _row(40, "eye_r_lower_inner", "eye", 0.8), _row(41, "eye_r_lower_outer", "eye", 0.8),
    # left eye: inner corner, upper lid ×2, outer corner, lower lid ×2
    _row(42, "eye_l_inner", "eye", 1.0), _row(43, "eye_l_upper_inner", "eye", 0.8),
    _row(44, "eye_l_upper_outer", "eye", 0.8), _row(45, "eye_l_outer", "eye", 1.0),
    _row(46, "eye_l_lower_outer", "eye", 0.8), _row(47, "eye_l_lower_inner", "eye", 0.8),
    # outer lip contour, clockwise in the image from the right mouth corner
    _row(48, "mouth_r_corner", "mouth_outer", 1.5), _row(49, "lip_upper_r_outer", "mouth_outer", 1.2),
    _row(50, "lip_upper_r_inner", "mouth_outer", 1.2), _row(51, "lip_upper_mid", "mouth_outer", 1.2),
    _row(52, "lip_upper_l_inner", "mouth_outer", 1.2), _row(53, "lip_upper_l_outer", "mouth_outer", 1.2),
    _row(54, "mouth_l_corner", "mouth_outer", 1.5), _row(55, "lip_lower_l_outer", "mouth_outer", 1.2),
    _row(56, "lip_lower_l_inner", "mouth_outer", 1.2), _row(57, "lip_lower_mid", "mouth_outer", 1.2),
    _row(58, "lip_lower_r_inner", "mouth_outer", 1.2), _row(59, "lip_lower_r_outer", "mouth_outer", 1.2),
    # inner lip contour (the lip gap: jaw opening and lip closure)
    _row(60, "mouth_inner_r_corner", "mouth_inner", 1.5), _row(61, "lip_inner_upper_r", "mouth_inner", 1.3),
    _row(62, "lip_inner_upper_mid", "mouth_inner", 1.3), _row(63, "lip_inner_upper_l", "mouth_inner", 1.3),
    _row(64, "mouth_inner_l_corner", "mouth_inner", 1.5), _row(65, "lip_inner_lower_l", "mouth_inner", 1.3),
    _row(66, "lip_inner_lower_mid", "mouth_inner", 1.3), _row(67, "lip_inner_lower_r", "mouth_inner", 1.3),
)
# fmt: on

#: ``[68]`` float32 fitting weights in iBUG order (``IBUG68_TABLE[i].weight``).
LANDMARK_WEIGHTS_68: np.ndarray = np.array([r.weight for r in IBUG68_TABLE], dtype=np.float32)
LANDMARK_WEIGHTS_68.setflags(write=False)

#: ``iBUG index -> ("dynamic" | "static", index into that SMPL-X embedding)`` (see module docstring).
IBUG68_TO_SMPLX = {r.index: r.smplx for r in IBUG68_TABLE}

#: iBUG indices of the static SMPL-X landmarks (static row k = iBUG 17 + k) and of the contour.
SMPLX_STATIC_IBUG = np.arange(17, 68)
SMPLX_DYNAMIC_IBUG = np.arange(0, 17)
#: ``[68]`` index into ``smplx.SMPLX(use_face_contour=True)(...).joints`` for each iBUG point.
IBUG68_TO_SMPLX_JOINT = np.array([r.smplx_joint for r in IBUG68_TABLE], dtype=np.int64)

#: Index groups by region (iBUG order).
IBUG68_REGIONS = {
    "contour": list(range(0, 17)),
    "brow_r": list(range(17, 22)),
    "brow_l": list(range(22, 27)),
    "nose": list(range(27, 36)),
    "eye_r": list(range(36, 42)),
    "eye_l": list(range(42, 48)),
    "mouth_outer": list(range(48, 60)),
    "mouth_inner": list(range(60, 68)),
}

# fmt: off
#: Permutation for a horizontal image flip: ``flipped_landmarks = mirror(landmarks)[IBUG68_FLIP]``.
IBUG68_FLIP = np.array(
    [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,       # contour
     26, 25, 24, 23, 22, 21, 20, 19, 18, 17,                          # brows
     27, 28, 29, 30, 35, 34, 33, 32, 31,                              # nose
     45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,                  # eyes
     54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,                  # outer lips
     64, 63, 62, 61, 60, 67, 66, 65],                                 # inner lips
    dtype=np.int64)

#: insightface ``2d106det`` index for each iBUG-68 point (source: module docstring).
INSIGHTFACE106_TO_IBUG68 = np.array(
    [1, 10, 12, 14, 16, 3, 5, 7, 0, 23, 21, 19, 32, 30, 28, 26, 17,  # contour (every other of 33)
     43, 48, 49, 51, 50,                                              # right brow (image left)
     102, 103, 104, 105, 101,                                         # left brow
     72, 73, 74, 86, 78, 79, 80, 85, 84,                              # nose bridge + base
     35, 41, 42, 39, 37, 36,                                          # right eye (image left)
     89, 95, 96, 93, 91, 90,                                          # left eye
     52, 64, 63, 71, 67, 68, 61, 58, 59, 53, 56, 55,                  # outer lips
     65, 66, 62, 70, 69, 57, 60, 54],                                 # inner lips
    dtype=np.int64)
# fmt: on


def ibug68_from_insightface106(points106: np.ndarray) -> np.ndarray:
    """Select the iBUG-68 points out of insightface's 106-point layout.

    points106: ``[..., 106, D]`` → ``[..., 68, D]``.
    """
    points106 = np.asarray(points106)
    if points106.shape[-2] != 106:
        raise ValueError(f"expected 106 points on axis -2, got shape {points106.shape}")
    return points106[..., INSIGHTFACE106_TO_IBUG68, :]


def split_for_smplx(landmarks68: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split iBUG-68 landmarks into SMPL-X's (static, dynamic-contour) order.

    landmarks68: ``[..., 68, D]`` → ``([..., 51, D], [..., 17, D])``; concatenating the two gives
    the order of ``smplx.SMPLX(use_face_contour=True)`` face landmarks (joints 76..143).
    """
    landmarks68 = np.asarray(landmarks68)
    return landmarks68[..., 17:, :], landmarks68[..., :17, :]


def five_points_from_68(landmarks68: np.ndarray) -> np.ndarray:
    """The 5 alignment points (image-left eye, image-right eye, nose tip, left/right mouth corner).

    landmarks68: ``[..., 68, 2]`` → ``[..., 5, 2]``, the order of insightface's ``kps`` and of the
    ArcFace template.
    """
    l = np.asarray(landmarks68, dtype=np.float32)
    return np.stack(
        [l[..., 36:42, :].mean(-2), l[..., 42:48, :].mean(-2), l[..., 30, :], l[..., 48, :], l[..., 54, :]],
        axis=-2,
    )


def mirror_landmarks(landmarks68: np.ndarray, width: float) -> np.ndarray:
    """Landmarks of the horizontally flipped image (continuous coordinates, image ``width`` px).

    landmarks68: ``[..., 68, 2]`` → ``[..., 68, 2]`` with x → width - x and points relabelled.
    """
    l = np.array(landmarks68, dtype=np.float32, copy=True)
    l[..., 0] = width - l[..., 0]
    return l[..., IBUG68_FLIP, :]


__all__ = [
    "IBUG68_FLIP",
    "IBUG68_REGIONS",
    "IBUG68_TABLE",
    "IBUG68_TO_SMPLX",
    "IBUG68_TO_SMPLX_JOINT",
    "INSIGHTFACE106_TO_IBUG68",
    "LANDMARK_WEIGHTS_68",
    "LandmarkInfo",
    "SMPLX_DYNAMIC_IBUG",
    "SMPLX_STATIC_IBUG",
    "five_points_from_68",
    "ibug68_from_insightface106",
    "mirror_landmarks",
    "split_for_smplx",
]
