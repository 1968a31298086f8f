"""dlib backend: the offline default that works on a fresh machine.

Uses the ``dlib-bin`` wheel and the model files bundled by the ``face_recognition_models``
package: HOG (or CNN/MMOD) face detector, the iBUG-68 shape predictor and the ResNet face
descriptor (128-D). ``face_recognition_models`` imports ``pkg_resources`` (absent on modern
setuptools), so its files are located with ``importlib.util.find_spec`` instead of importing it.

The 68-point shape predictor is trained on iBUG 300-W, so its points are already in iBUG order
with the contour on the visible silhouette (the convention SMPL-X's dynamic contour expects).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import ExpPortraitError, MissingModelError
from .layout import LANDMARK_WEIGHTS_68
from .types import Face, FaceAnalyzer, l2_normalise, margin_to_confidence

log = logging.getLogger(__name__)

DLIB_FILES = {
    "landmarks": "shape_predictor_68_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
}


@dataclass
class DlibConfig:
    """Settings of the dlib backend.

    detector: ``"hog"`` (fast, frontal faces ≥ ~80 px) or ``"cnn"`` (MMOD; more pose-robust, but
        seconds per frame on a CPU).
    upsample: dlib's upsampling count for the first detection pass (each doubles the image; 0
        finds faces of ~80 px and more, 1 of ~40 px, at ~4× the time).
    threshold: detector margin threshold (dlib's ``adjust_threshold``; 0 is dlib's default).
    max_side: longer image side the detector runs at (bigger images are downscaled for detection
        only; landmarks and embeddings use the full image).
    min_side: smaller images are upscaled to this shorter side before detection (tiny portraits).
    retry_padded: when nothing is found, retry once with a replicated 25 % border and one more
        upsampling (faces cut by the image border, small faces).
    descriptor_padding: context around the aligned 150 px chip for the descriptor (dlib's 0.25).
    """

    detector: str = "hog"
    upsample: int = 0
    threshold: float = 0.0
    max_side: int = 1280
    min_side: int = 320
    retry_padded: bool = True
    descriptor_padding: float = 0.25


def find_dlib_models(models_dir: Optional[str] = None) -> Path:
    """Folder holding the dlib ``.dat`` files: ``models_dir`` if it has them, else the
    ``face_recognition_models`` package's ``models/`` folder (without importing the package)."""
    if models_dir:
        p = Path(models_dir).expanduser()
        if (p / DLIB_FILES["landmarks"]).is_file():
            return p
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "models"
            if (p / DLIB_FILES["landmarks"]).is_file():
                return p
    raise MissingModelError(
        "dlib face models",
        str(models_dir or "<site-packages>/face_recognition_models/models"),
        f"{DLIB_FILES['landmarks']}, {DLIB_FILES['descriptor']} (and {DLIB_FILES['cnn']} for the CNN detector)",
        "pip install face_recognition_models dlib-bin",
    )


_MODEL_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _cached_model(kind: str, path: Path):
    """dlib model objects are read-only after loading: share them between analyzers (the 68-point
    predictor is 100 MB and takes ~2 s to read; nodes re-create analyzers on every change)."""
    dlib = _import_dlib()
    key = (kind, str(path), os.path.getmtime(path))
    with _CACHE_LOCK:
        obj = _MODEL_CACHE.get(key)
        if obj is None:
            ctor = {"landmarks": dlib.shape_predictor, "cnn": dlib.cnn_face_detection_model_v1,
                    "descriptor": dlib.face_recognition_model_v1}[kind]
            obj = ctor(str(path))
            _MODEL_CACHE[key] = obj
    return obj


def _import_dlib():
    try:
        import dlib  # noqa: F401
    except Exception as e:  # ImportError or a broken binary wheel
        raise ExpPortraitError(
            f"The dlib face backend needs the 'dlib' module ({type(e).__name__}: {e}). "
            "Install it with: pip install dlib-bin face_recognition_models"
        ) from e
    return dlib


class DlibFaceAnalyzer(FaceAnalyzer):
    """Face detection, 68 landmarks and 128-D descriptors with dlib."""

    embedding_size = 128

    def __init__(self, config: Optional[DlibConfig] = None, models_dir: Optional[str] = None) -> None:
        self.config = config or DlibConfig()
        if self.config.detector not in ("hog", "cnn"):
            raise ExpPortraitError(f"dlib_detector must be 'hog' or 'cnn', got {self.config.detector!r}.")
        dlib = _import_dlib()
        self._dlib = dlib
        folder = find_dlib_models(models_dir)
        self.models_dir = folder
        self.name = f"dlib-{self.config.detector}"
        try:
            self._predictor = _cached_model("landmarks", folder / DLIB_FILES["landmarks"])
            if self.config.detector == "cnn":
                self._cnn = _cached_model("cnn", folder / DLIB_FILES["cnn"])
            else:
                self._hog = dlib.get_frontal_face_detector()
        except (RuntimeError, OSError) as e:
            raise ExpPortraitError(
                f"dlib could not read its model files in '{folder}' ({e}); reinstall face_recognition_models."
            ) from e
        self._descriptor = None  # loaded on first use (0.3 s, 22 MB)

    # -- detection -------------------------------------------------------------------------
    def _run_detector(self, img: np.ndarray, upsample: int) -> List[Tuple[np.ndarray, float]]:
        """Raw detections on ``img``: (box ``[4]`` continuous coords, margin)."""
        out = []
        if self.config.detector == "cnn":
            for d in self._cnn(img, upsample):
                r = d.rect
                if d.confidence >= self.config.threshold:
                    out.append((np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float32), float(d.confidence)))
        else:
            rects, scores, _ = self._hog.run(img, upsample, self.config.threshold)
            for r, s in zip(rects, scores):
                out.append((np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float32), float(s)))
        return out

    def _detect_boxes(self, img: np.ndarray) -> List[Tuple[np.ndarray, float]]:
        """Boxes in ``img`` coordinates, trying a resized image and one padded retry."""
        import cv2

        h, w = img.shape[:2]
        s = 1.0
        if max(h, w) > self.config.max_side:
            s = self.config.max_side / max(h, w)
        elif min(h, w) < self.config.min_side:
            s = min(self.config.min_side / min(h, w), self.config.max_side / max(h, w))
        det = img
        if s != 1.0:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            det = cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        sx, sy = det.shape[1] / w, det.shape[0] / h
        found = self._run_detector(det, self.config.upsample)
        pad = 0
        if not found and self.config.retry_padded and det.shape[0] * det.shape[1] <= 1600 * 1600:
            pad = int(round(0.25 * max(det.shape[:2])))
            padded = cv2.copyMakeBorder(det, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            found = self._run_detector(padded, self.config.upsample + 1)
        boxes = []
        for b, m in found:
            b = b - pad
            boxes.append((np.array([b[0] / sx, b[1] / sy, b[2] / sx, b[3] / sy], np.float32), m))
        return boxes

    def _shape(self, img: np.ndarray, box: np.ndarray):
        """dlib full_object_detection for ``box`` (continuous coords) on ``img``."""
        dlib = self._dlib
        rect = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])) - 1, int(round(box[3])) - 1)
        return self._predictor(img, rect)

    def _landmarks(self, img: np.ndarray, box: np.ndarray) -> np.ndarray:
        """``[68, 2]`` continuous landmarks; small faces run on an upscaled copy for sub-pixel precision."""
        import cv2

        side = float(max(box[2] - box[0], box[3] - box[1]))
        up = 1.0
        if side < 160.0:
            up = min(4.0, 160.0 / max(side, 1.0))
        if up > 1.0:
            x0 = int(np.floor(max(0.0, box[0] - side)))
            y0 = int(np.floor(max(0.0, box[1] - side)))
            x1 = int(np.ceil(min(img.shape[1], box[2] + side)))
            y1 = int(np.ceil(min(img.shape[0], box[3] + side)))
            roi = img[y0:y1, x0:x1]
            roi = cv2.resize(roi, (max(1, round(roi.shape[1] * up)), max(1, round(roi.shape[0] * up))), interpolation=cv2.INTER_CUBIC)
            b = (box - np.array([x0, y0, x0, y0], np.float32)) * up
            shp = self._shape(roi, b)
            pts = np.array([[p.x, p.y] for p in shp.parts()], np.float32) + 0.5
            return pts / up + np.array([x0, y0], np.float32)
        shp = self._shape(img, box)
        return np.array([[p.x, p.y] for p in shp.parts()], np.float32) + 0.5

    def _make_face(self, img: np.ndarray, box: np.ndarray, conf: float) -> Face:
        lmk = self._landmarks(img, box)
        return Face(
            box=box.astype(np.float32),
            score=conf,
            landmarks=lmk,
            landmark_weights=(LANDMARK_WEIGHTS_68 * np.float32(conf)).astype(np.float32),
            embedding=None,
            backend=self.name,
        )

    def _detect(self, image: np.ndarray, max_faces: int) -> List[Face]:
        try:
            boxes = self._detect_boxes(image)
        except RuntimeError as e:  # dlib raises RuntimeError on bad inputs
            raise ExpPortraitError(f"dlib face detection failed on an image of shape {image.shape}: {e}") from e
        boxes.sort(key=lambda bm: -float((bm[0][2] - bm[0][0]) * (bm[0][3] - bm[0][1])))
        if max_faces > 0:
            boxes = boxes[:max_faces]
        return [self._make_face(image, b, margin_to_confidence(m)) for b, m in boxes]

    def _landmarks_in_box(self, image: np.ndarray, box: np.ndarray, score: float) -> Optional[Face]:
        if not np.all(np.isfinite(box)) or box[2] - box[0] < 4 or box[3] - box[1] < 4:
            return None
        return self._make_face(image, box, score)

    # -- identity --------------------------------------------------------------------------
    def _embed(self, image: np.ndarray, faces: List[Face]) -> List[np.ndarray]:
        dlib = self._dlib
        if self._descriptor is None:
            try:
                self._descriptor = _cached_model("descriptor", self.models_dir / DLIB_FILES["descriptor"])
            except (RuntimeError, OSError) as e:
                raise ExpPortraitError(
                    f"dlib could not read '{self.models_dir / DLIB_FILES['descriptor']}' ({e}); reinstall face_recognition_models."
                ) from e
        shapes = dlib.full_object_detections()
        for f in faces:
            b = f.box
            rect = dlib.rectangle(int(round(b[0])), int(round(b[1])), int(round(b[2])) - 1, int(round(b[3])) - 1)
            pts = [dlib.point(int(round(x - 0.5)), int(round(y - 0.5))) for x, y in np.asarray(f.landmarks, np.float64)]
            shapes.append(dlib.full_object_detection(rect, pts))
        descs = self._descriptor.compute_face_descriptor(image, shapes, 0, self.config.descriptor_padding)
        return [l2_normalise(np.array(d)) for d in descs]


__all__ = ["DLIB_FILES", "DlibConfig", "DlibFaceAnalyzer", "find_dlib_models"]
