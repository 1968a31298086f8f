"""Driving-video tracking node: IMAGE batch → MOTION (+ overlay preview of the tracked mesh).

Save/Load Motion live in ``nodes/files.py``.
"""
from __future__ import annotations

import logging

from ._comfy import CATEGORY, comfy_progress, image_to_numpy, numpy_to_image

log = logging.getLogger(__name__)

_SMOOTHING = {
    "offline (smoothest)": ("offline", 1.0),
    "offline light": ("offline", 0.3),
    "causal (live)": ("causal", 1.0),
    "none": ("none", 0.0),
}


class ExpPortraitTrackDrivingVideo:
    """Tracks head pose, jaw, eyelids and expression of the driving video (and, in detail mode,
    per-frame dynamic offsets from normal maps)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "proxy": ("EXPP_PROXY", {"tooltip": "Head proxy from 'ExpPortrait Load SMPL-X'."}),
                "images": ("IMAGE", {"tooltip": "Driving video frames (e.g. from a video loader), all the same size, one face."}),
                "face_analyzer": ("EXPP_FACE_ANALYZER", {"tooltip": "Face analyzer from 'ExpPortrait Face Analyzer' "
                                                                    "(detects on the first frame and when the face is lost)."}),
                "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                  "tooltip": "Frame rate of the driving video (stored in the motion; sets the filters' time constants)."}),
                "mode": (["fast", "detail"], {"default": "fast",
                                              "tooltip": "fast: landmarks only, real time on a CPU. detail: also per-frame dynamic "
                                                         "expression offsets fitted to the normal maps (needs 'normal_maps'; slower)."}),
                "smoothing": (list(_SMOOTHING), {"default": "offline (smoothest)",
                                                 "tooltip": "Temporal stability. offline: data-aware smoother over a sliding window "
                                                            "(strong on head pose, light on expression). causal: previous-frame "
                                                            "penalties only (no look-ahead). none: independent per-frame fits."}),
                "preview": ("BOOLEAN", {"default": True, "tooltip": "Render the overlay preview (the tracked mesh over the frames)."}),
            },
            "optional": {
                "normal_maps": ("IMAGE", {"tooltip": "Detail mode: normal maps of the same frames from any normal estimator "
                                                     "(rgb = 0.5·n + 0.5, x right, y up, z towards the viewer; black background)."}),
                "identity": ("EXPP_IDENTITY", {"tooltip": "The driving person's identity if already fitted; otherwise it is "
                                                          "fitted once on a few keyframes of the clip."}),
            },
        }

    RETURN_TYPES = ("EXPP_MOTION", "IMAGE")
    RETURN_NAMES = ("motion", "preview")
    FUNCTION = "track"
    CATEGORY = f"{CATEGORY}/Motion"
    DESCRIPTION = ("Per-frame SMPL-X head pose (neck/head), jaw, expression (incl. eyelids) of the driving video, "
                   "temporally smoothed; faceless frames are bridged and reported. Output: a MOTION for transfer/"
                   "rendering, and a preview of the tracked mesh over the frames.")

    def track(self, proxy, images, face_analyzer, fps=30.0, mode="fast", smoothing="offline (smoothest)", preview=True,
              normal_maps=None, identity=None):
        from expportrait_core.track import TrackConfig, overlay_preview, track_video

        smooth, strength = _SMOOTHING.get(smoothing, ("offline", 1.0))
        cfg = TrackConfig(mode=mode, smoothing=smooth, smoothing_strength=strength)
        frames = image_to_numpy(images)
        normals = None
        if normal_maps is not None:
            normals = normal_maps.detach().cpu().float().numpy()
            if len(normals) != len(frames):
                from expportrait_core.errors import ExpPortraitError

                raise ExpPortraitError(f"normal_maps has {len(normals)} frames but images has {len(frames)}; give one per frame.")
        n = len(frames)
        steps = n + (n if preview else 0)
        bar = comfy_progress(max(1, steps))
        result = track_video(proxy, frames, face_analyzer, fps=float(fps), config=cfg, normal_maps=normals,
                             identity=identity, progress=lambda i, total, p=None: bar(i, steps, p))
        if result.lost_frames:
            log.warning("ExpPortrait tracking: face lost in %d frames %s (bridged).", len(result.lost_frames), result.lost_frames[:20])
        if preview:
            over = overlay_preview(frames, result, proxy, progress=lambda i, total, p=None: bar(n + i, steps, p))
        else:
            over = frames[:1]
        return (result.motion, numpy_to_image(over))


NODE_CLASS_MAPPINGS = {"ExpPortraitTrackDrivingVideo": ExpPortraitTrackDrivingVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"ExpPortraitTrackDrivingVideo": "ExpPortrait Track Driving Video"}
