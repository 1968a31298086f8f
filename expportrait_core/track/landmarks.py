"""Streaming 2D landmarks for tracking: detect once, then re-crop from the previous landmarks.

The face detector runs on the first frame and whenever tracking is lost; in between, the
analyzer's landmark predictor runs in a box predicted from the previous frame's landmarks
(One-Euro-smoothed, so the crop itself does not jitter). Loss is noticed by

* an appearance check: a 32×32 grey thumbnail of the crop box is compared with the previous
  frame's (a cut, a hand over the face, a frame without the face change it abruptly);
* a periodic verification (``verify_every``): the detector runs on the crop region only;
* the solver: a frame whose landmarks cannot be fitted by the head model is reported back
  (:meth:`LandmarkStream.mark_lost`).

The detector's box and the landmark box differ by a backend-specific margin; the mapping is
learned from the detection itself (centre offset and size ratio in landmark-box units), so the
re-crop gives the predictor the box it was trained on, whatever the backend.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .config import TrackConfig
from .smooth import OneEuroFilter

log = logging.getLogger(__name__)


@dataclass
class FrameLandmarks:
    """landmarks: [68, 2] px (None when no face); weights: [68]; box: [4] the smoothed search box
    (detector convention) or None; detected: the detector ran on this frame."""

    landmarks: Optional[np.ndarray]
    weights: Optional[np.ndarray]
    box: Optional[np.ndarray]
    detected: bool


def _landmark_box(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float64)
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])


# Brows, nose and eyes: their box does not change when the mouth or jaw opens, so the search box
# derived from it (and the predictor's output, which depends on the box) does not pump with speech.
_STABLE = slice(17, 48)


def _reference_box(points: np.ndarray) -> np.ndarray:
    return _landmark_box(np.asarray(points)[_STABLE])


def _thumb(image: np.ndarray, box: np.ndarray) -> Optional[np.ndarray]:
    import cv2

    h, w = image.shape[:2]
    x0, y0, x1, y1 = [int(round(v)) for v in box]
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(w, x1), min(h, y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    g = image[y0:y1, x0:x1].mean(-1).astype(np.float32) / 255.0
    return cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA)


class LandmarkStream:
    """Per-frame landmarks of one face through a clip (see module docstring)."""

    def __init__(self, analyzer, cfg: TrackConfig, fps: float) -> None:
        self.analyzer = analyzer
        self.cfg = cfg
        self.fps = float(fps)
        self._box: Optional[np.ndarray] = None  # smoothed landmark box (centre, size) driving the crop
        self._filter: Optional[OneEuroFilter] = None
        self._det_map = np.array([0.0, 0.0, 1.0, 1.0])  # detector box from landmark box: dx, dy, sx, sy
        self._score = 1.0
        self._thumb: Optional[np.ndarray] = None
        self._since_verify = 0
        self._last_center: Optional[np.ndarray] = None
        self.detections = 0
        self.has_local_landmarks = hasattr(analyzer, "landmarks_in_box")

    # ------------------------------------------------------------------------------------------
    def mark_lost(self) -> None:
        """Forget the track: the next frame runs the detector on the whole image."""
        self._box = None
        self._filter = None
        self._thumb = None

    def _learn_mapping(self, face) -> None:
        lb = _reference_box(face.landmarks)
        db = np.asarray(face.box, np.float64)
        lw, lh = max(lb[2] - lb[0], 1.0), max(lb[3] - lb[1], 1.0)
        self._det_map = np.array([
            ((db[0] + db[2]) - (lb[0] + lb[2])) / 2 / lw,
            ((db[1] + db[3]) - (lb[1] + lb[3])) / 2 / lh,
            (db[2] - db[0]) / lw,
            (db[3] - db[1]) / lh,
        ])
        self._score = float(getattr(face, "score", 1.0))

    def _detector_box(self, lbox: np.ndarray) -> np.ndarray:
        lw, lh = lbox[2] - lbox[0], lbox[3] - lbox[1]
        cx = (lbox[0] + lbox[2]) / 2 + self._det_map[0] * lw
        cy = (lbox[1] + lbox[3]) / 2 + self._det_map[1] * lh
        w, h = self._det_map[2] * lw, self._det_map[3] * lh
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)

    def _smooth_box(self, lbox: np.ndarray, reset: bool) -> np.ndarray:
        """One-Euro on (centre, log size) of the landmark box, in units of the box size."""
        size = float(np.sqrt(max(lbox[2] - lbox[0], 1.0) * max(lbox[3] - lbox[1], 1.0)))
        c = np.array([(lbox[0] + lbox[2]) / 2, (lbox[1] + lbox[3]) / 2])
        if reset or self._filter is None:
            self._filter = OneEuroFilter(self.fps, self.cfg.crop_min_cutoff, self.cfg.crop_beta)
            self._ref = size
        x = np.array([c[0] / self._ref, c[1] / self._ref, np.log(size)])
        y = self._filter(x)
        s = float(np.exp(y[2]))
        cx, cy = y[0] * self._ref, y[1] * self._ref
        aw = (lbox[2] - lbox[0]) / size * s / 2
        ah = (lbox[3] - lbox[1]) / size * s / 2
        return np.array([cx - aw, cy - ah, cx + aw, cy + ah])

    def _pick(self, faces):
        if not faces:
            return None
        if self._last_center is None:
            return faces[0]  # largest
        d = [np.linalg.norm(_landmark_box(f.landmarks).reshape(2, 2).mean(0) - self._last_center) for f in faces]
        return faces[int(np.argmin(d))]

    def _detect(self, image: np.ndarray):
        self.detections += 1
        return self._pick(self.analyzer.detect(image))

    def _verify(self, image: np.ndarray, box: np.ndarray) -> bool:
        """Run the detector on the crop region around ``box`` only."""
        h, w = image.shape[:2]
        side = 1.8 * max(box[2] - box[0], box[3] - box[1])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        x1, y1 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return False
        self.detections += 1
        return len(self.analyzer.detect(image[y0:y1, x0:x1])) > 0

    # ------------------------------------------------------------------------------------------
    def step(self, image: np.ndarray) -> FrameLandmarks:
        """Landmarks of the tracked face in ``image`` (uint8 [H, W, 3])."""
        cfg = self.cfg
        face = None
        detected = False
        if self._box is not None and self.has_local_landmarks:
            thumb = _thumb(image, self._detector_box(self._box))
            changed = (thumb is None or float(thumb.std()) < 0.02  # a flat region cannot hold a face
                       or (self._thumb is not None and float(np.abs(thumb - self._thumb).mean()) > cfg.appearance_change))
            self._since_verify += 1
            if not changed and cfg.verify_every and self._since_verify >= cfg.verify_every:
                self._since_verify = 0
                changed = not self._verify(image, self._detector_box(self._box))
            if not changed:
                face = self.analyzer.landmarks_in_box(image, self._detector_box(self._box), self._score)
                if face is not None and not np.all(np.isfinite(face.landmarks)):
                    face = None
            if face is None:
                self.mark_lost()
        if face is None:
            face = self._detect(image)
            detected = True
            if face is None:
                return FrameLandmarks(None, None, None, True)
            self._learn_mapping(face)
            self._since_verify = 0
        lm = np.asarray(face.landmarks, np.float64)
        wts = np.asarray(face.landmark_weights, np.float64)
        self._box = self._smooth_box(_reference_box(lm), reset=detected)
        self._last_center = _landmark_box(lm).reshape(2, 2).mean(0)
        self._thumb = _thumb(image, self._detector_box(self._box))
        return FrameLandmarks(lm.astype(np.float32), wts.astype(np.float32), self._detector_box(self._box), detected)
