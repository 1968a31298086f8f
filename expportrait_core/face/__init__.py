"""Face analysis: detection, 68 landmarks, identity embeddings and portrait framing.

Backends (:func:`load_face_analyzer`): ``insightface`` (an ONNX model pack such as ``buffalo_l``
run with onnxruntime) and ``dlib`` (the offline default: ``dlib-bin`` + ``face_recognition_models``).
Every backend returns :class:`Face` objects with iBUG-68 landmarks in continuous pixel
coordinates (pixel centres at +0.5), a 0..1 detection score, per-point fitting weights and, on
request, an L2-normalised identity embedding. :mod:`.layout` documents the landmark layout and its
mapping onto the SMPL-X head proxy. Importing this package is cheap: dlib, onnxruntime and OpenCV
load only when used.
"""
from .draw import draw_face_overlay, draw_video_faces
from .framing import (
    BoxSmoothing,
    CropTransform,
    crop_portrait,
    crop_square_for_box,
    crop_video,
    crop_with_square,
    face_square_box,
    one_euro,
    parse_box,
    smooth_boxes,
)
from .layout import (
    IBUG68_FLIP,
    IBUG68_REGIONS,
    IBUG68_TABLE,
    IBUG68_TO_SMPLX,
    IBUG68_TO_SMPLX_JOINT,
    INSIGHTFACE106_TO_IBUG68,
    LANDMARK_WEIGHTS_68,
    five_points_from_68,
    ibug68_from_insightface106,
    mirror_landmarks,
    split_for_smplx,
)
from .loader import BACKENDS, available_backends, default_insightface_root, load_face_analyzer
from .types import Face, FaceAnalyzer, box_iou, box_of_points, cosine_similarity, to_rgb_uint8
from .video import VideoFaces, detect_single_face, format_frame_list, frame_portraits, track_faces_in_video

__all__ = [
    "BACKENDS",
    "BoxSmoothing",
    "CropTransform",
    "Face",
    "FaceAnalyzer",
    "IBUG68_FLIP",
    "IBUG68_REGIONS",
    "IBUG68_TABLE",
    "IBUG68_TO_SMPLX",
    "IBUG68_TO_SMPLX_JOINT",
    "INSIGHTFACE106_TO_IBUG68",
    "LANDMARK_WEIGHTS_68",
    "VideoFaces",
    "available_backends",
    "box_iou",
    "box_of_points",
    "cosine_similarity",
    "crop_portrait",
    "crop_square_for_box",
    "crop_video",
    "crop_with_square",
    "default_insightface_root",
    "detect_single_face",
    "draw_face_overlay",
    "draw_video_faces",
    "face_square_box",
    "five_points_from_68",
    "format_frame_list",
    "frame_portraits",
    "ibug68_from_insightface106",
    "load_face_analyzer",
    "mirror_landmarks",
    "one_euro",
    "parse_box",
    "smooth_boxes",
    "split_for_smplx",
    "to_rgb_uint8",
    "track_faces_in_video",
]
