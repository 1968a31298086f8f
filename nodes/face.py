"""Face-analysis nodes: analyzer loader, landmark detection with preview, portrait cropping.

Socket types: ``EXPP_FACE_ANALYZER`` (an ``expportrait_core.face.FaceAnalyzer``),
``EXPP_LANDMARKS`` (an ``expportrait_core.face.VideoFaces``: one face followed through the batch,
68 iBUG landmarks per frame) and ``EXPP_CROP`` (a list with one
``expportrait_core.face.CropTransform`` per frame, mapping crop pixels to original pixels).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from expportrait_core.face import (
    BoxSmoothing,
    draw_video_faces,
    frame_portraits,
    load_face_analyzer,
    parse_box,
    track_faces_in_video,
)
from expportrait_core.face.insightface_backend import KNOWN_PACKS, list_packs

from ._comfy import CATEGORY, comfy_progress, folder_for, image_to_numpy, numpy_to_image

_CAT = f"{CATEGORY}/Face"


def _pack_choices() -> List[str]:
    found = list_packs(folder_for("insightface"))
    return ["buffalo_l", "antelopev2"] + sorted(p for p in set(found) | set(KNOWN_PACKS) if p not in ("buffalo_l", "antelopev2"))


class ExpPortraitFaceAnalyzer:
    """Loads a face analyzer (detector + 68 landmarks + identity embedding)."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "backend": (["auto", "insightface", "dlib"], {
                    "default": "auto",
                    "tooltip": "auto: insightface when the model pack is installed, else dlib (works offline "
                               "with the face_recognition_models package). insightface: ONNX pack from "
                               "models/insightface/models/<pack>/. dlib: HOG/CNN detector, 68 landmarks, 128-D descriptor.",
                }),
                "model_pack": (_pack_choices(), {
                    "default": "buffalo_l",
                    "tooltip": "insightface model pack folder in ComfyUI/models/insightface/models/ "
                               "(buffalo_l: det_10g, 2d106det, 1k3d68, w600k_r50). Ignored by dlib.",
                }),
                "providers": (["auto", "cpu", "cuda"], {
                    "default": "auto",
                    "tooltip": "onnxruntime device for insightface: auto uses CUDA when onnxruntime-gpu can, else CPU.",
                }),
                "dlib_detector": (["hog", "cnn"], {
                    "default": "hog",
                    "tooltip": "dlib face detector: hog is fast (~30 ms per 512² frame) for frontal faces; cnn "
                               "finds turned faces too but takes seconds per frame on a CPU.",
                }),
            }
        }

    RETURN_TYPES = ("EXPP_FACE_ANALYZER",)
    RETURN_NAMES = ("face_analyzer",)
    FUNCTION = "load"
    CATEGORY = _CAT
    DESCRIPTION = "Face detector, 68 iBUG landmarks and identity embedding (insightface or dlib)."

    def load(self, backend: str, model_pack: str, providers: str, dlib_detector: str) -> Tuple[Any]:
        analyzer = load_face_analyzer(
            backend=backend,
            model_pack=model_pack,
            models_dir=folder_for("insightface"),
            providers=None if providers == "auto" else [providers],
            dlib_detector=dlib_detector,
        )
        return (analyzer,)


class ExpPortraitDetectLandmarks:
    """68 landmarks of one face through an IMAGE batch (a video or a single image), with a preview."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "face_analyzer": ("EXPP_FACE_ANALYZER", {"tooltip": "From 'ExpPortrait Face Analyzer'."}),
                "images": ("IMAGE", {"tooltip": "One image or the frames of a video."}),
                "face_index": ("INT", {
                    "default": 0, "min": 0, "max": 64,
                    "tooltip": "Which face: 0 = largest, 1 = second largest... chosen on the first frame and "
                               "followed across frames (the nearest face to its previous position).",
                }),
                "on_missing": (["error", "interpolate"], {
                    "default": "error",
                    "tooltip": "Frames where the face is not found: error lists them; interpolate fills them "
                               "from neighbouring frames (shown grey in the preview).",
                }),
                "redetect_every": ("INT", {
                    "default": 0, "min": 0, "max": 1000,
                    "tooltip": "0: run the face detector on every frame. N: only every N frames, following "
                               "the landmarks in between (faster; the detector still runs when tracking fails).",
                }),
            }
        }

    RETURN_TYPES = ("EXPP_LANDMARKS", "IMAGE")
    RETURN_NAMES = ("landmarks", "preview")
    FUNCTION = "detect"
    CATEGORY = _CAT
    DESCRIPTION = "Detects and follows one face; outputs its 68 iBUG landmarks per frame and an overlay preview."

    def detect(self, face_analyzer, images: torch.Tensor, face_index: int, on_missing: str, redetect_every: int):
        frames = image_to_numpy(images)
        faces = track_faces_in_video(
            face_analyzer, frames, face_selection=int(face_index), on_missing=on_missing,
            redetect_every=int(redetect_every), progress=comfy_progress(len(frames)),
        )
        preview = draw_video_faces(frames, faces)
        return (faces, numpy_to_image(preview))


class ExpPortraitCropPortrait:
    """Square portrait crops around a face, temporally smoothed for videos, with the crop transform."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "One image or the frames of a video."}),
                "scale": ("FLOAT", {
                    "default": 2.0, "min": 0.5, "max": 8.0, "step": 0.05,
                    "tooltip": "Crop side as a multiple of the face size (brows to chin): 2 frames head and "
                               "shoulders, larger values show more of the body.",
                }),
                "offset_x": ("FLOAT", {
                    "default": 0.0, "min": -1.0, "max": 1.0, "step": 0.01,
                    "tooltip": "Horizontal shift of the crop centre, as a fraction of the crop side (+ = right).",
                }),
                "offset_y": ("FLOAT", {
                    "default": -0.1, "min": -1.0, "max": 1.0, "step": 0.01,
                    "tooltip": "Vertical shift of the crop centre, as a fraction of the crop side "
                               "(- = up, leaving headroom above the face).",
                }),
                "size": ("INT", {
                    "default": 512, "min": 64, "max": 4096, "step": 8,
                    "tooltip": "Side of the square output images in pixels.",
                }),
                "smooth": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Smooth the crop over time (causal One-Euro filter) so videos do not jitter.",
                }),
                "face_index": ("INT", {
                    "default": 0, "min": 0, "max": 64,
                    "tooltip": "Which face when several are visible: 0 = largest (on the first frame, then followed).",
                }),
                "on_missing": (["error", "interpolate"], {
                    "default": "error",
                    "tooltip": "Frames without a face: error lists them; interpolate fills them from neighbours.",
                }),
                "padding": (["constant", "edge", "reflect"], {
                    "default": "constant",
                    "tooltip": "How to fill parts of the crop outside the image: black, repeated edge pixels, or mirrored.",
                }),
            },
            "optional": {
                "face_analyzer": ("EXPP_FACE_ANALYZER", {"tooltip": "Finds the face when no landmarks are connected."}),
                "landmarks": ("EXPP_LANDMARKS", {
                    "tooltip": "Landmarks of these same images from 'ExpPortrait Detect Landmarks' (skips detection).",
                }),
                "manual_box": ("STRING", {
                    "default": "",
                    "tooltip": "Optional face box 'x0, y0, x1, y1' in pixels, used for every frame instead of "
                               "detection (for faces no detector finds).",
                }),
            },
        }

    RETURN_TYPES = ("IMAGE", "EXPP_CROP", "EXPP_LANDMARKS")
    RETURN_NAMES = ("crops", "crop_info", "crop_landmarks")
    FUNCTION = "crop"
    CATEGORY = _CAT
    DESCRIPTION = ("Square portrait crops with their crop transforms (crop ↔ original pixels) and the landmarks "
                   "in crop coordinates (None when only a manual box and no analyzer are given).")

    def crop(self, images: torch.Tensor, scale: float, offset_x: float, offset_y: float, size: int, smooth: bool,
             face_index: int, on_missing: str, padding: str, face_analyzer=None, landmarks=None,
             manual_box: str = ""):
        frames = image_to_numpy(images)
        box: Optional[Any] = parse_box(manual_box) if manual_box and manual_box.strip() else None
        crops, transforms, crop_faces = frame_portraits(
            frames, analyzer=face_analyzer, video_faces=landmarks, manual_box=box, scale=float(scale),
            offset=(float(offset_x), float(offset_y)), size=int(size),
            smoothing=BoxSmoothing() if smooth else None, face_selection=int(face_index),
            on_missing=on_missing, pad_mode=padding, progress=comfy_progress(len(frames)),
        )
        return (numpy_to_image(crops), transforms, crop_faces)


NODE_CLASS_MAPPINGS = {
    "ExpPortraitFaceAnalyzer": ExpPortraitFaceAnalyzer,
    "ExpPortraitDetectLandmarks": ExpPortraitDetectLandmarks,
    "ExpPortraitCropPortrait": ExpPortraitCropPortrait,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ExpPortraitFaceAnalyzer": "ExpPortrait Face Analyzer",
    "ExpPortraitDetectLandmarks": "ExpPortrait Detect Landmarks",
    "ExpPortraitCropPortrait": "ExpPortrait Crop Portrait",
}
