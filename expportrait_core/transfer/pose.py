"""Pose transfer: driving head/eye/jaw motion onto the reference's pose.

Conventions (shared with fitting and tracking): the rigid head rotation of a frame is split
evenly between ``neck_pose`` and ``head_pose``; ``global_orient`` is the bust's body turn;
``transl`` the bust translation; eyes via ``leye_pose``/``reye_pose``; jaw via ``jaw_pose`` (+x =
opening). Each rotation joint (global, neck, head) is retargeted on its own with the formulas
below, so an even split stays even and any split is reproduced exactly where the formulas copy.

Modes (``a`` = the anchor frame, ``s`` = the channel's strength, ``ref`` = the reference):
- ``relative`` (default): the driver's change since the anchor frame is applied on top of the
  reference's own pose — rotations ``R_t = (R_i R_aᵀ)^s R_ref`` (per joint, in its parent frame), translation
  ``t_ref + s (t_i − t_a)``, gaze ``ref + s (eye_i − eye_a)``; so the anchor frame reproduces the
  reference's pose exactly;
- ``absolute``: the driver's pose itself, blended from the reference's by ``s``
  (``R_t = (R_i R_refᵀ)^s R_ref``, ``t_ref + s (t_i − t_ref)``); ``s = 1`` copies it.
The jaw is expression-like: ``s (ω_i − ω_n)`` relative to the neutral-calibration frame ``n``
(opening clamped at 0 so a calibrated frame never pushes the jaw through the upper teeth), or
``s ω_i`` without calibration.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..errors import ExpPortraitError
from ..head.params import HeadParams
from .rotations import aa_to_matrix, matrix_to_aa

STRENGTH_KEYS = ("expression", "jaw", "eyes", "head_rotation", "translation")
POSE_MODES = ("relative", "absolute")


def resolve_strengths(strengths: Optional[Dict[str, float]]) -> Dict[str, float]:
    """All five per-channel strengths (default 1.0); unknown keys are a user error."""
    out = {k: 1.0 for k in STRENGTH_KEYS}
    for k, v in (strengths or {}).items():
        if k not in out:
            raise ExpPortraitError(f"Unknown strength '{k}'; use any of {', '.join(STRENGTH_KEYS)}.")
        out[k] = float(v)
    return out


def _power(R: torch.Tensor, s: float) -> torch.Tensor:
    if s == 1.0:
        return R
    return aa_to_matrix(matrix_to_aa(R) * s)


def head_rotation(params: HeadParams) -> torch.Tensor:
    """[B, 3, 3] rigid head rotation R(neck) · R(head)."""
    return aa_to_matrix(params.neck_pose) @ aa_to_matrix(params.head_pose)


def split_head_rotation(R: torch.Tensor) -> torch.Tensor:
    """The half axis-angle [B, 3] written to both neck_pose and head_pose."""
    return matrix_to_aa(R) / 2


def transfer_pose(
    reference: HeadParams,
    driver: HeadParams,
    *,
    mode: str = "relative",
    anchor_frame: int = 0,
    neutral_frame: Optional[int] = 0,
    strengths: Optional[Dict[str, float]] = None,
) -> Dict[str, torch.Tensor]:
    """Retargeted pose fields for every driving frame.

    reference: HeadParams batch 1 (the identity's own pose); driver: HeadParams batch T.
    anchor_frame: frame the ``relative`` mode measures changes from; neutral_frame: calibration
    frame of the jaw (None = none). Returns a dict with ``global_orient, neck_pose, head_pose,
    jaw_pose, leye_pose, reye_pose, transl``, each [T, 3] (driver's dtype)."""
    if mode not in POSE_MODES:
        raise ExpPortraitError(f"pose_mode must be one of {POSE_MODES}, got '{mode}'.")
    s = resolve_strengths(strengths)
    T = driver.batch_size
    drv = driver.expand(T)
    dt = drv.jaw_pose.dtype
    ref = reference.to(dtype=dt).expand(1)
    if mode == "relative":
        a = int(anchor_frame)
        base = drv.index(slice(a, a + 1))
    else:
        base = ref
    # each rotation joint separately: exact for any neck/head split, and the anchor (relative) or
    # strength 1 (absolute) reproduces the reference's / driver's joint rotations exactly
    rot = {}
    for name in ("global_orient", "neck_pose", "head_pose"):
        R_i = aa_to_matrix(getattr(drv, name))
        R_b = aa_to_matrix(getattr(base, name))
        R_r = aa_to_matrix(getattr(ref, name))
        rot[name] = matrix_to_aa(_power(R_i @ R_b.transpose(1, 2), s["head_rotation"]) @ R_r)
    t_base, le_base, re_base = base.transl, base.leye_pose, base.reye_pose
    transl = ref.transl + s["translation"] * (drv.transl - t_base)
    leye = ref.leye_pose + s["eyes"] * (drv.leye_pose - le_base)
    reye = ref.reye_pose + s["eyes"] * (drv.reye_pose - re_base)
    if neutral_frame is None:
        jaw = s["jaw"] * drv.jaw_pose
    else:
        n = int(neutral_frame)
        jaw = s["jaw"] * (drv.jaw_pose - drv.jaw_pose[n : n + 1])
        jaw = torch.cat([jaw[:, :1].clamp_min(0.0), jaw[:, 1:]], 1)
    return {
        "global_orient": rot["global_orient"],
        "neck_pose": rot["neck_pose"],
        "head_pose": rot["head_pose"],
        "jaw_pose": jaw,
        "leye_pose": leye,
        "reye_pose": reye,
        "transl": transl,
    }
