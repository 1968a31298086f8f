"""Following one face through a video: stable face choice, re-detection, missing frames."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np

from ..errors import ExpPortraitError
from ..progress import ProgressFn, report
from .framing import BoxSmoothing, CropTransform, crop_video
from .types import Face, FaceAnalyzer, box_iou, box_of_points, to_rgb_uint8

log = logging.getLogger(__name__)


@dataclass
class VideoFaces:
    """One face followed through ``T`` frames (continuous pixel coordinates of the frames).

    landmarks: ``[T, 68, 2]`` float32, iBUG-68 order.
    landmark_weights: ``[T, 68]`` float32 (``LANDMARK_WEIGHTS_68 * score``; interpolated frames
        get ``interpolated_weight`` times the interpolated weights).
    boxes: ``[T, 4]`` float32 detector boxes.
    scores: ``[T]`` float32 detection confidence (0 for interpolated frames).
    found: ``[T]`` bool, True where the face was detected (or tracked) in that frame.
    missing: indices of frames without the face (filled by interpolation when asked).
    image_size: ``(height, width)`` of the first frame.
    backend: the analyzer's name.
    """

    landmarks: np.ndarray
    landmark_weights: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    found: np.ndarray
    missing: List[int]
    image_size: Tuple[int, int] = (0, 0)
    backend: str = ""
    tracked: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  #: [T] True where landmarks came from tracking (no detection)

    def __len__(self) -> int:
        return int(self.landmarks.shape[0])

    @property
    def landmark_boxes(self) -> np.ndarray:
        """``[T, 4]`` boxes of the 68 landmarks (backend-independent framing boxes)."""
        l = self.landmarks
        return np.concatenate([l.min(1), l.max(1)], axis=1).astype(np.float32)

    def face(self, t: int) -> Face:
        """Frame ``t`` as a :class:`Face`."""
        return Face(self.boxes[t].copy(), float(self.scores[t]), self.landmarks[t].copy(),
                    self.landmark_weights[t].copy(), None, self.backend)

    def mapped(self, transforms) -> "VideoFaces":
        """The same faces in other coordinates: ``transforms`` is one :class:`~.framing.CropTransform`
        per frame (or one for all); landmarks and boxes are mapped with ``to_crop``."""
        tfs = transforms if isinstance(transforms, (list, tuple)) else [transforms] * len(self)
        if len(tfs) != len(self):
            raise ExpPortraitError(f"{len(tfs)} crop transforms for {len(self)} frames.")
        lm = np.stack([tf.to_crop(l) for tf, l in zip(tfs, self.landmarks)]) if len(self) else self.landmarks
        bx = np.stack([tf.to_crop(b.reshape(2, 2)).reshape(4) for tf, b in zip(tfs, self.boxes)]) if len(self) else self.boxes
        size = (tfs[0].size, tfs[0].size) if tfs else self.image_size
        return VideoFaces(lm.astype(np.float32), self.landmark_weights.copy(), bx.astype(np.float32), self.scores.copy(),
                          self.found.copy(), list(self.missing), size, self.backend, self.tracked.copy())


def format_frame_list(indices: List[int], limit: int = 20) -> str:
    """``[1, 2, 3, 7]`` → ``"1-3, 7"`` (at most ``limit`` groups, then an ellipsis)."""
    groups: List[str] = []
    i = 0
    idx = sorted(indices)
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        groups.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    more = len(groups) > limit
    return ", ".join(groups[:limit]) + (", ..." if more else "")


def _size(b: np.ndarray) -> float:
    return float(max(b[2] - b[0], b[3] - b[1], 1e-3))


def _center(b: np.ndarray) -> np.ndarray:
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])


def _associate(faces: List[Face], ref_box: np.ndarray, gap: int) -> Optional[Face]:
    """The face continuing the track whose last box is ``ref_box`` (``gap`` frames ago), or None
    when none is close enough (another person, or the tracked face is gone)."""
    best, best_key = None, None
    s = _size(ref_box)
    reach = (0.5 + 0.25 * max(0, gap - 1)) * s
    for f in faces:
        d = float(np.linalg.norm(_center(f.box) - _center(ref_box)))
        iou = box_iou(f.box, ref_box)
        ratio = _size(f.box) / s
        if (iou >= 0.3 or d <= reach) and 0.5 <= ratio <= 2.0:
            key = (iou, -d)
            if best_key is None or key > best_key:
                best, best_key = f, key
    return best


class _BoxModel:
    """Predicts the detector box from the landmarks (calibrated on detection frames), so that
    tracking frames feed the landmark model the kind of box it was trained with."""

    def __init__(self) -> None:
        self.k: Optional[np.ndarray] = None  # (dcx, dcy, ds) in units of the landmark-box size

    def update(self, face: Face) -> None:
        lb = box_of_points(face.landmarks)
        s = _size(lb)
        d = np.array([*(_center(face.box) - _center(lb)) / s, _size(face.box) / s])
        self.k = d if self.k is None else 0.7 * self.k + 0.3 * d

    def predict(self, landmarks: np.ndarray, aspect_box: np.ndarray) -> np.ndarray:
        lb = box_of_points(landmarks)
        s = _size(lb)
        c = _center(lb) + self.k[:2] * s
        side = self.k[2] * s
        ar = (aspect_box[3] - aspect_box[1]) / max(aspect_box[2] - aspect_box[0], 1e-3)
        w = side / max(1.0, ar)
        h = side * min(1.0, ar)
        return np.array([c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2], np.float32)


def track_faces_in_video(
    analyzer: FaceAnalyzer,
    frames: Iterable[np.ndarray],
    face_selection: Union[str, int] = "largest",
    on_missing: str = "error",
    redetect_every: int = 0,
    progress: Optional[ProgressFn] = None,
    interpolated_weight: float = 0.25,
) -> VideoFaces:
    """Detect and follow one face through ``frames``.

    frames: images ``[H, W, C]`` (any iterable; it is read once, frames are not kept).
    face_selection: ``"largest"`` (= 0) or ``k``: the k-th largest face (0-based) on the first frame
        that has at least ``k + 1`` faces; later (and earlier) frames take the detection nearest to
        the previous position of that face, so the choice stays on the same person.
    on_missing: ``"error"``: frames without the face raise :class:`ExpPortraitError` listing them;
        ``"interpolate"``: they are filled linearly from the neighbouring found frames (held at the
        ends), marked in ``found``/``missing`` and logged.
    redetect_every: 0 runs the detector on every frame; ``n > 0`` runs it every ``n`` frames and in
        between re-runs only the landmark model in a box predicted from the previous landmarks
        (much faster; the detector still runs when the tracked face jumps or shrinks).
    progress: called as ``progress(i, n, None)`` after each frame (``n`` is 0 when ``frames`` has no length).
    interpolated_weight: factor on the landmark weights of interpolated frames.
    """
    if on_missing not in ("error", "interpolate"):
        raise ExpPortraitError(f"on_missing must be 'error' or 'interpolate', got {on_missing!r}.")
    if isinstance(face_selection, str):
        if face_selection != "largest":
            raise ExpPortraitError(f"face_selection must be 'largest' or a face index, got {face_selection!r}.")
        sel = 0
    else:
        sel = int(face_selection)
        if sel < 0:
            raise ExpPortraitError(f"face index must be >= 0, got {sel}.")
    n_total = len(frames) if hasattr(frames, "__len__") else 0  # type: ignore[arg-type]

    per_frame: List[Optional[Face]] = []
    tracked: List[bool] = []
    pending: List[List[Face]] = []  # detections of frames before the anchor frame
    anchor: Optional[int] = None
    last_box: Optional[np.ndarray] = None
    last_t = -1
    box_model = _BoxModel()
    image_size = (0, 0)

    for t, frame in enumerate(frames):
        img = to_rgb_uint8(frame)
        if t == 0:
            image_size = (int(img.shape[0]), int(img.shape[1]))
        chosen: Optional[Face] = None
        was_tracked = False
        if anchor is None:
            faces = analyzer.detect(img)
            if len(faces) > sel:
                anchor = t
                chosen = faces[sel]
                pending_frames = pending
                pending = []
                # resolve earlier frames backwards from the anchor
                ref, ref_t = chosen.box, t
                back: List[Optional[Face]] = []
                for k in range(t - 1, -1, -1):
                    f = _associate(pending_frames[k], ref, ref_t - k)
                    back.append(f)
                    if f is not None:
                        ref, ref_t = f.box, k
                per_frame[:t] = back[::-1]
            else:
                pending.append(faces)
                per_frame.append(None)
                tracked.append(False)
                report(progress, t + 1, n_total)
                continue
        else:
            use_tracking = (
                redetect_every > 0 and (t - anchor) % redetect_every != 0 and per_frame[-1] is not None
                and box_model.k is not None
            )
            if use_tracking:
                prev = per_frame[-1]
                box = box_model.predict(prev.landmarks, prev.box)
                cand = analyzer.landmarks_in_box(img, box, score=prev.score)
                if cand is not None:
                    old = box_of_points(prev.landmarks)
                    new = box_of_points(cand.landmarks)
                    ratio = _size(new) / _size(old)
                    jump = float(np.linalg.norm(_center(new) - _center(old))) / _size(old)
                    if 0.8 <= ratio <= 1.25 and jump <= 0.25:
                        cand.box = box
                        chosen, was_tracked = cand, True
            if chosen is None:
                faces = analyzer.detect(img)
                chosen = _associate(faces, last_box, t - last_t) if faces else None
        if chosen is not None:
            if not was_tracked:
                box_model.update(chosen)
            last_box, last_t = chosen.box, t
        per_frame.append(chosen)
        tracked.append(was_tracked)
        report(progress, t + 1, n_total)

    n = len(per_frame)
    if n == 0:
        raise ExpPortraitError("No frames were given to the face tracker.")
    missing = [i for i, f in enumerate(per_frame) if f is None]
    if len(missing) == n:
        what = "a face" if sel == 0 else f"{sel + 1} faces (face index {sel})"
        raise ExpPortraitError(
            f"No frame of the {n}-frame input contains {what}. Check that the face is visible, frontal enough "
            "and at least ~80 pixels tall (upscale small inputs), or choose another face index/backend."
        )
    if missing and on_missing == "error":
        raise ExpPortraitError(
            f"No face found in {len(missing)} of {n} frames: {format_frame_list(missing)}. "
            "Set on_missing='interpolate' to fill those frames from their neighbours, or trim them from the video."
        )
    if missing:
        log.warning("face missing in %d of %d frames (%s); interpolated from neighbours", len(missing), n,
                    format_frame_list(missing))

    lm = np.zeros((n, 68, 2), np.float32)
    wt = np.zeros((n, 68), np.float32)
    bx = np.zeros((n, 4), np.float32)
    sc = np.zeros(n, np.float32)
    found = np.array([f is not None for f in per_frame])
    for i, f in enumerate(per_frame):
        if f is not None:
            lm[i], wt[i], bx[i], sc[i] = f.landmarks, f.landmark_weights, f.box, f.score
    if missing:
        idx = np.flatnonzero(found)
        t_all = np.arange(n)
        for arr in (lm, bx):
            flat = arr.reshape(n, -1)
            for c in range(flat.shape[1]):
                flat[~found, c] = np.interp(t_all[~found], idx, flat[idx, c])
        wflat = wt.copy()
        for c in range(68):
            wflat[~found, c] = np.interp(t_all[~found], idx, wt[idx, c]) * interpolated_weight
        wt = wflat
    backend = next(f.backend for f in per_frame if f is not None)
    return VideoFaces(lm, wt, bx, sc, found, missing, image_size, backend, np.array(tracked, bool))


def detect_single_face(analyzer: FaceAnalyzer, image: np.ndarray, face_index: int = 0, what: str = "the image") -> Face:
    """The ``face_index``-th largest face of one image, or a clear error when there is none."""
    faces = analyzer.detect(image)
    if len(faces) <= face_index:
        found = "no face" if not faces else f"only {len(faces)} face(s)"
        h, w = to_rgb_uint8(image).shape[:2]
        raise ExpPortraitError(
            f"Found {found} in {what} ({w}x{h}) with the {analyzer.name} backend, face index {face_index} requested. "
            "Use a photo where the face is clearly visible and at least ~80 pixels tall, try another backend, "
            "or give a manual face box."
        )
    return faces[face_index]


def frame_portraits(
    frames,
    analyzer: Optional[FaceAnalyzer] = None,
    video_faces: Optional[VideoFaces] = None,
    manual_box: Optional[np.ndarray] = None,
    scale: float = 2.0,
    offset: Tuple[float, float] = (0.0, -0.1),
    size: int = 512,
    smoothing: Optional[BoxSmoothing] = BoxSmoothing(),
    face_selection: Union[str, int] = "largest",
    on_missing: str = "error",
    pad_mode: str = "constant",
    progress: Optional[ProgressFn] = None,
) -> Tuple[np.ndarray, List[CropTransform], Optional[VideoFaces]]:
    """Portrait crops of a clip (or one image) around one face.

    The framing box per frame comes from, in order of precedence: ``manual_box`` (``[4]``, the
    same for all frames), ``video_faces`` (its landmark boxes), or tracking with ``analyzer``.
    Boxes are smoothed over time when there are several frames and ``smoothing`` is given.
    frames: ``T`` images ``[H, W, C]``.
    Returns (uint8 ``[T, size, size, 3]``, ``T`` crop transforms, the faces in crop coordinates
    or None when only a manual box without analyzer was given).
    """
    t = len(frames)
    if t == 0:
        raise ExpPortraitError("No frames to crop.")
    vf = video_faces
    if manual_box is not None:
        boxes = np.repeat(np.asarray(manual_box, np.float32).reshape(1, 4), t, axis=0)
        if vf is None and analyzer is not None:
            faces = [analyzer.landmarks_in_box(f, manual_box) for f in frames]
            if all(f is not None for f in faces):
                vf = VideoFaces(
                    np.stack([f.landmarks for f in faces]), np.stack([f.landmark_weights for f in faces]),
                    boxes.copy(), np.array([f.score for f in faces], np.float32), np.ones(t, bool), [],
                    to_rgb_uint8(frames[0]).shape[:2], analyzer.name, np.ones(t, bool),
                )
    else:
        if vf is None:
            if analyzer is None:
                raise ExpPortraitError(
                    "Cropping needs a face: connect a face analyzer, landmarks from 'ExpPortrait Detect Landmarks', "
                    "or type a manual face box."
                )
            vf = track_faces_in_video(analyzer, frames, face_selection, on_missing, progress=progress)
        if len(vf) != t:
            raise ExpPortraitError(f"The landmarks cover {len(vf)} frames but {t} images were given; use the same batch.")
        boxes = vf.landmark_boxes
    crops, tfs = crop_video(frames, boxes, scale, offset, size, smoothing if t > 1 else None, pad_mode, progress=progress)
    return crops, tfs, (vf.mapped(tfs) if vf is not None else None)


__all__ = ["VideoFaces", "detect_single_face", "format_frame_list", "frame_portraits", "track_faces_in_video"]
