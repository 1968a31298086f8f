"""The face-analysis contract: :class:`Face`, the :class:`FaceAnalyzer` base class, input handling.

Coordinates everywhere in this package are *continuous pixel coordinates* of the analysed image:
x to the right, y down, the top-left corner of the image at (0, 0), so the centre of pixel
``(col, row)`` is ``(col + 0.5, row + 0.5)`` (the convention of ``CONTRIBUTING.md``). Backends
whose models work on integer pixel indices (dlib, OpenCV warps, the insightface networks) are
converted by adding 0.5 to points; boxes are edges ``x0, y0, x1, y1`` with ``x1 - x0`` the width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import ExpPortraitError


@dataclass
class Face:
    """One detected face, in pixels of the analysed image.

    box: ``[4]`` float32 ``x0, y0, x1, y1`` (may extend past the image border for cut-off faces).
    score: detection confidence in 0..1 (SCRFD probability; dlib's SVM/MMOD margin ``m`` mapped
        through ``1 / (1 + exp(-2 m))``, so dlib's default threshold 0 is 0.5).
    landmarks: ``[68, 2]`` float32, iBUG-68 order (see :mod:`.layout`), continuous coordinates.
    landmark_weights: ``[68]`` float32 = ``LANDMARK_WEIGHTS_68 * score``.
    embedding: L2-normalised identity embedding (``[128]`` dlib, ``[512]`` ArcFace) or None.
    backend: name of the analyzer that produced it (``"dlib-hog"``, ``"insightface:buffalo_l"``...).
    keypoints5: ``[5, 2]`` detector keypoints (eyes, nose tip, mouth corners) when the detector
        gives them (SCRFD), else None; used for ArcFace alignment.
    extra: raw backend outputs (``"landmarks_106"``, ``"landmarks_3d_68"``...), never needed by callers.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    landmark_weights: np.ndarray
    embedding: Optional[np.ndarray]
    backend: str
    keypoints5: Optional[np.ndarray] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class FaceAnalyzer:
    """Base class of the backends. Subclasses implement ``_detect`` and ``_embed``.

    ``detect`` normalises the input image, sorts faces by box area (largest first), keeps
    ``max_faces`` (0 = all) and optionally adds embeddings.
    """

    name: str = "base"
    embedding_size: int = 0

    def detect(self, image: np.ndarray, max_faces: int = 0, with_embedding: bool = False) -> List[Face]:
        """Detect faces with 68 landmarks.

        image: uint8 ``[H, W, 3]`` RGB; also ``[H, W]`` / ``[H, W, 1]`` gray, ``[H, W, 4]`` RGBA
            (alpha ignored) and float images in 0..1.
        Returns faces sorted by box area, largest first (an empty list when there is none).
        """
        img = to_rgb_uint8(image)
        if min(img.shape[:2]) < 8:  # nothing meaningful to find; spares the backends odd shapes
            return []
        faces = self._detect(img, max_faces)
        faces.sort(key=lambda f: -f.area)
        if max_faces > 0:
            faces = faces[:max_faces]
        if with_embedding and faces:
            embs = self._embed(img, faces)
            for f, e in zip(faces, embs):
                f.embedding = e
        return faces

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """L2-normalised identity embedding of ``face`` in ``image`` (``[embedding_size]`` float32)."""
        img = to_rgb_uint8(image)
        return self._embed(img, [face])[0]

    def landmarks_in_box(self, image: np.ndarray, box: np.ndarray, score: float = 1.0) -> Optional[Face]:
        """68 landmarks for a face known to be inside ``box`` (``[4]``), without running detection.

        Used by video tracking between re-detections and for manual boxes. ``box`` follows the
        detector's box convention of this backend (see :meth:`landmark_box_to_detector_box`).
        """
        img = to_rgb_uint8(image)
        return self._landmarks_in_box(img, np.asarray(box, dtype=np.float32), float(score))

    # -- backend hooks -------------------------------------------------------------------
    def _detect(self, image: np.ndarray, max_faces: int) -> List[Face]:  # pragma: no cover
        raise NotImplementedError

    def _embed(self, image: np.ndarray, faces: List[Face]) -> List[np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _landmarks_in_box(self, image: np.ndarray, box: np.ndarray, score: float) -> Optional[Face]:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def to_rgb_uint8(image: Any) -> np.ndarray:
    """Normalise an image to contiguous uint8 ``[H, W, 3]`` RGB.

    Accepts ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]``, ``[H, W, 4]`` (alpha dropped); uint8, uint16,
    bool, or float (0..1; a float image whose maximum exceeds 1.5 is taken as 0..255). NaN/inf
    become 0. Raises :class:`ExpPortraitError` for anything else.
    """
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # a torch tensor slipped through
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        pass
    elif arr.ndim == 2:
        arr = arr[..., None]
    else:
        raise ExpPortraitError(
            f"Expected one image of shape [H, W], [H, W, 3] or [H, W, 4]; got shape {tuple(arr.shape)}. "
            "Pass frames one at a time (a batch [B, H, W, C] must be split)."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ExpPortraitError(f"The image is empty (shape {tuple(arr.shape)}).")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        out = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
        f = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if (np.issubdtype(arr.dtype, np.floating) and f.size and float(f.max()) <= 1.5) else 1.0
        out = (np.clip(f * scale, 0.0, 255.0) + 0.5).astype(np.uint8)
    else:
        raise ExpPortraitError(f"Unsupported image dtype {arr.dtype}; use uint8 or float in 0..1.")
    c = out.shape[-1]
    if c == 1:
        out = np.repeat(out, 3, axis=-1)
    elif c == 4:
        out = out[..., :3]
    return np.ascontiguousarray(out)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (any length, need not be normalised); 0 for a zero vector."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ExpPortraitError(
            f"Cannot compare embeddings of different sizes ({a.size} vs {b.size}): they come from "
            "different backends (dlib gives 128, ArcFace 512). Use the same face analyzer for both."
        )
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def l2_normalise(v: np.ndarray) -> np.ndarray:
    """``v / |v|`` as float32 (a zero vector stays zero)."""
    v = np.asarray(v, dtype=np.float32).ravel()
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def margin_to_confidence(margin: float) -> float:
    """Map a detector margin (dlib HOG/MMOD, threshold 0) to 0..1: ``1 / (1 + exp(-2 m))``."""
    return float(1.0 / (1.0 + math.exp(-2.0 * float(margin))))


def box_of_points(points: np.ndarray) -> np.ndarray:
    """Axis-aligned box ``[4]`` (x0, y0, x1, y1) of points ``[N, 2]``."""
    p = np.asarray(points, dtype=np.float32)
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()], dtype=np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes ``[4]``."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    ua = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0
