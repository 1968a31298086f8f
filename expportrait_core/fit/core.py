"""Identity fitting (paper §2.6): SMPL-X shape + dense static offsets from one or a few portraits.

Stages (each an Adam loop with cosine learning-rate decay, NaN/Inf guards, early stopping in the
second half of a stage and progress reporting; the ``progress`` callback may raise to cancel):

1. **init** — camera placement and multi-hypothesis rigid init on the landmark rig: the head
   rotations of ``FitConfig.yaw_hypotheses_deg`` plus a perspective-n-point solution of the inner
   landmarks are refined together, the translation re-solved in closed form after every step
   (linear least squares of the perspective projection); the lowest robust loss wins.
2. **rigid** — head pose (and optionally the focal length) from landmarks.
3. **shape** — betas, expression and jaw (plus pose) from landmarks, with Gaussian priors
   (:class:`~expportrait_core.fit.landmarks.ShapeLandmarkModel`, a shape-aware landmark rig: no
   mesh evaluation, milliseconds per step).
4. **dense** — only when a normal map, a depth map or a mask is given: the posed proxy is
   rendered by the differentiable renderer in a window around the head
   (``FitConfig.dense_resolution``) and the static offsets Δ_g (a smooth "large steps" height field
   along the normals), betas, expression, jaw, eyes, head pose and the body turn are refined
   against L1 normals, scale/shift-aligned L1 depth, a contour-chamfer silhouette term, landmarks,
   priors, offset magnitude and Laplacian smoothness of the offsets, the learning rates ramping up
   over the first ``FitConfig.dense_lr_warmup`` of the stage. By default (``offset_space='base'``)
   the model is evaluated on the bust's base vertices and upsampled after skinning by the proxy's
   own barycentric upsampler, so the rendered surface and shading are the upsampled mesh's at a
   fraction of the cost (see :class:`~expportrait_core.fit.dense_model.DenseModel`).
4'. **offsets** — instead, when no normal/depth/mask is given (``FitConfig.landmark_offsets``):
   Δ_g as a smooth free 3-D field on the base vertices, fitted to the landmarks (which are the
   rig's points plus Δ_g interpolated there, i.e. the fitted mesh's own landmarks) with Laplacian
   and magnitude regularizers, betas/expression/jaw/pose refined together. The shape space alone
   leaves a real face's jaw contour and brows several pixels off (5.5% of the inter-ocular
   distance on the insightface sample before, 1.9% after).

Camera distance: a millimetre of depth moves the landmarks distance/face-radius (≈ 40 at 14°)
times less than a millimetre sideways, so in the shape, dense and landmark-offset stages the
translation's depth axis takes proportionally larger Adam steps (``FitConfig.depth_lr_scale``);
with equal steps the distance barely moved and the betas shrank the face instead. (Not in the
rigid stage: the shape is fixed there and the init's closed-form translation already has the
distance; letting it run there traded distance for yaw on a strongly turned head.)

Conventions shared with tracking: camera rotation ``framing.FRONT_R``; focal from the field of
view; the camera looks along the optical axis through the rest-pose head from the distance at
which the landmark spread matches; ``transl`` is the bust translation; the rigid head rotation
``r`` is split evenly as ``neck_pose = head_pose = r / 2``; ``global_orient`` (body turn) is
shared by all images of a subject; jaw opening is a positive rotation about x.
"""
from __future__ import annotations

import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import ExpPortraitError
from ..grad import autograd_enabled
from ..head.framing import FRONT_R
from ..head.params import HeadParams
from ..io.files import Identity
from ..progress import ProgressFn, report
from .config import FitConfig
from .dense_model import DenseModel
from .landmarks import (
    CONTOUR,
    ShapeLandmarkModel,
    face_size,
    robust_landmark_loss,
    solve_translation,
)
from .laplacian import LaplacianOp, SmoothSolve

log = logging.getLogger(__name__)

MM2 = 1e6  # m² → mm²: offset regularizers are written in mm so their weights are O(1)


# =============================================================================================
# results
@dataclass
class FitResult:
    """Result of :func:`fit_identity` / :func:`fit_shared_identity`.

    identity: the fitted :class:`~expportrait_core.io.files.Identity` (betas, static offsets, the
        reference image's pose/expression and camera).
    landmarks_2d: [68, 2] fitted landmark projections on the reference image (px).
    landmark_error_px: mean distance of ``landmarks_2d`` to the target landmarks (px, weight > 0).
    stage_seconds: wall time per stage (``init``, ``rigid``, ``shape``, ``dense``, ``preview``).
    preview: uint8 [H, W, 3] fitted normals blended over the photo.
    rendered_mask: float32 [H, W] coverage of the fitted proxy on the reference image.
    per_image_params: HeadParams with one item per image (reference first; betas shared).
    per_image_landmarks_2d / per_image_landmark_error_px: the same per image.
    losses: the final value of every loss term; iterations: steps run per stage; warnings: notes
        for the user (e.g. the dense stage was skipped).
    """

    identity: Identity
    landmarks_2d: np.ndarray
    landmark_error_px: float
    stage_seconds: Dict[str, float]
    preview: np.ndarray
    rendered_mask: Optional[np.ndarray] = None
    per_image_params: Optional[HeadParams] = None
    per_image_landmarks_2d: List[np.ndarray] = field(default_factory=list)
    per_image_landmark_error_px: List[float] = field(default_factory=list)
    losses: Dict[str, float] = field(default_factory=dict)
    iterations: Dict[str, int] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


# =============================================================================================
# inputs
@dataclass
class _View:
    """One image's targets. Dense targets are resampled to the dense-render camera size."""

    height: int
    width: int
    landmarks: torch.Tensor  # [68, 2] px
    weights: torch.Tensor  # [68]
    scale: float  # face size (px)
    image: Optional[np.ndarray] = None
    embedding: Optional[np.ndarray] = None
    normal: Optional[torch.Tensor] = None  # [h, w, 3] unit, GL camera axes
    normal_valid: Optional[torch.Tensor] = None  # [h, w] bool
    depth: Optional[torch.Tensor] = None  # [h, w] normalized (zero median, unit MAD)
    depth_valid: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None  # [h, w] float 0/1
    mask_boundary: Optional[torch.Tensor] = None  # [M, 2] px at dense size
    raw_normal: Optional[np.ndarray] = None
    raw_depth: Optional[np.ndarray] = None
    raw_mask: Optional[np.ndarray] = None

    @property
    def has_dense(self) -> bool:
        return self.raw_normal is not None or self.raw_depth is not None or self.raw_mask is not None


def _as_image(image: Any, what: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ExpPortraitError(f"{what} must be an [H, W, 3] RGB image, got shape {arr.shape}.")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        a = np.nan_to_num(arr.astype(np.float32))
        if a.max() <= 1.5:
            a = a * 255.0
        arr = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _as_float_map(x: Any, channels: int, what: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    if channels == 1:
        if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
            a = a[..., 0]
        if a.ndim != 2:
            raise ExpPortraitError(f"{what} must be an [H, W] map, got shape {a.shape}.")
    else:
        if a.ndim != 3 or a.shape[-1] < 3:
            raise ExpPortraitError(f"{what} must be an [H, W, 3] image, got shape {a.shape}.")
        a = a[..., :3]
        if a.max() > 1.5:  # uint8-style 0..255 values
            a = a / 255.0
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def _detect(analyzer, image: np.ndarray, index: int):
    if analyzer is None:
        raise ExpPortraitError(
            f"Image {index}: no landmarks were given and no face analyzer: connect an 'ExpPortrait Face Analyzer' "
            "(or pass landmarks [68, 2])."
        )
    try:
        faces = analyzer.detect(image, max_faces=1, with_embedding=True)
    except TypeError:  # analyzers without the keyword arguments
        faces = analyzer.detect(image)
    if not faces:
        raise ExpPortraitError(
            f"Image {index}: no face was found. Use a portrait where the face is visible and at least ~80 px wide, "
            "or pass the 68 landmarks yourself."
        )
    return faces[0]


def _make_view(index: int, image, landmarks, weights, analyzer, normal_map, depth, mask, size=None) -> _View:
    img = None if image is None else _as_image(image, f"image {index}")
    embedding = None
    if landmarks is None:
        if img is None:
            raise ExpPortraitError(f"Image {index}: give an image or its 68 landmarks.")
        face = _detect(analyzer, img, index)
        landmarks = face.landmarks
        if weights is None:
            weights = getattr(face, "landmark_weights", None)
        embedding = getattr(face, "embedding", None)
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise ExpPortraitError(f"Image {index}: landmarks must be a finite [68, 2] array (iBUG-68 order), got {lm.shape}.")
    w = np.ones(68, np.float32) if weights is None else np.asarray(weights, np.float32).reshape(-1)
    if w.shape != (68,):
        raise ExpPortraitError(f"Image {index}: landmark_weights must have 68 entries, got {w.shape}.")
    w = np.clip(np.nan_to_num(w), 0.0, None)
    if w.sum() <= 0:
        raise ExpPortraitError(f"Image {index}: all landmark weights are zero.")
    nm = None if normal_map is None else _as_float_map(normal_map, 3, f"normal map {index}")
    dp = None if depth is None else _as_float_map(depth, 1, f"depth map {index}")
    mk = None if mask is None else _as_float_map(mask, 1, f"mask {index}")
    if img is not None:
        H, W = img.shape[:2]
    elif size is not None:
        H, W = int(size[0]), int(size[1])
    else:
        ref = next((m for m in (nm, dp, mk) if m is not None), None)
        if ref is None:
            raise ExpPortraitError(f"Image {index}: the image size is unknown; give the image (or image_size).")
        H, W = ref.shape[:2]
    for what, m in (("normal map", nm), ("depth map", dp), ("mask", mk)):
        if m is not None and abs(m.shape[1] / m.shape[0] - W / H) > 0.02:
            raise ExpPortraitError(
                f"Image {index}: the {what} is {m.shape[1]}x{m.shape[0]} but the image is {W}x{H}; "
                "they must show the same framing (same aspect ratio)."
            )
    return _View(height=H, width=W, landmarks=torch.from_numpy(lm), weights=torch.from_numpy(w), scale=face_size(lm),
                 image=img, embedding=None if embedding is None else np.asarray(embedding, np.float32),
                 raw_normal=nm, raw_depth=dp, raw_mask=mk)


def _resize(a: np.ndarray, w: int, h: int, nearest: bool = False) -> np.ndarray:
    import cv2

    if a.shape[1] == w and a.shape[0] == h:
        return a
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if a.shape[1] > w else cv2.INTER_LINEAR)
    return cv2.resize(a, (w, h), interpolation=interp)


@dataclass
class _Crop:
    """Dense-render window of an image: pixels [x0, x0 + w/sx) × [y0, y0 + h/sy) resampled to w × h."""

    x0: int
    y0: int
    sx: float
    sy: float
    w: int
    h: int

    def to_crop(self, px: torch.Tensor) -> torch.Tensor:
        """Image pixel coordinates [..., 2] → crop pixel coordinates."""
        return torch.stack([(px[..., 0] - self.x0) * self.sx, (px[..., 1] - self.y0) * self.sy], -1)


def _dense_crop(view: _View, cfg: FitConfig) -> _Crop:
    """A window around the head (``cfg.dense_crop`` × the landmarks' box, raised to include the
    hair), clipped to the image, rendered with at most ``cfg.dense_resolution`` pixels a side."""
    lm = view.landmarks.numpy()
    lo, hi = lm.min(0), lm.max(0)
    side = cfg.dense_crop * float(max(hi - lo))
    cx, cy = 0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]) - 0.12 * side
    if side <= 0 or cfg.dense_crop <= 0:
        x0, y0, x1, y1 = 0, 0, view.width, view.height
    else:
        x0 = int(np.clip(np.floor(cx - side / 2), 0, view.width - 1))
        y0 = int(np.clip(np.floor(cy - side / 2), 0, view.height - 1))
        x1 = int(np.clip(np.ceil(cx + side / 2), x0 + 1, view.width))
        y1 = int(np.clip(np.ceil(cy + side / 2), y0 + 1, view.height))
    cw, ch = x1 - x0, y1 - y0
    s = min(1.0, cfg.dense_resolution / max(cw, ch))
    w, h = max(8, int(round(cw * s))), max(8, int(round(ch * s)))
    return _Crop(x0, y0, w / cw, h / ch, w, h)


def _crop_map(a: np.ndarray, view: _View, crop: _Crop) -> np.ndarray:
    """Resample a dense target given at any resolution (image aspect ratio) to the crop window."""
    a = _resize(a, view.width, view.height)
    a = a[crop.y0: crop.y0 + int(round(crop.h / crop.sy)), crop.x0: crop.x0 + int(round(crop.w / crop.sx))]
    return _resize(np.ascontiguousarray(a), crop.w, crop.h)


def _prepare_dense(view: _View, crop: _Crop, device) -> None:
    """Resample the view's dense targets to its dense-render crop."""
    import cv2

    w, h = crop.w, crop.h
    mk = None
    if view.raw_mask is not None:
        mk = _crop_map(view.raw_mask.astype(np.float32), view, crop) > 0.5
        view.mask = torch.from_numpy(mk.astype(np.float32)).to(device)
        m8 = mk.astype(np.uint8)
        inner = cv2.erode(m8, np.ones((3, 3), np.uint8))
        ys, xs = np.nonzero(m8 & (1 - inner))
        keep = (xs >= 2) & (xs < w - 2) & (ys >= 2) & (ys < h - 2)  # the frame border is no silhouette
        pts = np.stack([xs[keep] + 0.5, ys[keep] + 0.5], -1).astype(np.float32)
        if len(pts) > 4000:
            pts = pts[np.linspace(0, len(pts) - 1, 4000).astype(np.int64)]
        view.mask_boundary = torch.from_numpy(pts).to(device)
    if view.raw_normal is not None:
        n = view.raw_normal * 2.0 - 1.0
        norm = np.linalg.norm(n, axis=-1)
        valid = ((norm > 0.5) & (norm < 1.5)).astype(np.float32)
        n = n / np.maximum(norm, 1e-6)[..., None] * valid[..., None]
        n = _crop_map(n, view, crop)
        valid = _crop_map(valid, view, crop) > 0.99
        if mk is not None:
            valid &= mk
        nrm = np.linalg.norm(n, axis=-1, keepdims=True)
        view.normal = torch.from_numpy(n / np.maximum(nrm, 1e-6)).to(device)
        view.normal_valid = torch.from_numpy(valid).to(device)
    if view.raw_depth is not None:
        d = view.raw_depth
        valid = np.isfinite(d) & (d != 0)
        vf = _crop_map(valid.astype(np.float32), view, crop) > 0.99
        d = _crop_map(np.where(valid, d, 0).astype(np.float32), view, crop)
        if mk is not None:
            vf &= mk
        if vf.sum() < 16:
            view.depth = None
        else:
            med = float(np.median(d[vf]))
            mad = float(np.median(np.abs(d[vf] - med))) or 1.0
            view.depth = torch.from_numpy((d - med) / mad).to(device)
            view.depth_valid = torch.from_numpy(vf).to(device)


# =============================================================================================
# variables
class _Vars:
    """All optimized quantities. Per image (K): expression, jaw, eyes, head rotation r, transl.
    Shared: betas, body turn (global_orient), log focal scale, static-offset field."""

    def __init__(self, proxy, K: int, cfg: FitConfig) -> None:
        dev = proxy.device
        z = lambda *s: torch.zeros(*s, device=dev)  # noqa: E731
        self.nb = min(cfg.num_fit_betas, proxy.num_betas)
        self.ne = min(cfg.num_fit_expression, proxy.num_expression)
        self.betas = z(1, self.nb)
        self.expression = z(K, self.ne)
        self.jaw = z(K, 3)
        self.leye = z(K, 3)
        self.reye = z(K, 3)
        self.rot = z(K, 3)
        self.transl = z(K, 3)
        self.body = z(1, 3)
        self.log_focal = z(1)
        self.u: Optional[torch.Tensor] = None  # offset-field parameter (see _OffsetField)
        self.proxy_nb, self.proxy_ne, self.K = proxy.num_betas, proxy.num_expression, K

    def names(self) -> List[str]:
        return ["betas", "expression", "jaw", "leye", "reye", "rot", "transl", "body", "log_focal"] + (
            ["u"] if self.u is not None else [])

    def snapshot(self) -> Dict[str, torch.Tensor]:
        return {k: getattr(self, k).detach().clone() for k in self.names()}

    def restore(self, snap: Dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in snap.items():
                getattr(self, k).copy_(v)

    def params(self, idx: Optional[Sequence[int]] = None) -> HeadParams:
        """HeadParams (batch K, or the items ``idx``) built from the variables."""
        sel = (lambda t: t) if idx is None else (lambda t: t[list(idx)])  # noqa: E731
        K = self.K if idx is None else len(idx)
        dev = self.betas.device
        betas = torch.cat([self.betas, torch.zeros(1, self.proxy_nb - self.nb, device=dev)], 1).expand(K, -1)
        expr = torch.cat([sel(self.expression), torch.zeros(K, self.proxy_ne - self.ne, device=dev)], 1)
        half = 0.5 * sel(self.rot)
        return HeadParams(betas=betas, expression=expr, global_orient=self.body.expand(K, -1), neck_pose=half,
                          head_pose=half, jaw_pose=sel(self.jaw), leye_pose=sel(self.leye), reye_pose=sel(self.reye),
                          transl=sel(self.transl))


_PER_PROXY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached(proxy, key: tuple, make: Callable[[], Any]) -> Any:
    """Per-proxy cache of mesh operators that depend only on the proxy's topology (the sparse LU
    factorization of the offset preconditioner, Laplacians): built once, reused by every fit."""
    per = _PER_PROXY.setdefault(proxy, {})
    if key not in per:
        per[key] = make()
    return per[key]


class _OffsetField:
    """Static offsets from a smooth parameter ``u: [n, C]`` on the dense model's vertices.

    ``x = (I + λK)⁻¹ u`` on the model's mesh (the bust's base vertices when ``model.coarse``, else
    the upsampled mesh); ``mode='normal'``: x is a scalar height along the neutral normals (a
    displacement map: the only component a monocular image observes); ``mode='xyz'``: x is a free
    3-D offset. :meth:`__call__` gives the offsets on the model's vertices [n, 3];
    :meth:`upsampled` the proxy's Δ_g [N_s, 3] (base values interpolated by the upsampler B).
    """

    def __init__(self, proxy, model, lam: float, mode: str, betas: torch.Tensor) -> None:
        """model: a :class:`DenseModel` or :class:`~expportrait_core.fit.dense_model.BaseMesh`
        (``faces``, ``num_vertices``, ``coarse``)."""
        from ..render import vertex_normals

        if mode not in ("normal", "xyz"):
            raise ExpPortraitError(f"FitConfig.offset_mode must be 'normal' or 'xyz', got {mode!r}.")
        self.mode, self.coarse = mode, model.coarse
        self.channels = 1 if mode == "normal" else 3
        self.n = model.num_vertices
        self.solver = _cached(proxy, ("solve", self.coarse, self.n, float(lam)),
                              lambda: SmoothSolve(model.faces.cpu().numpy(), self.n, lam))
        with torch.no_grad():
            self.normals = None
            if mode == "normal":
                full = proxy.neutral(betas)  # [1, N_s, 3] canonical neutral
                normals_full = vertex_normals(full, proxy.faces)[0]
                # coarse: the upsampled normals at the base vertices (the first n upsampled ones)
                self.normals = normals_full[: self.n] if self.coarse else normals_full
            if self.coarse:
                local = -torch.ones(proxy.v_template.shape[0], dtype=torch.long, device=proxy.device)
                local[proxy.bust_vertex_ids] = torch.arange(self.n, device=proxy.device)
                self.gather = local[proxy.up_idx]  # [N_s, 3] base-local ids
                self.gather_w = proxy.up_w

    def _x(self, u: torch.Tensor, max_offset: float) -> torch.Tensor:
        x = self.solver.solve(u)
        # runaway guard: a smooth clamp of the offset length at max_offset, tanh(r)/r (finite at 0)
        r = x.norm(dim=-1, keepdim=True) / max_offset
        rs = r.clamp_min(1e-3)
        return x * torch.where(r > 1e-3, torch.tanh(rs) / rs, 1.0 - r * r / 3.0)

    def __call__(self, u: torch.Tensor, max_offset: float) -> torch.Tensor:
        """Offsets on the dense model's vertices: [n, 3]."""
        x = self._x(u, max_offset)
        return x * self.normals if self.mode == "normal" else x

    def upsampled(self, u: torch.Tensor, max_offset: float) -> torch.Tensor:
        """The proxy's static offsets Δ_g: [N_s, 3] (base-vertex offsets interpolated by B, exactly
        what the coarse dense stage rendered)."""
        x = self(u, max_offset)
        if self.coarse:
            x = (x[self.gather] * self.gather_w[..., None]).sum(1)
        return x


# =============================================================================================
# losses
def _priors(v: _Vars, cfg: FitConfig, dense: bool = False) -> Dict[str, torch.Tensor]:
    jaw = v.jaw
    w_b = cfg.w_betas_dense if dense else cfg.w_betas
    w_e = cfg.w_expression_dense if dense else cfg.w_expression
    return {
        "betas": w_b * (v.betas ** 2).sum(),
        "expression": w_e * (v.expression ** 2).sum(-1).mean(),
        # jaw: opening (x) is free-ish; side/twist and closing past rest are unlikely
        "jaw": cfg.w_jaw * ((jaw[:, 1:] ** 2).sum(-1) * 10 + jaw[:, 0].clamp(max=0) ** 2 * 100 + jaw[:, 0] ** 2).mean(),
        "eyes": cfg.w_eyes * ((v.leye ** 2).sum(-1) + (v.reye ** 2).sum(-1)).mean(),
        "body": cfg.w_body_turn * (v.body ** 2).sum(),
        "focal": cfg.w_focal_prior * (v.log_focal ** 2).sum(),
    }


def _landmark_loss(lm3d: torch.Tensor, views: List[_View], cam: "_CameraModel", v: _Vars, cfg: FitConfig,
                   lm_w: torch.Tensor, lm_t: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Robust landmark loss summed over images; lm3d: [K, 68, 3] world."""
    proj = cam.project_all(lm3d, v)
    return cfg.w_landmarks * robust_landmark_loss(proj, lm_t, lm_w, scales, cfg.landmark_sigma, cfg.robust_scale).sum()


class _CameraModel:
    """Fixed FRONT_R rotation and translation; per-image principal point; focal = f0 · exp(log_focal)."""

    def __init__(self, views: List[_View], R: torch.Tensor, t: torch.Tensor, fov_y_deg: float) -> None:
        self.R, self.t = R, t
        self.depth_ratio = 1.0  # camera distance / face radius (set by the fit; see _transl_lr_scale)
        self.f0 = torch.tensor([0.5 * vw.height / math.tan(math.radians(fov_y_deg) / 2) for vw in views], device=R.device)
        self.cx = torch.tensor([vw.width / 2 for vw in views], device=R.device)
        self.cy = torch.tensor([vw.height / 2 for vw in views], device=R.device)

    def focal(self, v: _Vars) -> torch.Tensor:
        return self.f0 * torch.exp(v.log_focal)

    def project_all(self, pts: torch.Tensor, v: _Vars, idx: Optional[Sequence[int]] = None) -> torch.Tensor:
        """pts: [K, N, 3] world → [K, N, 2] px on each image (or the images ``idx``)."""
        sel = slice(None) if idx is None else list(idx)
        f = self.focal(v)[sel]
        pc = pts @ self.R.T + self.t
        z = pc[..., 2:3].clamp_min(1e-4)
        return torch.cat([f[:, None, None] * pc[..., :1] / z + self.cx[sel][:, None, None],
                          f[:, None, None] * pc[..., 1:2] / z + self.cy[sel][:, None, None]], -1)

    def camera(self, v: _Vars, k: int, crop: Optional["_Crop"] = None):
        """Render camera of image ``k`` (full image, or the dense-render ``crop`` of it)."""
        from ..render import Camera

        f = self.focal(v)[k]
        W, H = int(round(float(self.cx[k]) * 2)), int(round(float(self.cy[k]) * 2))
        if crop is None:
            return Camera(fx=f, fy=f, cx=self.cx[k], cy=self.cy[k], R=self.R, t=self.t, width=W, height=H)
        return Camera(fx=f * crop.sx, fy=f * crop.sy, cx=(self.cx[k] - crop.x0) * crop.sx, cy=(self.cy[k] - crop.y0) * crop.sy,
                      R=self.R, t=self.t, width=crop.w, height=crop.h)

    def as_dict(self, v: _Vars, k: int) -> Dict[str, torch.Tensor]:
        f = float(self.focal(v)[k])
        one = lambda x: torch.tensor([float(x)])  # noqa: E731
        return {"fx": one(f), "fy": one(f), "cx": one(self.cx[k]), "cy": one(self.cy[k]),
                "R": self.R.detach().cpu().clone(), "t": self.t.detach().cpu().clone()}


def _cauchy(d: torch.Tensor, c: float) -> torch.Tensor:
    return c * c * torch.log1p((d / c) ** 2)


class _Silhouette:
    """Contour chamfer between the proxy's outer silhouette (vertices on front/back-facing edges
    that lie on the rendered mask's border) and the target mask's border. Visibility has no
    gradient, so this moves the silhouette through the projected contour vertices instead."""

    def __init__(self, faces: torch.Tensor) -> None:
        f = faces.cpu().numpy()
        e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], 0)
        fid = np.tile(np.arange(len(f)), 3)
        es = np.sort(e, 1)
        key = es[:, 0].astype(np.int64) * (int(f.max()) + 1) + es[:, 1]
        order = np.argsort(key, kind="stable")
        ks = key[order]
        first = np.nonzero(np.r_[True, ks[1:] != ks[:-1]])[0]
        counts = np.diff(np.r_[first, len(ks)])
        two = first[counts == 2]
        self.edge_v = torch.from_numpy(es[order[two]]).to(faces.device)  # [E, 2]
        self.edge_f = torch.from_numpy(np.stack([fid[order[two]], fid[order[two + 1]]], 1)).to(faces.device)
        self.faces = faces

    @torch.no_grad()
    def contour_vertices(self, verts_cam: torch.Tensor, rendered_mask: np.ndarray, proj: torch.Tensor) -> torch.Tensor:
        """Ids of vertices on the outer silhouette. verts_cam: [N, 3]; proj: [N, 2] px."""
        import cv2

        tri = verts_cam[self.faces]
        n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
        front = (n * tri.mean(1)).sum(-1) < 0
        ce = front[self.edge_f[:, 0]] != front[self.edge_f[:, 1]]
        vids = torch.unique(self.edge_v[ce].reshape(-1))
        if vids.numel() == 0:
            return vids
        m8 = (rendered_mask > 0.5).astype(np.uint8)
        dist_in = cv2.distanceTransform(m8, cv2.DIST_L2, 3)  # 0 outside, distance to the border inside
        h, w = m8.shape
        p = proj[vids]
        xi = p[:, 0].floor().long().clamp(0, w - 1).cpu().numpy()
        yi = p[:, 1].floor().long().clamp(0, h - 1).cpu().numpy()
        on_border = dist_in[yi, xi] <= 1.5
        return vids[torch.from_numpy(on_border).to(vids.device)]

    def loss(self, contour_px: torch.Tensor, target_px: torch.Tensor, scale: float, c: float) -> torch.Tensor:
        if contour_px.shape[0] == 0 or target_px.shape[0] == 0:
            return contour_px.sum() * 0.0
        if contour_px.shape[0] > 3000:
            contour_px = contour_px[torch.linspace(0, contour_px.shape[0] - 1, 3000).long()]
        d = torch.cdist(contour_px / scale, target_px / scale)
        return 0.5 * (_cauchy(d.min(1).values, c).mean() + _cauchy(d.min(0).values, c).mean())


# =============================================================================================
# optimization loop
class _Stepper:
    """Progress accounting across stages (the total is fixed up front; early stops skip ahead)."""

    def __init__(self, total: int, progress: Optional[ProgressFn]) -> None:
        self.total, self.done, self.progress = max(1, total), 0, progress

    def tick(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        report(self.progress, self.done, self.total)


class _Adam(torch.optim.Optimizer):
    """Adam; groups with ``uniform=True`` use one second-moment scalar for the whole tensor (the
    maximum over its entries), Nicolet et al.'s "uniform Adam" for the large-steps offsets: steps
    keep the relative size of the smoothed gradient, so barely observed vertices (back of the
    head) are not pushed as far as visible ones by per-entry normalization."""

    def __init__(self, groups: List[dict], betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(groups, dict(lr=1e-3, betas=betas, eps=eps, uniform=False, scale=None))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["t"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros((), device=p.device, dtype=p.dtype) if g["uniform"] else torch.zeros_like(p)
                st["t"] += 1
                st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                g2 = p.grad.square().max() if g["uniform"] else p.grad.square()
                st["v"].mul_(b2).add_(g2, alpha=1 - b2)
                mh = st["m"] / (1 - b1 ** st["t"])
                vh = st["v"] / (1 - b2 ** st["t"])
                stepv = mh / (vh.sqrt() + g["eps"])
                if g["scale"] is not None:  # per-entry learning-rate factors (e.g. the depth of transl)
                    stepv = stepv * g["scale"]
                p.add_(stepv, alpha=-g["lr"])


def _optimize(name: str, groups: List[dict], closure: Callable[[], Dict[str, torch.Tensor]], iters: int,
              v: _Vars, cfg: FitConfig, stepper: _Stepper, warnings: List[str],
              on_step: Optional[Callable[[], None]] = None, warmup: float = 0.0) -> tuple:
    """Adam loop with a NaN/Inf guard (restore the last finite state and stop) and early stopping
    on a relative improvement below ``cfg.early_stop_tol`` over ``cfg.early_stop_window`` steps.
    Returns (final loss terms, iterations run)."""
    opt = _Adam(groups)
    base_lr = [g["lr"] for g in opt.param_groups]
    hist: List[float] = []
    n_warm = int(round(max(0.0, min(1.0, warmup)) * iters))
    good = v.snapshot()
    terms: Dict[str, torch.Tensor] = {}
    it = 0
    for it in range(1, iters + 1):
        # cosine decay to lr_final × the initial rate: large steps first, then settle (Adam's
        # normalized steps otherwise keep the variables jittering around the optimum)
        decay = cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * (it - 1) / max(iters - 1, 1)))
        if it <= n_warm:  # linear warm-up: Adam's first steps are ±lr on every coefficient at once
            decay *= it / (n_warm + 1)
        for g, lr0 in zip(opt.param_groups, base_lr):
            g["lr"] = lr0 * decay
        opt.zero_grad(set_to_none=True)
        terms = closure()
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            v.restore(good)
            warnings.append(f"{name}: non-finite loss at step {it}; kept the last finite state.")
            log.warning("fit %s: non-finite loss at step %d, stopping the stage", name, it)
            stepper.tick(iters - it + 1)
            return {k: float(t) for k, t in terms.items() if torch.isfinite(t)}, it - 1
        good = v.snapshot()
        loss.backward()
        for g in groups:
            for p in g["params"]:
                if p.grad is not None:
                    torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        opt.step()
        if on_step is not None:
            on_step()
        stepper.tick()
        hist.append(float(loss.detach()))
        if log.isEnabledFor(logging.DEBUG) and (it % 10 == 0 or it == 1):
            log.debug("fit %s %d: %.5f %s rot %s", name, it, hist[-1], {k: round(float(t), 5) for k, t in terms.items()},
                      [round(float(x), 4) for x in v.rot[0]])
        W = cfg.early_stop_window
        if len(hist) > 2 * W and it >= cfg.early_stop_min_fraction * iters:
            before, recent = min(hist[:-W]), min(hist[-W:])
            if before - recent < cfg.early_stop_tol * max(abs(before), 1e-12):  # no real progress in W steps
                stepper.tick(iters - it)
                break
    with torch.no_grad():
        terms = closure()
    return {k: float(t) for k, t in terms.items()}, it


def _transl_lr_scale(cfg: FitConfig, cam: "_CameraModel", dev) -> torch.Tensor:
    """Per-axis learning-rate factors of the bust translation [3]. A step δ sideways moves the
    landmarks by f·δ/z pixels, the same step in depth (world z ≈ the optical axis of the frontal
    camera) only by (δ/z)·(face radius in px) = f·δ·ρ/z² (ρ: the face's radius in metres): z/ρ
    times less. Adam's normalized steps would leave the distance nearly frozen, and the betas
    would shrink or grow the face instead; the depth axis gets ``cfg.depth_lr_scale · z/ρ``."""
    return torch.tensor([1.0, 1.0, max(1.0, float(cfg.depth_lr_scale) * cam.depth_ratio)], device=dev)


def _set_grad(v: _Vars, names: Sequence[str]) -> None:
    for k in v.names():
        getattr(v, k).requires_grad_(k in names)


def _pnp_rotation(X0: torch.Tensor, lm: torch.Tensor, w: torch.Tensor, f: float, cx: float, cy: float,
                  R_cam: torch.Tensor) -> torch.Tensor:
    """Head rotation (axis-angle [3]) from a perspective-n-point solve of the 51 inner landmarks
    (rest-pose 3-D landmarks ``X0: [68, 3]`` vs pixels ``lm: [68, 2]``). Zero when PnP fails."""
    import cv2

    sel = (torch.arange(68, device=lm.device) >= 17) & (w > 0)
    obj = X0[sel].detach().cpu().double().numpy()
    img = lm[sel].detach().cpu().double().numpy() - 0.5  # OpenCV: pixel centres at integers
    Kmat = np.array([[f, 0, cx - 0.5], [0, f, cy - 0.5], [0, 0, 1.0]])
    try:
        ok, rvec, _ = cv2.solvePnP(obj, img, Kmat, None, flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error:
        ok = False
    if not ok:
        return torch.zeros(3, device=lm.device)
    Rp = cv2.Rodrigues(rvec)[0]
    Rh = R_cam.detach().cpu().double().numpy().T @ Rp  # camera = FRONT_R · head rotation
    aa = cv2.Rodrigues(Rh)[0].reshape(3)
    if not np.isfinite(aa).all() or np.linalg.norm(aa) > math.radians(100):
        return torch.zeros(3, device=lm.device)
    return torch.tensor(aa, dtype=torch.float32, device=lm.device)


# =============================================================================================
# the fit
def _fit(proxy, views: List[_View], cfg: FitConfig, progress: Optional[ProgressFn]) -> FitResult:
    old_threads = torch.get_num_threads()
    if cfg.num_threads > 0 and proxy.device.type == "cpu":
        torch.set_num_threads(int(cfg.num_threads))
    try:
        return _fit_impl(proxy, views, cfg, progress)
    finally:
        if torch.get_num_threads() != old_threads:
            torch.set_num_threads(old_threads)


def _fit_impl(proxy, views: List[_View], cfg: FitConfig, progress: Optional[ProgressFn]) -> FitResult:
    torch.manual_seed(cfg.seed)
    dev = proxy.device
    K = len(views)
    stage_s: Dict[str, float] = {}
    iters_run: Dict[str, int] = {}
    warnings: List[str] = []
    losses: Dict[str, float] = {}
    use_dense = cfg.fit_static_offsets and any(vw.has_dense for vw in views) and cfg.dense_iters > 0
    use_lmk_offsets = (cfg.fit_static_offsets and not use_dense and cfg.landmark_offsets
                       and cfg.landmark_offset_iters > 0)
    if not any(vw.has_dense for vw in views):
        warnings.append("No normal map, depth map or mask: the static offsets were fitted to the landmarks only "
                        "(a smooth deformation that aligns the face's features; give a normal or depth map for "
                        "surface detail)." if use_lmk_offsets else
                        "No normal map, depth map or mask: static offsets were not fitted (landmarks only).")
    stepper = _Stepper(cfg.init_iters + cfg.rigid_iters + cfg.shape_iters + (cfg.dense_iters if use_dense else 0)
                       + (cfg.landmark_offset_iters if use_lmk_offsets else 0), progress)
    lm_t = torch.stack([vw.landmarks for vw in views]).to(dev)  # [K, 68, 2]
    lm_w = torch.stack([vw.weights for vw in views]).to(dev).clone()
    lm_w[:, CONTOUR] *= cfg.contour_weight
    scales = torch.tensor([vw.scale for vw in views], device=dev)
    v = _Vars(proxy, K, cfg)

    # ---- stage 1: camera placement + multi-hypothesis rigid init -----------------------------
    t0 = time.perf_counter()
    rig = ShapeLandmarkModel(proxy, v.nb)
    R = FRONT_R.to(dev)
    with torch.no_grad():
        X0 = rig(proxy.zero_params(1))[0]  # [68, 3] rest landmarks
        c = X0.mean(0)
        ext3 = (X0[:, :2] - c[:2]).norm(dim=-1).pow(2).mean().sqrt()
        l0 = lm_t[0]
        ext2 = (l0 - l0.mean(0)).norm(dim=-1).pow(2).mean().sqrt()
        f0 = 0.5 * views[0].height / math.tan(math.radians(cfg.fov_y_deg) / 2)
        dist = float(f0 * ext3 / ext2.clamp_min(1.0))
        eye = c + torch.tensor([0.0, 0.0, dist], device=dev)
        t_cam = -R @ eye
    cam = _CameraModel(views, R, t_cam, cfg.fov_y_deg)
    cam.depth_ratio = dist / max(float(ext3), 1e-6)
    zs = _transl_lr_scale(cfg, cam, dev)

    yaws = [math.radians(y) for y in (cfg.yaw_hypotheses_deg or (0.0,))]
    n_hyp = len(yaws) + 1  # + the PnP solution of each image
    best_loss = torch.full((K,), float("inf"), device=dev)
    for k in range(K):
        hv = _Vars(proxy, n_hyp, cfg)  # one hypothesis per batch item, all refined together
        hv.rot[: len(yaws), 1] = torch.tensor(yaws, device=dev)
        hv.rot[-1] = _pnp_rotation(X0, lm_t[k], lm_w[k], float(cam.f0[k]), float(cam.cx[k]), float(cam.cy[k]), R)
        f_k = float(cam.f0[k])

        def place() -> None:
            # closed-form translation for the current rotations (perspective, linear in T)
            with torch.no_grad():
                Xc = rig(hv.params().replace(transl=torch.zeros_like(hv.transl))) @ R.T + t_cam
                T = solve_translation(Xc, lm_t[k], lm_w[k], f_k, float(cam.cx[k]), float(cam.cy[k]))
                hv.transl.copy_(T @ R)  # camera-space shift → world translation (R orthonormal)

        place()
        _set_grad(hv, ["rot"])
        opt = torch.optim.Adam([hv.rot], lr=cfg.rigid_lr)
        sub = _CameraModel([views[k]] * n_hyp, R, t_cam, cfg.fov_y_deg)
        for _ in range(cfg.init_iters):
            opt.zero_grad(set_to_none=True)
            proj = sub.project_all(rig(hv.params()), hv)
            per = robust_landmark_loss(proj, lm_t[k].expand(n_hyp, -1, -1), lm_w[k].expand(n_hyp, -1),
                                       scales[k].expand(n_hyp), cfg.landmark_sigma, cfg.robust_scale)
            per.sum().backward()
            opt.step()
            place()
            if k == 0:
                stepper.tick()
        with torch.no_grad():
            proj = sub.project_all(rig(hv.params()), hv)
            per = robust_landmark_loss(proj, lm_t[k].expand(n_hyp, -1, -1), lm_w[k].expand(n_hyp, -1),
                                       scales[k].expand(n_hyp), cfg.landmark_sigma, cfg.robust_scale)
            per = torch.nan_to_num(per, nan=float("inf"))
            j = int(per.argmin())
            log.debug("fit init image %d: hypotheses %s → losses %s, chose %d", k,
                      [[round(float(x), 3) for x in r] for r in hv.rot], [round(float(x), 3) for x in per], j)
            best_loss[k] = per[j]
            v.rot[k] = hv.rot[j].detach()
            v.transl[k] = hv.transl[j].detach()
    if not torch.isfinite(best_loss).all():
        raise ExpPortraitError("The rigid initialization failed for every head-pose hypothesis; check the landmarks.")
    stage_s["init"] = time.perf_counter() - t0
    iters_run["init"] = cfg.init_iters

    def lmk_closure(extra_prior: bool) -> Dict[str, torch.Tensor]:
        terms = {"landmarks": _landmark_loss(rig(v.params()), views, cam, v, cfg, lm_w, lm_t, scales)}
        pri = _priors(v, cfg)
        terms["focal"] = pri["focal"]
        if extra_prior:
            terms.update({k: pri[k] for k in ("betas", "expression", "jaw")})
        return terms

    # ---- stage 2: rigid (camera focal + head pose) -------------------------------------------
    t0 = time.perf_counter()
    names = ["rot", "transl"] + (["log_focal"] if cfg.optimize_focal else [])
    _set_grad(v, names)
    groups = [{"params": [v.rot], "lr": cfg.rigid_lr}, {"params": [v.transl], "lr": cfg.rigid_lr * 0.05}]
    if cfg.optimize_focal:
        groups.append({"params": [v.log_focal], "lr": cfg.rigid_lr})
    terms, n = _optimize("rigid", groups, lambda: lmk_closure(False), cfg.rigid_iters, v, cfg, stepper, warnings)
    stage_s["rigid"] = time.perf_counter() - t0
    iters_run["rigid"] = n

    # ---- stage 3: shape, expression, jaw (+ pose) from landmarks ----------------------------
    t0 = time.perf_counter()
    names = ["betas", "expression", "jaw", "rot", "transl"] + (["log_focal"] if cfg.optimize_focal else [])
    _set_grad(v, names)
    groups = [{"params": [v.betas], "lr": cfg.shape_lr}, {"params": [v.expression], "lr": cfg.shape_lr},
              {"params": [v.jaw, v.rot], "lr": cfg.shape_lr * 0.2}, {"params": [v.transl], "lr": cfg.shape_lr * 0.01, "scale": zs}]
    if cfg.optimize_focal:
        groups.append({"params": [v.log_focal], "lr": cfg.shape_lr * 0.2})
    terms, n = _optimize("shape", groups, lambda: lmk_closure(True), cfg.shape_iters, v, cfg, stepper, warnings)
    losses.update({f"shape/{k}": val for k, val in terms.items()})
    stage_s["shape"] = time.perf_counter() - t0
    iters_run["shape"] = n

    # ---- stage 4: dense (static offsets + refinement) ----------------------------------------
    static = torch.zeros(proxy.num_vertices, 3, device=dev)
    if use_dense:
        t0 = time.perf_counter()
        static, terms, n = _dense_stage(proxy, views, cam, v, cfg, lm_t, lm_w, scales, stepper, warnings)
        losses.update({f"dense/{k}": val for k, val in terms.items()})
        stage_s["dense"] = time.perf_counter() - t0
        iters_run["dense"] = n
    elif use_lmk_offsets:
        t0 = time.perf_counter()
        static, terms, n = _landmark_offset_stage(proxy, views, cam, v, cfg, rig, lm_t, lm_w, scales, stepper, warnings)
        losses.update({f"offsets/{k}": val for k, val in terms.items()})
        stage_s["offsets"] = time.perf_counter() - t0
        iters_run["offsets"] = n
    _set_grad(v, [])

    # ---- outputs --------------------------------------------------------------------------
    t0 = time.perf_counter()
    with torch.no_grad():
        params = v.params().detach()
        out = proxy(params, static)
        proj = cam.project_all(out.landmarks, v)  # [K, 68, 2]
        errs = []
        for k in range(K):
            m = views[k].weights.to(dev) > 0
            errs.append(float((proj[k] - lm_t[k]).norm(dim=-1)[m].mean()))
        cam0 = cam.camera(v, 0)
        from ..render import render_normals

        r = render_normals(out.vertices[:1], proxy.faces, cam0)
        normal_rgb = (r.normal_rgb[0].clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()
        rmask = r.mask[0].float().cpu().numpy()
    img = views[0].image
    if img is None:
        preview = normal_rgb
    else:
        a = (cfg.preview_alpha * rmask)[..., None]
        preview = (img.astype(np.float32) * (1 - a) + normal_rgb.astype(np.float32) * a + 0.5).clip(0, 255).astype(np.uint8)
    stage_s["preview"] = time.perf_counter() - t0
    report(progress, stepper.total, stepper.total, preview.astype(np.float32) / 255.0)

    p0 = params.index(0)
    emb = views[0].embedding
    identity = Identity(
        betas=p0.betas.detach().cpu().clone(),
        static_offsets=static.detach().cpu().clone(),
        params=p0.to("cpu"),
        camera=cam.as_dict(v, 0),
        image_size=(views[0].height, views[0].width),
        model=proxy.describe(),
        embedding=None if emb is None else torch.from_numpy(emb),
    )
    return FitResult(
        identity=identity,
        landmarks_2d=proj[0].cpu().numpy(),
        landmark_error_px=errs[0],
        stage_seconds={k: round(s, 3) for k, s in stage_s.items()},
        preview=preview,
        rendered_mask=rmask,
        per_image_params=params.to("cpu"),
        per_image_landmarks_2d=[p.cpu().numpy() for p in proj],
        per_image_landmark_error_px=errs,
        losses=losses,
        iterations=iters_run,
        warnings=warnings,
    )


def _dense_stage(proxy, views: List[_View], cam: _CameraModel, v: _Vars, cfg: FitConfig, lm_t, lm_w, scales,
                 stepper: _Stepper, warnings: List[str]):
    """Stage 4: static offsets + refinement against rendered normals/depth/silhouette."""
    from ..render import render_normals

    dev = proxy.device
    if cfg.offset_space not in ("base", "full"):
        raise ExpPortraitError(f"FitConfig.offset_space must be 'base' or 'full', got {cfg.offset_space!r}.")
    model = DenseModel(proxy, v.nb, v.ne, coarse=cfg.offset_space == "base")
    faces = model.faces
    field_ = _OffsetField(proxy, model, cfg.offset_smoothing, cfg.offset_mode, v.params([0]).betas.detach())
    v.u = torch.zeros(field_.n, field_.channels, device=dev)
    lap = _cached(proxy, ("laplacian", model.coarse, field_.n), lambda: LaplacianOp(faces.cpu().numpy(), field_.n))
    fw = proxy.face_weight[: field_.n]  # the first n upsampled vertices are the base bust vertices
    mag_w = cfg.w_offset_magnitude + (cfg.w_offset_magnitude_face - cfg.w_offset_magnitude) * fw
    sil = _Silhouette(faces) if any(vw.raw_mask is not None for vw in views) else None
    crops = []
    for vw in views:
        crop = _dense_crop(vw, cfg)
        _prepare_dense(vw, crop, dev)
        crops.append(crop)
    any_shoulder_data = any(vw.has_dense for vw in views)
    names = ["u", "betas", "expression", "jaw", "leye", "reye", "rot", "transl"] + (["body"] if any_shoulder_data else [])
    _set_grad(v, names)
    zs = _transl_lr_scale(cfg, cam, dev)
    groups = [{"params": [v.u], "lr": cfg.offset_lr, "uniform": True},
              {"params": [v.betas], "lr": cfg.dense_shape_lr}, {"params": [v.expression], "lr": cfg.dense_expression_lr},
              {"params": [v.jaw, v.leye, v.reye, v.rot, v.body], "lr": cfg.dense_pose_lr},
              {"params": [v.transl], "lr": cfg.dense_pose_lr * 0.05, "scale": zs}]

    calls = [0]
    contour_ids: Dict[int, torch.Tensor] = {}

    def closure() -> Dict[str, torch.Tensor]:
        calls[0] += 1
        static = field_(v.u, cfg.max_offset)
        out = model(v.params(), static, landmarks_see_offsets=False)
        terms: Dict[str, torch.Tensor] = {}
        terms["landmarks"] = cfg.w_dense_landmarks * robust_landmark_loss(
            cam.project_all(out.landmarks, v), lm_t, lm_w, scales, cfg.landmark_sigma, cfg.robust_scale).sum()
        zero = out.vertices.sum() * 0.0
        n_loss, d_loss, s_loss = zero, zero, zero
        for k, vw in enumerate(views):
            if not vw.has_dense:
                continue
            crop = crops[k]
            ck = cam.camera(v, k, crop)
            r = render_normals(model.upsample_posed(out.vertices[k:k + 1]), proxy.faces, ck)
            rm = r.mask[0] > 0.5
            if vw.normal is not None:
                m = rm & vw.normal_valid
                if m.any():
                    e = (r.normals[0][m] - vw.normal[m]).abs().sum(-1)
                    if cfg.normal_robust > 0:  # outlier pixels (creases, silhouettes) saturate
                        e = cfg.normal_robust * torch.log1p(e / cfg.normal_robust)
                    n_loss = n_loss + e.mean()
            if vw.depth is not None:
                m = rm & vw.depth_valid
                if int(m.sum()) > 16:
                    z = r.depth[0][m]
                    t = vw.depth[m]
                    # closed-form scale/shift of the render onto the (relative) target; sign free so
                    # disparity-style maps (near = large) work too
                    zc, tc = z - z.mean(), t - t.mean()
                    a = (zc * tc).sum() / (zc * zc).sum().clamp_min(1e-12)
                    d_loss = d_loss + (a * zc - tc).abs().mean()
            if sil is not None and vw.mask_boundary is not None:
                proj = crop.to_crop(cam.project_all(out.vertices[k:k + 1], v, [k])[0])
                if calls[0] % 5 == 0 or k not in contour_ids:  # the silhouette moves slowly: refresh every 5 steps
                    vc = out.vertices[k].detach() @ cam.R.T + cam.t
                    contour_ids[k] = sil.contour_vertices(vc, r.mask[0].detach().cpu().numpy(), proj.detach())
                ids = contour_ids[k]
                unit = vw.scale * math.sqrt(crop.sx * crop.sy) * cfg.landmark_sigma
                s_loss = s_loss + sil.loss(proj[ids], vw.mask_boundary, unit, cfg.robust_scale)
        terms["normal"] = cfg.w_normal * n_loss
        terms["depth"] = cfg.w_depth * d_loss
        terms["silhouette"] = cfg.w_silhouette * s_loss
        terms["offset_laplacian"] = cfg.w_offset_laplacian * MM2 * (lap(static) ** 2).sum(-1).mean()
        terms["offset_magnitude"] = MM2 * (mag_w * (static ** 2).sum(-1)).mean()
        pri = _priors(v, cfg, dense=True)
        terms.update({k: pri[k] for k in ("betas", "expression", "jaw", "eyes", "body")})
        return terms

    clamp01 = lambda x: min(max(float(x), 0.0), 1.0)  # noqa: E731
    n_rigid = int(round(cfg.dense_iters * clamp01(cfg.dense_rigid_warmup)))
    n_warm = max(0, int(round(cfg.dense_iters * clamp01(cfg.offset_warmup))) - n_rigid)
    n = 0
    if n_rigid > 0:
        # pose first: normals encode orientation directly, and betas/expression would otherwise
        # absorb the remaining pose error faster than the pose itself moves
        _set_grad(v, ["rot", "transl", "body"] if any_shoulder_data else ["rot", "transl"])
        rg = [{"params": [v.rot, v.body], "lr": cfg.dense_rigid_lr}, {"params": [v.transl], "lr": cfg.dense_rigid_lr * 0.05, "scale": zs}]
        terms, n = _optimize("dense-rigid", rg, closure, n_rigid, v, cfg, stepper, warnings)
        _set_grad(v, names)
    if n_warm > 0:
        v.u.requires_grad_(False)
        terms, n1 = _optimize("dense-shape", groups[1:], closure, n_warm, v, cfg, stepper, warnings)
        n += n1
        v.u.requires_grad_(True)
    terms, n2 = _optimize("dense", groups, closure, cfg.dense_iters - n_warm - n_rigid, v, cfg, stepper, warnings,
                          warmup=cfg.dense_lr_warmup)
    n += n2
    with torch.no_grad():
        static = field_.upsampled(v.u, cfg.max_offset).detach()
    return static, terms, n


def _landmark_offset_stage(proxy, views: List[_View], cam: _CameraModel, v: _Vars, cfg: FitConfig, rig, lm_t, lm_w,
                           scales, stepper: _Stepper, warnings: List[str]):
    """Stage 4 without dense targets: static offsets Δ_g from the landmarks alone.

    The shape space cannot reproduce every face (on a real photo the jaw contour and brows stay
    several pixels off), and Δ_g exists for what it cannot express. Here Δ_g is a free 3-D
    field on the bust's base vertices (a landmark moves across the image, i.e. mostly along the
    surface, which a height field could not do), parametrized through the "large steps"
    preconditioner with ``cfg.landmark_offset_smoothing`` so that the 68 point constraints move
    smooth patches, with Laplacian and magnitude regularizers; betas, expression, jaw and pose
    are refined together (their priors unchanged). The landmarks are the rig's points plus the
    offsets interpolated there, i.e. exactly the fitted mesh's landmarks."""
    from .dense_model import BaseMesh

    dev = proxy.device
    mesh = _cached(proxy, ("base_mesh", str(dev)), lambda: BaseMesh(proxy))
    field_ = _OffsetField(proxy, mesh, cfg.landmark_offset_smoothing, "xyz", v.params([0]).betas.detach())
    v.u = torch.zeros(field_.n, 3, device=dev)
    lap = _cached(proxy, ("laplacian", True, field_.n), lambda: LaplacianOp(mesh.faces.cpu().numpy(), field_.n))
    names = ["u", "betas", "expression", "jaw", "rot", "transl"]
    _set_grad(v, names)
    zs = _transl_lr_scale(cfg, cam, dev)
    groups = [{"params": [v.u], "lr": cfg.landmark_offset_lr, "uniform": True},
              {"params": [v.betas], "lr": cfg.shape_lr * 0.2}, {"params": [v.expression], "lr": cfg.shape_lr * 0.2},
              {"params": [v.jaw, v.rot], "lr": cfg.shape_lr * 0.04},
              {"params": [v.transl], "lr": cfg.shape_lr * 0.002, "scale": zs}]

    def closure() -> Dict[str, torch.Tensor]:
        static = field_(v.u, cfg.max_offset)
        lm3d = rig(v.params(), point_offsets=mesh.point_offsets(static))
        terms = {"landmarks": _landmark_loss(lm3d, views, cam, v, cfg, lm_w, lm_t, scales)}
        pri = _priors(v, cfg)
        terms.update({k: pri[k] for k in ("betas", "expression", "jaw")})
        terms["offset_laplacian"] = cfg.w_landmark_offset_laplacian * MM2 * (lap(static) ** 2).sum(-1).mean()
        terms["offset_magnitude"] = cfg.w_landmark_offset_magnitude * MM2 * (static ** 2).sum(-1).mean()
        return terms

    terms, n = _optimize("offsets", groups, closure, cfg.landmark_offset_iters, v, cfg, stepper, warnings)
    with torch.no_grad():
        static = field_.upsampled(v.u, cfg.max_offset).detach()
    return static, terms, n


# =============================================================================================
# public API
@autograd_enabled
def fit_identity(
    proxy,
    image: Optional[np.ndarray],
    *,
    landmarks: Optional[np.ndarray] = None,
    landmark_weights: Optional[np.ndarray] = None,
    analyzer=None,
    normal_map: Optional[np.ndarray] = None,
    depth: Optional[np.ndarray] = None,
    mask: Optional[np.ndarray] = None,
    config: Optional[FitConfig] = None,
    progress: Optional[ProgressFn] = None,
    extra_images: Optional[list] = None,
    image_size: Optional[tuple] = None,
) -> FitResult:
    """Fit a personalized identity (betas + static offsets) to a reference portrait.

    image: uint8 [H, W, 3] RGB (or None with ``landmarks`` and ``image_size`` (H, W));
    landmarks: [68, 2] px, iBUG-68 order (detected with ``analyzer`` when None);
    landmark_weights: [68] (default: the analyzer's, else ones);
    normal_map: float [H', W', 3] in 0..1, CONTRIBUTING encoding (GL camera axes, rgb = 0.5 n + 0.5),
        background black or masked; any resolution with the image's aspect ratio;
    depth: float [H', W'] relative depth or disparity (aligned by scale and shift; 0 = invalid);
    mask: float [H', W'] person silhouette (0..1);
    extra_images: more images of the same person, each an RGB array (landmarks detected) or a dict
        with keys ``image``, ``landmarks``, ``landmark_weights``, ``normal_map``, ``depth``, ``mask``;
        they share betas/static offsets/camera with the reference and get their own pose/expression.
    Returns a :class:`FitResult` (the reference image's fit; per-image params in ``per_image_params``).
    """
    cfg = config or FitConfig()
    views = [_make_view(0, image, landmarks, landmark_weights, analyzer, normal_map, depth, mask, image_size)]
    for i, extra in enumerate(extra_images or [], start=1):
        if isinstance(extra, dict):
            views.append(_make_view(i, extra.get("image"), extra.get("landmarks"), extra.get("landmark_weights"), analyzer,
                                    extra.get("normal_map"), extra.get("depth"), extra.get("mask"), extra.get("image_size")))
        else:
            views.append(_make_view(i, extra, None, None, analyzer, None, None, None))
    return _fit(proxy, views, cfg, progress)


@autograd_enabled
def fit_shared_identity(
    proxy,
    frames: List[Optional[np.ndarray]],
    landmarks: List[Optional[np.ndarray]],
    *,
    landmark_weights: Optional[List[Optional[np.ndarray]]] = None,
    analyzer=None,
    normal_maps: Optional[list] = None,
    depths: Optional[list] = None,
    masks: Optional[list] = None,
    config: Optional[FitConfig] = None,
    progress: Optional[ProgressFn] = None,
    image_size: Optional[tuple] = None,
) -> FitResult:
    """Fit one identity to several images of a person (e.g. keyframes of a driving clip).

    frames: K images uint8 [H, W, 3] (entries may be None when ``landmarks`` and ``image_size`` are
    given); landmarks: K arrays [68, 2] (or None → detected); optional per-image lists of landmark
    weights [68], normal maps, depth maps, masks. Shared: betas, static offsets, camera, body turn;
    per image: head pose, expression, jaw, eyes, translation — returned in ``per_image_params``
    (batch K, frame order) with ``per_image_landmark_error_px``. ``identity.params`` is frame 0's.
    """
    if not frames and not landmarks:
        raise ExpPortraitError("fit_shared_identity: give at least one frame.")
    K = max(len(frames), len(landmarks))
    pick = lambda lst, i: None if lst is None or i >= len(lst) else lst[i]  # noqa: E731
    views = [_make_view(i, pick(frames, i), pick(landmarks, i), pick(landmark_weights, i), analyzer,
                        pick(normal_maps, i), pick(depths, i), pick(masks, i), image_size) for i in range(K)]
    return _fit(proxy, views, config or FitConfig(), progress)
