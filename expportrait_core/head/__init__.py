"""SMPL-X head proxy with dense static and dynamic displacement (paper §2)."""
from .params import POSE_FIELDS, POSE_JOINTS, HeadParams
from .proxy import HeadOutput, HeadProxy, LandmarkRig, ProxyConfig, RegionConfig, load_head_proxy, synthetic_head_proxy

__all__ = [
    "POSE_FIELDS",
    "POSE_JOINTS",
    "HeadOutput",
    "HeadParams",
    "HeadProxy",
    "LandmarkRig",
    "ProxyConfig",
    "RegionConfig",
    "load_head_proxy",
    "synthetic_head_proxy",
]
