"""Driving-video tracking (paper §2 reconstruction of the driving subject): per-frame head pose,
jaw, eyelids/expression and optional dynamic detail, fast and temporally stable on a CPU.

    from expportrait_core.track import TrackConfig, track_video_file
    result = track_video_file(proxy, "driving.mp4", analyzer)
    save_motion(result.motion, "driving_motion.safetensors")

Stages: :mod:`.landmarks` (detect once, re-crop), :mod:`.identity` (driving subject fitted once on
keyframes), :mod:`.rig` + :mod:`.solve` (precomputed landmark model, batched Levenberg–Marquardt),
:mod:`.smooth` (data-aware temporal smoothing, One-Euro), :mod:`.detail` (dynamic offsets from
normal maps), :mod:`.metrics` (jitter), :mod:`.preview` (overlay).
"""
from .config import SMOOTHING_MODES, TRACK_MODES, TrackConfig
from .metrics import jitter_metrics, mouth_gap, pearson
from .pipeline import TrackResult, track_landmarks, track_video, track_video_file
from .preview import overlay_preview

__all__ = [
    "SMOOTHING_MODES",
    "TRACK_MODES",
    "TrackConfig",
    "TrackResult",
    "jitter_metrics",
    "mouth_gap",
    "overlay_preview",
    "pearson",
    "track_landmarks",
    "track_video",
    "track_video_file",
]
