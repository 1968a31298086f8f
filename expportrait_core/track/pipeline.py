"""Driving-video tracking, end to end and streaming.

    frames ──► LandmarkStream (detect once, re-crop) ──► keyframe buffer ──► driving identity (once)
           ──► LandmarkSolver (batched LM per chunk) ──► smoother (offline window / causal)
           ──► [detail: dynamic offsets from normal maps] ──► Motion

Frames are consumed one at a time and released after their landmarks are found; normal maps (detail
mode) are cropped to the face at the detail resolution on arrival. What is kept per frame is only
what the result holds: the parameters, landmarks, crop boxes and, in detail mode, the dynamic offsets.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import ExpPortraitError
from ..head.params import HeadParams
from ..io.files import Identity, Motion
from ..progress import ProgressFn, report
from .config import TrackConfig
from .identity import choose_keyframes, face_size, fit_driving_identity
from .landmarks import FrameLandmarks, LandmarkStream
from .metrics import JitterAccumulator
from .rig import ROT, TrackRig
from .smooth import OneEuroFilter, make_smoother
from .solve import LandmarkSolver

log = logging.getLogger(__name__)

CROP_SIZE = 512  # the nominal crop side that ``Motion.crops`` scales refer to
CROP_SCALE, CROP_OFFSET = 2.0, (0.0, -0.1)  # portrait framing around the landmark box (face module's default)


@dataclass
class TrackResult:
    """Result of :func:`track_video`.

    motion: the tracked :class:`~expportrait_core.io.files.Motion` (``identity`` = the driving
        subject, ``lost_frames``, ``crops`` [T, 3] = (crop px per frame px for a 512 crop, x0, y0),
        ``fps``, ``dynamic_offsets`` in detail mode).
    landmarks_2d: [T, 68, 2] fitted landmark projections (px) of the final parameters.
    detected: [T, 68, 2] detected landmarks (NaN on lost frames); detected_weights: [T, 68].
    reprojection_error: [T] median distance fitted ↔ detected per frame (px; NaN on lost frames).
    raw_params: the per-frame solutions before temporal smoothing (an independent per-frame fit,
        warm-started), for comparisons.
    jitter / jitter_raw: :func:`~.metrics.jitter_metrics` of projected face vertices and head
        rotation for the final and the raw parameters (lost frames excluded).
    stage_seconds: wall time per stage (decode, landmarks, identity, solve, smooth, detail, output);
    stage_cpu_seconds: CPU time of the tracking thread per stage (independent of other processes).
    keyframes: frame indices used to fit the driving identity; identity_info: how it was fitted.
    """

    motion: Motion
    landmarks_2d: np.ndarray
    detected: np.ndarray
    detected_weights: np.ndarray
    reprojection_error: np.ndarray
    raw_params: HeadParams
    jitter: Dict[str, float]
    jitter_raw: Dict[str, float]
    stage_seconds: Dict[str, float]
    stage_cpu_seconds: Dict[str, float] = field(default_factory=dict)
    keyframes: List[int] = field(default_factory=list)
    identity_info: dict = field(default_factory=dict)

    @property
    def lost_frames(self) -> List[int]:
        return list(self.motion.lost_frames)

    @property
    def num_frames(self) -> int:
        return self.motion.num_frames


@contextmanager
def torch_threads(n: int):
    """Temporarily run torch on ``n`` threads (0 = leave as is). The per-frame solves are many small
    tensor operations: on a loaded 2-core CPU, one thread is several times faster than two."""
    old = torch.get_num_threads()
    change = n > 0 and n != old
    if change:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(old)


class _Timer:
    """Wall time per stage, plus the CPU time of this thread per stage (``cpu``): on a shared
    machine the latter is what a stage costs, whatever the other processes do."""

    def __init__(self) -> None:
        self.s: Dict[str, float] = {}
        self.cpu: Dict[str, float] = {}
        self._c = time.thread_time()

    def add(self, key: str, t0: float) -> float:
        t = time.perf_counter()
        c = time.thread_time()
        self.s[key] = self.s.get(key, 0.0) + (t - t0)
        self.cpu[key] = self.cpu.get(key, 0.0) + (c - self._c)
        self._c = c
        return t

    def mark(self) -> float:
        """Start timing a stage (resets the CPU clock reference); returns the wall time."""
        self._c = time.thread_time()
        return time.perf_counter()


def _as_frame(frame, index: int) -> np.ndarray:
    a = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ExpPortraitError(f"Frame {index} has shape {a.shape}; expected [H, W, 3] RGB.")
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return a[..., :3]


def probe_vertex_ids(proxy, count: int, seed: int) -> torch.Tensor:
    """[count] random face-region vertex ids (seeded) used to measure jitter."""
    ids = torch.nonzero(proxy.face_weight > 0.5)[:, 0].cpu()
    if len(ids) == 0:
        ids = torch.arange(proxy.num_vertices)
    g = torch.Generator().manual_seed(int(seed))
    return ids[torch.randperm(len(ids), generator=g)[: max(1, int(count))]].sort().values


class _Tracker:
    """Solve, smooth and collect per-frame outputs once the identity is known."""

    def __init__(self, proxy, identity: Identity, cfg: TrackConfig, fps: float, fsize: float,
                 stream: Optional[LandmarkStream], detail=None, timer: Optional[_Timer] = None) -> None:
        self.proxy = proxy
        self.identity = identity
        self.cfg = cfg
        self.fps = fps
        self.stream = stream
        self.timer = timer or _Timer()
        go = identity.params.global_orient.reshape(-1, 3)[0]
        self.global_orient = go
        self.rig = TrackRig(proxy, identity.betas, identity.static_offsets, go, identity.camera, cfg.num_expression,
                            probe_vertices=probe_vertex_ids(proxy, cfg.num_probe_vertices, cfg.seed))
        self.solver = LandmarkSolver(self.rig, cfg, fsize)
        self.smoother = make_smoother(cfg, self.rig.dim)
        self.one_euro = OneEuroFilter(fps, cfg.one_euro_min_cutoff, cfg.one_euro_beta) if cfg.one_euro else None
        self.detail = detail
        self.pending: List[Tuple[int, Optional[np.ndarray], Optional[np.ndarray]]] = []
        self.last_theta: Optional[torch.Tensor] = None
        self.last_hat: Optional[np.ndarray] = None
        self.raw: List[np.ndarray] = []
        self.final: List[np.ndarray] = []
        self.lost: List[bool] = []
        self.fitted: List[np.ndarray] = []
        self.jit = JitterAccumulator()
        self.jit_raw = JitterAccumulator()
        self._emit_index = 0
        self._raw_queue: List[np.ndarray] = []
        self._recent_rms: List[float] = []

    # -- solving ---------------------------------------------------------------------------
    def push(self, index: int, landmarks: Optional[np.ndarray], weights: Optional[np.ndarray]) -> None:
        self.pending.append((index, landmarks, weights))
        if len(self.pending) >= self.cfg.chunk_size:
            self._solve_pending()

    def _solve_pending(self) -> None:
        if not self.pending:
            return
        with torch_threads(self.cfg.solver_threads):
            self._solve_pending_inner()

    def _solve_pending_inner(self) -> None:
        t0 = self.timer.mark()
        cfg = self.cfg
        items = self.pending
        self.pending = []
        vidx = [k for k, (_, lm, _) in enumerate(items) if lm is not None]
        thetas: Dict[int, np.ndarray] = {}
        hess: Dict[int, np.ndarray] = {}
        lost_now = set(k for k, (_, lm, _) in enumerate(items) if lm is None)
        if vidx:
            y = torch.tensor(np.stack([items[k][1] for k in vidx]), dtype=torch.float64)
            w = torch.tensor(np.stack([items[k][2] for k in vidx]), dtype=torch.float64)
            # thresholds relative to the typical residual of this clip (the model's fit floor)
            floor = float(np.median(self._recent_rms)) if self._recent_rms else 1.0
            reinit = max(cfg.reinit_error, 2.5 * floor)
            lost_thr = max(cfg.lost_error, 5.0 * floor)
            if self.last_theta is None:  # first frame (or after a loss): multi-hypothesis start
                self.last_theta = self.solver.solve_from_scratch(y[:1], w[:1]).theta[0]
            res = self.solver.solve(y, w, self.last_theta[None].expand(len(vidx), -1))
            bad = torch.nonzero(res.rms > reinit)[:, 0]
            if len(bad):
                alt = self.solver.solve_from_scratch(y[bad], w[bad])
                better = alt.rms < res.rms[bad]
                for j, b in enumerate(bad.tolist()):
                    if bool(better[j]):
                        res.theta[b], res.H[b], res.rms[b], res.uv[b] = alt.theta[j], alt.H[j], alt.rms[j], alt.uv[j]
            for j, k in enumerate(vidx):
                if float(res.rms[j]) > lost_thr or not bool(torch.isfinite(res.theta[j]).all()):
                    lost_now.add(k)
                    log.info("Frame %d: landmarks do not fit the head model (RMS %.1f σ); bridged.", items[k][0], float(res.rms[j]))
                    if self.stream is not None:
                        self.stream.mark_lost()
                    continue
                thetas[k] = res.theta[j].numpy()
                hess[k] = res.H[j].numpy()
            good = [j for j, k in enumerate(vidx) if k not in lost_now]
            self._recent_rms = (self._recent_rms + [float(res.rms[j]) for j in good])[-4 * cfg.chunk_size:]
            if good:
                self.last_theta = res.theta[good[-1]].clone()
        t0 = self.timer.add("solve", t0)
        D = self.rig.dim
        out: List[np.ndarray] = []
        for k, (idx, _, _) in enumerate(items):
            if k in lost_now:
                hat = self.last_hat if self.last_hat is not None else np.zeros(D)
                H = np.zeros((D, D))
                self.lost.append(True)
            else:
                hat, H = thetas[k], hess[k]
                self.last_hat = hat
                self.lost.append(False)
            self.raw.append(hat.astype(np.float32))
            self._raw_queue.append(hat)
            out.extend(self.smoother.push(hat, H))
        self.timer.add("smooth", t0)
        self._emit(out)

    def _emit(self, thetas: List[np.ndarray]) -> None:
        """Frames whose final parameters are known: One-Euro, outputs, detail, jitter."""
        if not thetas:
            return
        with torch_threads(self.cfg.solver_threads):
            self._emit_outputs(thetas)

    def _emit_outputs(self, thetas: List[np.ndarray]) -> None:
        t0 = self.timer.mark()
        if self.one_euro is not None:
            thetas = [self.one_euro(t) for t in thetas]
        thetas = [self._constrain(t) for t in thetas]
        n = len(thetas)
        start = self._emit_index
        self._emit_index += n
        raw = self._raw_queue[:n]
        del self._raw_queue[:n]
        th = torch.tensor(np.stack(thetas), dtype=torch.float64)
        thr = torch.tensor(np.stack(raw), dtype=torch.float64)
        ev = self.rig.evaluate(torch.cat([th, thr]), probes=True)
        uv = ev.uv.numpy()
        for i in range(n):
            ok = not self.lost[start + i]
            self.final.append(thetas[i].astype(np.float32))
            self.fitted.append(uv[i, :68].astype(np.float32))
            self.jit.push(uv[i, 68:], thetas[i][ROT], ok)
            self.jit_raw.push(uv[n + i, 68:], raw[i][ROT], ok)
        t0 = self.timer.add("output", t0)
        if self.detail is not None:
            self.detail.process(start, th, self.rig, self.global_orient)
            self.timer.add("detail", t0)

    def _constrain(self, theta: np.ndarray) -> np.ndarray:
        """Smoothing is unconstrained: re-apply the jaw range (no negative opening) and the
        expression bounds of the per-frame solve."""
        t = np.array(theta, np.float64)
        t[6] = min(max(t[6], 0.0), self.cfg.jaw_max_open)
        t[9:] = np.clip(t[9:], -self.cfg.expression_max, self.cfg.expression_max)
        return t

    def finish(self) -> None:
        self._solve_pending()
        t0 = self.timer.mark()
        with torch_threads(self.cfg.solver_threads):
            out = self.smoother.flush()
        self.timer.add("smooth", t0)
        self._emit(out)
        if self.detail is not None:
            t0 = self.timer.mark()
            self.detail.flush(self.rig, self.global_orient)
            self.timer.add("detail", t0)


def _bridge(values: np.ndarray, lost: np.ndarray, interpolate: bool) -> np.ndarray:
    """Fill lost rows: hold at the ends; inside, linear interpolation when ``interpolate`` (else keep)."""
    v = values.copy()
    good = np.nonzero(~lost)[0]
    if len(good) == 0:
        return v
    T = len(v)
    v[: good[0]] = v[good[0]]
    v[good[-1] + 1 :] = v[good[-1]]
    if interpolate:
        bad = np.nonzero(lost)[0]
        bad = bad[(bad > good[0]) & (bad < good[-1])]
        if len(bad):
            flat = v.reshape(T, -1)
            for c in range(flat.shape[1]):
                flat[bad, c] = np.interp(bad, good, flat[good, c])
            v = flat.reshape(v.shape)
    return v


def _crop_rows(boxes: np.ndarray) -> np.ndarray:
    """[T, 3] (scale for a 512 crop, x0, y0) of the portrait crop around each landmark box."""
    from ..face.framing import crop_square_for_box

    out = np.zeros((len(boxes), 3), np.float32)
    for i, b in enumerate(boxes):
        sq = crop_square_for_box(b, CROP_SCALE, CROP_OFFSET)
        out[i] = (CROP_SIZE / max(float(sq[2] - sq[0]), 1e-6), sq[0], sq[1])
    return out


def _check_identity(proxy, identity: Identity, image_size: Tuple[int, int]) -> Identity:
    if identity.static_offsets.shape[0] != proxy.num_vertices:
        raise ExpPortraitError(
            f"The driving identity has {identity.static_offsets.shape[0]} offset vertices but the proxy has "
            f"{proxy.num_vertices}: use the SMPL-X file and subdivision it was fitted with, or let the tracker fit one.")
    h0, w0 = (int(s) for s in identity.image_size) if identity.image_size and identity.image_size[0] else image_size
    H, W = image_size
    if (h0, w0) != (H, W):
        sx, sy = W / w0, H / h0
        if abs(sx - sy) > 0.01 * max(sx, sy):
            raise ExpPortraitError(
                f"The driving identity was fitted on {w0}x{h0} images but the clip is {W}x{H} (another aspect ratio); "
                "fit the identity on a frame of this clip or leave the identity input empty.")
        cam = dict(identity.camera)
        for k in ("fx", "fy", "cx", "cy"):
            cam[k] = identity.camera[k] * sx
        identity = Identity(betas=identity.betas, static_offsets=identity.static_offsets, params=identity.params,
                            camera=cam, image_size=(H, W), model=identity.model, name=identity.name,
                            embedding=identity.embedding)
    return identity


def track_landmarks_stream(
    proxy,
    source: Iterator[Tuple[int, FrameLandmarks, Optional[np.ndarray]]],
    *,
    fps: float,
    image_size: Tuple[int, int],
    config: Optional[TrackConfig] = None,
    identity: Optional[Identity] = None,
    stream: Optional[LandmarkStream] = None,
    timer: Optional[_Timer] = None,
    total: int = 0,
    progress: Optional[ProgressFn] = None,
) -> TrackResult:
    """Track from a stream of ``(index, FrameLandmarks, normal_map | None)`` (frames in order)."""
    from .detail import DetailFitter

    cfg = (config or TrackConfig()).validate()
    timer = timer or _Timer()
    t_start = time.perf_counter()
    det_lm: List[Optional[np.ndarray]] = []
    det_w: List[Optional[np.ndarray]] = []
    boxes: List[Optional[np.ndarray]] = []
    normals: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
    H, W = image_size
    want_detail = cfg.mode == "detail"
    detail_crop = None
    if want_detail:
        from .detail import crop_normal_map as detail_crop

    def record(i: int, fl: FrameLandmarks, nm) -> None:
        det_lm.append(fl.landmarks)
        det_w.append(fl.weights)
        boxes.append(fl.box)
        if want_detail and nm is not None and fl.landmarks is not None:
            normals[i] = detail_crop(nm, fl.landmarks, cfg.detail_resolution, (H, W))
        report(progress, i + 1, total)

    # 1) keyframe window: landmarks only (no images kept)
    buffered = 0
    faces_seen = 0
    it = iter(source)
    for i, fl, nm in it:
        record(i, fl, nm)
        buffered += 1
        faces_seen += fl.landmarks is not None
        if faces_seen >= (cfg.keyframe_window if identity is None else 1):
            break
    if buffered == 0:
        raise ExpPortraitError("The driving clip is empty: give at least one frame.")
    valid = [i for i, l in enumerate(det_lm) if l is not None]
    if not valid:
        # keep consuming: the face may appear later (its absence so far is reported as lost frames)
        for i, fl, nm in it:
            record(i, fl, nm)
            if fl.landmarks is not None:
                valid = [i]
                break
    if not valid:
        raise ExpPortraitError(
            f"No face was found in any of the {len(det_lm)} frames of the driving clip; check that the video shows "
            "a face (at least ~80 px wide) or try another face analyzer backend.")
    fsize = float(np.median([face_size(det_lm[i]) for i in valid]))
    keyframes: List[int] = []
    info: dict = {}
    t0 = timer.mark()
    if identity is None:
        cands = [i for i, l in enumerate(det_lm) if l is not None]
        pick = choose_keyframes([det_lm[i] for i in cands], cfg.num_keyframes)
        keyframes = [cands[k] for k in pick]
        with torch_threads(cfg.solver_threads):
            identity, info = fit_driving_identity(proxy, [None] * len(keyframes), [det_lm[i] for i in keyframes],
                                                  [det_w[i] for i in keyframes], (H, W), cfg)
        info["source"] = "keyframes"
        log.info("Driving identity fitted on keyframes %s (%s, %.2f px).", keyframes, info.get("method"),
                 info.get("keyframe_error_px", float("nan")))
    else:
        identity = _check_identity(proxy, identity, (H, W))
        info = {"source": "given"}
    timer.add("identity", t0)
    detail = DetailFitter(proxy, identity, cfg, normals) if want_detail else None
    tracker = _Tracker(proxy, identity, cfg, fps, fsize, stream, detail, timer)
    for i in range(len(det_lm)):
        tracker.push(i, det_lm[i], det_w[i])
    for i, fl, nm in it:
        record(i, fl, nm)
        tracker.push(i, fl.landmarks, fl.weights)
    tracker.finish()
    t0 = timer.mark()

    T = len(det_lm)
    lost = np.array(tracker.lost, bool)
    theta = np.stack(tracker.final).astype(np.float64)
    theta = _bridge(theta, lost, interpolate=cfg.smoothing != "offline")
    raw = _bridge(np.stack(tracker.raw).astype(np.float64), lost, interpolate=True)
    rig = tracker.rig
    th_t = torch.tensor(theta)
    fitted = rig.evaluate(th_t).uv[:, :68].float().numpy() if lost.any() else np.stack(tracker.fitted)
    detected = np.stack([l if l is not None else np.full((68, 2), np.nan, np.float32) for l in det_lm])
    det_weights = np.stack([w if w is not None else np.zeros(68, np.float32) for w in det_w])
    err = np.where(det_weights > 0, np.linalg.norm(fitted - detected, axis=-1), np.nan)
    reproj = np.full(T, np.nan)
    ok = ~lost & np.isfinite(err).any(1)
    if ok.any():
        reproj[ok] = np.nanmedian(err[ok], axis=1)
    box_arr = np.stack([b if b is not None else np.full(4, np.nan) for b in boxes]).astype(np.float64)
    box_arr = _bridge(box_arr, ~np.isfinite(box_arr).all(1), interpolate=True)
    params = rig.params_from_theta(th_t, identity.betas, tracker.global_orient, proxy.num_expression)
    raw_params = rig.params_from_theta(torch.tensor(raw), identity.betas, tracker.global_orient, proxy.num_expression)
    dyn = dyn_idx = None
    if detail is not None:
        dyn, dyn_idx, identity = detail.result(identity, lost)
    lost_frames = [int(i) for i in np.nonzero(lost)[0]]
    if lost_frames:
        log.warning("Face lost in %d of %d frames (%s); bridged by interpolation.", len(lost_frames), T,
                    _ranges(lost_frames))
    motion = Motion(params=params, camera={k: v.clone() for k, v in identity.camera.items()}, fps=float(fps), model=proxy.describe(), image_size=(H, W),
                    dynamic_offsets=dyn, dynamic_offsets_index=dyn_idx, lost_frames=lost_frames,
                    crops=torch.from_numpy(_crop_rows(box_arr)), identity=identity, name="tracked")
    timer.add("output", t0)
    stage = dict(timer.s)
    stage["total"] = time.perf_counter() - t_start + stage.get("decode", 0.0)
    stage_cpu = dict(timer.cpu)
    stage_cpu["total"] = sum(timer.cpu.values())
    return TrackResult(motion=motion, landmarks_2d=fitted.astype(np.float32), detected=detected.astype(np.float32),
                       detected_weights=det_weights.astype(np.float32), reprojection_error=reproj.astype(np.float32),
                       raw_params=raw_params, jitter=tracker.jit.result(), jitter_raw=tracker.jit_raw.result(),
                       stage_seconds=stage, stage_cpu_seconds=stage_cpu, keyframes=keyframes, identity_info=info)


def _ranges(idx: List[int]) -> str:
    out, s = [], None
    for k, i in enumerate(idx):
        if s is None:
            s = i
        if k + 1 == len(idx) or idx[k + 1] != i + 1:
            out.append(f"{s}" if s == i else f"{s}-{i}")
            s = None
    return ", ".join(out)


def track_landmarks(proxy, landmarks: np.ndarray, *, fps: float, image_size: Tuple[int, int],
                    weights: Optional[np.ndarray] = None, config: Optional[TrackConfig] = None,
                    identity: Optional[Identity] = None, progress: Optional[ProgressFn] = None) -> TrackResult:
    """Track from given 2D landmarks (no images): landmarks [T, 68, 2] px (NaN rows = no face);
    weights [T, 68] (default ones); image_size (H, W) of the frames they were detected on."""
    lm = np.asarray(landmarks, np.float32)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ExpPortraitError(f"landmarks must be [T, 68, 2], got {lm.shape}.")
    if len(lm) == 0:
        raise ExpPortraitError("The driving clip is empty: give at least one frame.")
    wt = np.ones(lm.shape[:2], np.float32) if weights is None else np.asarray(weights, np.float32)

    def gen():
        for i in range(len(lm)):
            ok = bool(np.isfinite(lm[i]).all())
            yield i, FrameLandmarks(lm[i] if ok else None, wt[i] if ok else None, _box(lm[i]) if ok else None, False), None

    return track_landmarks_stream(proxy, gen(), fps=fps, image_size=image_size, config=config, identity=identity,
                                  total=len(lm), progress=progress)


def _box(lm: np.ndarray) -> np.ndarray:
    return np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()], np.float32)


def track_video(
    proxy,
    frames: Union[Iterable[np.ndarray], np.ndarray],
    analyzer,
    *,
    fps: float,
    config: Optional[TrackConfig] = None,
    normal_maps: Optional[Iterable] = None,
    identity: Optional[Identity] = None,
    progress: Optional[ProgressFn] = None,
    num_frames: Optional[int] = None,
) -> TrackResult:
    """Track a driving clip.

    frames: uint8 RGB frames [H, W, 3] — an array [T, H, W, 3] or any iterable/generator (streamed:
        each frame is released after its landmarks are found); float frames in 0..1 are accepted.
    analyzer: a :class:`~expportrait_core.face.FaceAnalyzer` (detection on the first frame and
        when lost, ``landmarks_in_box`` otherwise).
    fps: frame rate (sets the One-Euro filters' time constants and ``Motion.fps``).
    normal_maps: detail mode only — one normal map per frame (float [H', W', 3] in 0..1 or uint8,
        CONTRIBUTING encoding: GL camera axes, rgb = 0.5·n + 0.5, background black; any
        resolution with the frames' aspect ratio).
    identity: the driving subject if already fitted (else fitted on keyframes of the clip).
    progress: ``progress(i, n, None)`` per frame (n = 0 when the length is unknown).
    num_frames: the clip length when ``frames`` is a generator (for progress only).
    Returns a :class:`TrackResult`. Raises :class:`ExpPortraitError` for an empty clip, a clip
    without any face, or frames of different sizes.
    """
    cfg = (config or TrackConfig()).validate()
    if cfg.mode == "detail" and normal_maps is None:
        raise ExpPortraitError("Detail tracking needs normal maps (one per frame, from a normal estimator); use mode 'fast' without them.")
    total = int(num_frames or (len(frames) if hasattr(frames, "__len__") else 0))
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        raise ExpPortraitError(f"frames has shape {frames.shape}; expected a batch [T, H, W, 3] or a list of frames.")
    timer = _Timer()
    stream = LandmarkStream(analyzer, cfg, fps)
    size: List[Tuple[int, int]] = []
    nm_iter = iter(normal_maps) if normal_maps is not None else None

    def gen():
        t0 = timer.mark()
        for i, fr in enumerate(frames):
            img = _as_frame(fr, i)
            nm = None
            if nm_iter is not None:
                try:
                    nm = next(nm_iter)
                except StopIteration:
                    raise ExpPortraitError(f"There are fewer normal maps than frames (none for frame {i}); give one per frame.") from None
                nm = nm.detach().cpu().numpy() if isinstance(nm, torch.Tensor) else np.asarray(nm)
            t0 = timer.add("decode", t0)
            if not size:
                size.append(img.shape[:2])
            elif img.shape[:2] != size[0]:
                raise ExpPortraitError(
                    f"Frame {i} is {img.shape[1]}x{img.shape[0]} but frame 0 is {size[0][1]}x{size[0][0]}: all frames of a "
                    "driving clip must have the same size (resize or crop them first).")
            fl = stream.step(img)
            t0 = timer.add("landmarks", t0)
            yield i, fl, nm
            t0 = timer.mark()

    g = gen()
    try:
        first = next(g)
    except StopIteration:
        raise ExpPortraitError("The driving clip is empty: give at least one frame.") from None

    def chain():
        yield first
        yield from g

    res = track_landmarks_stream(proxy, chain(), fps=fps, image_size=tuple(size[0]), config=cfg, identity=identity,
                                 stream=stream, timer=timer, total=total, progress=progress)
    res.identity_info["detections"] = stream.detections
    return res


def track_video_file(proxy, path, analyzer, *, max_frames: int = 0, **kw) -> TrackResult:
    """Track a video file, decoding frames one at a time (constant memory). ``kw`` as
    :func:`track_video` (``fps`` defaults to the file's)."""
    from ..io.video import iter_video_frames, prefetch, probe_video

    info = probe_video(path)
    kw.setdefault("fps", info.fps)
    n = info.num_frames if not max_frames else min(max_frames, info.num_frames)
    kw.setdefault("num_frames", n)
    # decode on a background thread: it overlaps with landmarks + solve on a multi-core CPU
    return track_video(proxy, prefetch(iter_video_frames(path, max_frames), depth=8), analyzer, **kw)
