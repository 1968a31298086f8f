"""Identity-adaptive expression transfer (paper §4) and the expression editor.

- :func:`transfer_motion` — a driving motion retargeted to a reference identity by deformation
  transfer (training-free default), the learned module, or parameter copy; pose transfer
  relative/absolute with per-channel strengths and neutral calibration.
- :class:`TransferModel`, :func:`load_transfer_model` — the learned encoder E + per-vertex MLP G;
  trained by ``python -m expportrait_core train-transfer`` (:mod:`.train`).
- :func:`edit_motion`, :class:`ExpressionEdit`, :func:`save_preset`, :func:`load_preset` — named
  controls (jaw, head, gaze, eyelids, expression directions) as offsets, constants or keyframes.
- :mod:`.synthetic` — synthetic identities, motions and identity-dependent detail (ground truth).
"""
from .core import METHOD_LABELS, METHODS, TransferConfig, clear_caches, deformation_transfer_for, transfer_motion
from .deformation import DeformationTransfer, DeformationTransferConfig
from .editor import (ExpressionEdit, apply_edit, available_controls, build_edit, edit_motion, load_preset,
                     parse_controls, parse_keyframes, preview_frames, save_preset, template_identity)
from .learned import TransferModel, TransferModelConfig, load_transfer_model
from .pose import STRENGTH_KEYS, transfer_pose
from .synthetic import DetailConfig, SyntheticDetail, random_identity, synthetic_motion

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "STRENGTH_KEYS",
    "DeformationTransfer",
    "DeformationTransferConfig",
    "DetailConfig",
    "ExpressionEdit",
    "SyntheticDetail",
    "TransferConfig",
    "TransferModel",
    "TransferModelConfig",
    "apply_edit",
    "available_controls",
    "build_edit",
    "clear_caches",
    "deformation_transfer_for",
    "edit_motion",
    "load_preset",
    "load_transfer_model",
    "parse_controls",
    "parse_keyframes",
    "preview_frames",
    "random_identity",
    "save_preset",
    "synthetic_motion",
    "template_identity",
    "transfer_motion",
    "transfer_pose",
]
