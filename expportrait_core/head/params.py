"""Typed parameter containers for the head proxy.

All tensors carry a leading batch (frame) dimension ``B``. Poses are axis-angle (radians) in
SMPL-X's joint frames. Joints used by the bust (SMPL-X indices): 0 pelvis (``global_orient``),
12 neck (``neck_pose``), 15 head (``head_pose``), 22 jaw (``jaw_pose``), 23/24 left/right eye
(``leye_pose``/``reye_pose``). Every other body/hand joint stays at rest (flat hands).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Dict, Optional

import torch

POSE_FIELDS = ("global_orient", "neck_pose", "head_pose", "jaw_pose", "leye_pose", "reye_pose")

# SMPL-X joint index of each pose field.
POSE_JOINTS = {
    "global_orient": 0,
    "neck_pose": 12,
    "head_pose": 15,
    "jaw_pose": 22,
    "leye_pose": 23,
    "reye_pose": 24,
}


@dataclass
class HeadParams:
    """Per-frame SMPL-X parameters of the bust.

    betas: [B, S] shape coefficients (S <= 300; broadcast from [1, S] allowed)
    expression: [B, E] expression coefficients (E <= 100)
    global_orient, neck_pose, head_pose, jaw_pose, leye_pose, reye_pose: [B, 3] axis-angle
    transl: [B, 3] world translation (metres)
    """

    betas: torch.Tensor
    expression: torch.Tensor
    global_orient: torch.Tensor
    neck_pose: torch.Tensor
    head_pose: torch.Tensor
    jaw_pose: torch.Tensor
    leye_pose: torch.Tensor
    reye_pose: torch.Tensor
    transl: torch.Tensor

    @classmethod
    def zeros(
        cls,
        batch: int = 1,
        num_betas: int = 300,
        num_expression: int = 100,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "HeadParams":
        z = lambda n: torch.zeros(batch, n, device=device, dtype=dtype)  # noqa: E731
        return cls(
            betas=z(num_betas),
            expression=z(num_expression),
            **{name: z(3) for name in POSE_FIELDS},
            transl=z(3),
        )

    @property
    def batch_size(self) -> int:
        return max(getattr(self, f.name).shape[0] for f in fields(self))

    def to(self, device=None, dtype=None) -> "HeadParams":
        return HeadParams(**{k: v.to(device=device, dtype=dtype) for k, v in self.as_dict().items()})

    def as_dict(self) -> Dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def detach(self) -> "HeadParams":
        return HeadParams(**{k: v.detach().clone() for k, v in self.as_dict().items()})

    def index(self, idx) -> "HeadParams":
        """Select frames (an int, slice or index tensor); broadcast [1, ...] fields are kept."""
        out = {}
        for k, v in self.as_dict().items():
            if v.shape[0] == 1 and self.batch_size > 1:
                out[k] = v
            else:
                sel = v[idx]
                out[k] = sel[None] if sel.ndim == 1 else sel
        return HeadParams(**out)

    def expand(self, batch: int) -> "HeadParams":
        return HeadParams(**{k: v.expand(batch, -1) if v.shape[0] == 1 else v for k, v in self.as_dict().items()})

    def replace(self, **changes: torch.Tensor) -> "HeadParams":
        return replace(self, **changes)

    @staticmethod
    def cat(items: "list[HeadParams]") -> "HeadParams":
        keys = items[0].as_dict().keys()
        return HeadParams(**{k: torch.cat([getattr(p, k).expand(p.batch_size, -1) for p in items], 0) for k in keys})

    @classmethod
    def from_dict(cls, d: Dict[str, torch.Tensor], num_betas: Optional[int] = None, num_expression: Optional[int] = None) -> "HeadParams":
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise KeyError(f"head parameters missing: {missing}")
        return cls(**{f.name: d[f.name] for f in fields(cls)})
