"""Identity-adaptive expression transfer (paper §4): a driving MOTION retargeted to an IDENTITY.

Methods (``method=``):
- ``copy`` — plain parameter copy: the driver's (calibrated) expression coefficients and jaw as
  they are, no dynamic offsets (the paper's "SMPL-X baseline"); with
  ``TransferConfig.copy_dynamic_offsets`` the driver's offsets are copied vertex for vertex too
  (the paper's "direct offset transfer" ablation).
- ``deformation`` — training-free default (scope ``"full"``, :class:`TransferConfig`). The
  driver's expression-induced deformation — its canonical (pre-skinning) expressive mesh
  (expression blend shapes + dynamic offsets) against its neutral (or calibration-frame) mesh;
  jaw, eyes and head are joint rotations and act through skinning — is moved onto the
  reference's neutral personalized mesh by deformation transfer (:mod:`.deformation`), with
  each triangle's deformation gradient factored as ``Q = Q_detail · Q_param``:
  ``Q_param``, the blend shapes' part, is taken from the reference's own model at the same
  coefficients (SMPL-X's blend shapes are the same displacement on every identity, and its jaw
  joint is the reference's own), and ``Q_detail``, the gradient of the driver's dynamic offsets
  on its expressive parametric mesh, is rotated into the reference's triangle orientation and
  applied to the reference's expressive parametric mesh; the reference's vertices are solved in
  least squares together with a positional term (the driver's offsets pushed forward through
  the neutral → neutral deformation gradients), one sparse factorization per identity pair
  reused for every frame. The result ``X`` is then expressed as reference coefficients plus
  reference dynamic offsets: ``ψ_r = ψ_c + Π(D − d)`` (``D = X −`` the reference's parametric
  mesh, ``d`` the driver's calibrated offsets, ``Π`` the face-weighted least-squares projection
  onto the expression basis with a ridge), offsets ``= D − B(E Π(D − d))`` on the face region —
  so the reconstructed mesh equals ``X`` there up to the mask and length cap; self-transfer
  returns the input coefficients and offsets, and a frame without detail gets the driver's
  (calibrated) coefficients and no offsets, exactly (a motion without dynamic offsets skips the
  solve). Scope ``"detail"``: the driver's coefficients, offsets transferred on the neutral
  meshes (no fit). Scope ``"classic"`` (ablation): Sumner & Popović's transfer of the whole
  deformation including the blend shapes, coefficients re-fitted — the former "full" scope, 2–5×
  worse than parameter copy on the synthetic truth, because the blend shapes' gradients measured
  on the driver's triangles and re-applied to the reference's do not integrate back to the same
  displacement (error ≈ 40–60 % of it, up to ~1 cm at the eyelids), and no re-fit removes that.
- ``learned`` — the paper's module (:mod:`.learned`): coefficients and jaw as in ``copy``; the
  reference's dynamic offsets predicted by G from its own neutral mesh and the driving code.
- ``auto`` — ``learned`` when a model is given, else ``deformation``.

Neutral calibration (``neutral_frame = n``): the driver's face at frame ``n`` counts as neutral —
its coefficients, jaw and dynamic offsets are subtracted (deformation transfer uses the driver's
mesh at frame ``n`` as source neutral), so frame ``n`` maps exactly onto the reference's neutral
mesh. ``None`` (or a negative index) uses the driver's true parametric neutral (ψ = 0, no
offsets). Pose transfer is in :mod:`.pose` (relative to the anchor frame ``n``, or 0 without
calibration).
"""
from __future__ import annotations

import hashlib
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import astuple, dataclass, field, replace
from typing import Dict, Optional

import numpy as np
import torch

from ..errors import ExpPortraitError
from ..head.params import HeadParams
from ..progress import ProgressFn, report
from .deformation import DeformationTransfer, DeformationTransferConfig
from .geometry import face_region_ids, fit_betas, fit_expression_dims
from .pose import POSE_MODES, resolve_strengths, transfer_pose

log = logging.getLogger(__name__)

METHODS = ("auto", "learned", "deformation", "copy")
SCOPES = ("full", "detail", "classic")
# Node-facing labels → method names.
METHOD_LABELS = {"auto": "auto", "learned": "learned", "deformation transfer": "deformation", "parameter copy": "copy"}


@dataclass
class TransferConfig:
    """Options of :func:`transfer_motion` beyond its keyword arguments.

    deformation: solver options (positional weight, margin, frames per solve).
    scope: ``"full"`` (default) transfers the driver's whole expression-induced deformation and
    expresses it as the reference's coefficients + offsets; ``"detail"`` keeps the driver's
    (calibrated) coefficients and transfers only its dynamic offsets (on the neutral meshes; a
    little cheaper); ``"classic"`` is Sumner & Popović's transfer of the whole deformation
    including the blend shapes, with a coefficient re-fit — an ablation, several times worse than
    parameter copy on the synthetic ground truth (see the module docstring).
    keep_residual: the part of the transferred deformation that the reference's coefficients do
    not express is kept as dynamic offsets (face region) — True; False drops it.
    expression_prior: ridge weight of the coefficient fit (pulling towards the driver's
    coefficients), relative to the mean diagonal of the normal equations (1e-2).
    fit_region: vertices the coefficient fit weighs — ``"face"`` (the face mask, where the
    residual can be kept as offsets; default) or ``"bust"`` (all vertices).
    classic_anchor: anchor weight of the ``classic`` scope (Sumner's weak anchoring, 1e-5).
    copy_dynamic_offsets: ``copy`` also copies the driver's dynamic offsets vertex for vertex (the
    paper's "direct offset transfer"); False (default) = plain parameter copy.
    min_face_weight / max_offset: dynamic offsets are stored divided by the face mask (the proxy
    multiplies them back); vertices below ``min_face_weight`` get none, and no offset longer than
    ``max_offset`` metres is written.
    chunk: frames per batch (memory bound)."""

    deformation: DeformationTransferConfig = field(default_factory=DeformationTransferConfig)
    scope: str = "full"
    keep_residual: bool = True
    expression_prior: float = 1e-2
    fit_region: str = "face"
    classic_anchor: float = 1e-5
    copy_dynamic_offsets: bool = False
    min_face_weight: float = 1e-3
    max_offset: float = 0.03
    chunk: int = 16


# ---------------------------------------------------------------------------------------------
class ExpressionProjector:
    """Least-squares expression coefficients of a canonical displacement field on the proxy.

    ψ = argmin Σ_v w_v ‖B(E ψ)_v − r_v‖² + μ ‖ψ − ψ_prior‖² over the upsampled vertices, with
    per-vertex weights ``w`` (None = 1 everywhere, the bust). The normal matrix is assembled once
    per proxy and weighting through the sparse upsampling operator (never the dense [N_s·3, E]
    basis)."""

    def __init__(self, proxy, weights: Optional[torch.Tensor] = None) -> None:
        import scipy.sparse as sp

        idx = proxy.up_idx.cpu().numpy()
        w = proxy.up_w.cpu().numpy().astype(np.float64)
        N, V = idx.shape[0], proxy.v_template.shape[0]
        self.B = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(N), 3), idx.ravel())), shape=(N, V))
        self.Bt = self.B.T.tocsr()
        self.weights = None if weights is None else weights.detach().double().cpu().numpy().reshape(-1)
        self.BtW = self.Bt if self.weights is None else (self.Bt @ sp.diags(self.weights)).tocsr()
        self.E = proxy.exprdirs.cpu().numpy().astype(np.float64)  # [V, 3, E]
        ne = self.E.shape[-1]
        self._E2 = np.ascontiguousarray(self.E.reshape(-1, ne))  # [V·3, E] (BLAS products)
        M = (self.BtW @ self.B).tocsr()
        G = np.zeros((ne, ne))
        for c in range(3):
            Ec = self.E[:, c, :]
            G += Ec.T @ (M @ Ec)
        self.G = G
        self.num_expression = ne
        self._factors: dict = {}

    def fit(self, disp: np.ndarray, prior: np.ndarray, prior_weight: float) -> np.ndarray:
        """disp: [T, N_s, 3] canonical displacement; prior: [T, E] → ψ [T, E]."""
        T, N = disp.shape[:2]
        if self.num_expression == 0:
            return np.zeros((T, 0))
        r = np.ascontiguousarray(disp.transpose(1, 2, 0)).reshape(N, 3 * T)
        Btr = (self.BtW @ r).reshape(-1, T)  # [V·3, T]
        rhs = self._E2.T @ Btr  # [E, T]
        mu = prior_weight * np.trace(self.G) / self.num_expression
        if mu not in self._factors:  # Cholesky of G + μI, once per prior weight
            from scipy.linalg import cho_factor

            self._factors[mu] = cho_factor(self.G + mu * np.eye(self.num_expression))
        from scipy.linalg import cho_solve

        return cho_solve(self._factors[mu], rhs + mu * prior.T).T

    def displacement(self, psi: np.ndarray) -> np.ndarray:
        """B(E ψ): [T, N_s, 3] for ψ [T, E]."""
        T = psi.shape[0]
        flat = (self._E2 @ psi.T).reshape(-1, 3 * T)  # [V, 3·T]
        return (self.B @ flat).reshape(-1, 3, T).transpose(2, 0, 1)


_PROJECTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_DT_CACHE: "OrderedDict[tuple, DeformationTransfer]" = OrderedDict()
_DT_CACHE_SIZE = 2


def expression_projector(proxy, region: str = "bust") -> ExpressionProjector:
    """The (cached) :class:`ExpressionProjector` of a proxy: ``region`` "bust" (all vertices,
    weight 1) or "face" (weighted by the face mask)."""
    per = _PROJECTORS.setdefault(proxy, {})
    if region not in per:
        if region not in ("bust", "face"):
            raise ValueError(f"region must be 'bust' or 'face', got '{region}'")
        per[region] = ExpressionProjector(proxy, None if region == "bust" else proxy.face_weight)
    return per[region]


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()


def deformation_transfer_for(proxy, source_neutral: np.ndarray, target_neutral: np.ndarray,
                             config: Optional[DeformationTransferConfig] = None) -> DeformationTransfer:
    """The :class:`DeformationTransfer` of an identity pair, factorized once and cached (LRU of 2),
    so re-running a node or transferring another clip of the same driver reuses it."""
    cfg = config or DeformationTransferConfig()
    key = (id(proxy), proxy.num_vertices, _digest(source_neutral), _digest(target_neutral), astuple(cfg))
    dt = _DT_CACHE.get(key)
    if dt is None:
        dt = DeformationTransfer(source_neutral, target_neutral, proxy.faces, proxy.face_weight, cfg)
        log.info("Deformation transfer: factorized %d vertices in %.2f s", dt.num_vertices, dt.factor_seconds)
        _DT_CACHE[key] = dt
        while len(_DT_CACHE) > _DT_CACHE_SIZE:
            _DT_CACHE.popitem(last=False)
    else:
        _DT_CACHE.move_to_end(key)
    return dt


def clear_caches() -> None:
    """Drop cached factorizations (frees memory)."""
    _DT_CACHE.clear()


# ---------------------------------------------------------------------------------------------
def _region_offsets(motion, ids: torch.Tensor, num_vertices: int) -> Optional[torch.Tensor]:
    """The motion's dynamic offsets on the face-region ids: [T, M, 3] (None when it has none).
    Offsets outside the region are dropped: the proxy multiplies them by a zero mask anyway."""
    if motion.dynamic_offsets is None:
        return None
    idx = motion.dynamic_offsets_index
    if idx is None:
        raise ExpPortraitError("The motion has dynamic offsets but no 'dynamic_offsets_index'; the file is incomplete.")
    idx = idx.long().reshape(-1)
    if len(idx) and (int(idx.max()) >= num_vertices or int(idx.min()) < 0):
        raise ExpPortraitError(
            f"The motion's dynamic offsets address vertex {int(idx.max())} but the loaded proxy has {num_vertices} "
            "vertices: load the SMPL-X file and subdivision the motion was tracked with.")
    local = torch.full((num_vertices,), -1, dtype=torch.long)
    local[ids.cpu()] = torch.arange(len(ids))
    pos = local[idx]
    keep = pos >= 0
    out = torch.zeros(motion.dynamic_offsets.shape[0], len(ids), 3, dtype=torch.float64)
    out[:, pos[keep]] = motion.dynamic_offsets[:, keep].double()
    return out


def _divide_mask(D: torch.Tensor, m: torch.Tensor, cfg: TransferConfig) -> torch.Tensor:
    """Offsets Δ with m ⊙ Δ = D (where m ≥ min_face_weight), length-capped. D: [T, M, 3]; m: [M]."""
    ok = m >= cfg.min_face_weight
    out = torch.zeros_like(D)
    out[:, ok] = D[:, ok] / m[ok][None, :, None]
    n = out.norm(dim=-1, keepdim=True)
    return out * torch.clamp(cfg.max_offset / n.clamp_min(1e-12), max=1.0)


def _check_inputs(proxy, identity, motion, method: str, pose_mode: str, neutral_frame) -> Optional[int]:
    if method not in METHODS:
        raise ExpPortraitError(f"method must be one of {METHODS}, got '{method}'.")
    if pose_mode not in POSE_MODES:
        raise ExpPortraitError(f"pose_mode must be one of {POSE_MODES}, got '{pose_mode}'.")
    if identity is None or motion is None:
        raise ExpPortraitError("Expression transfer needs both an identity (the reference) and a motion (the driver).")
    T = motion.num_frames
    if T < 1:
        raise ExpPortraitError("The motion has no frames.")
    N = proxy.num_vertices
    for who, ident in (("reference identity", identity), ("driving identity", motion.identity)):
        if ident is not None and ident.static_offsets.shape[0] != N:
            raise ExpPortraitError(
                f"The {who} has {ident.static_offsets.shape[0]} offset vertices but the loaded proxy has {N}: "
                "load the SMPL-X file and subdivision it was made with.")
    if neutral_frame is None or int(neutral_frame) < 0:
        return None
    if int(neutral_frame) >= T:
        raise ExpPortraitError(f"neutral_frame {neutral_frame} is out of range: the motion has {T} frames (use -1 for none).")
    return int(neutral_frame)


def transfer_motion(
    proxy,
    identity,
    motion,
    *,
    method: str = "auto",
    model=None,
    strengths: Optional[Dict[str, float]] = None,
    pose_mode: str = "relative",
    neutral_frame: Optional[int] = 0,
    progress: Optional[ProgressFn] = None,
    config: Optional[TransferConfig] = None,
):
    """Retarget a driving :class:`~expportrait_core.io.files.Motion` onto ``identity``.

    method: auto | learned | deformation | copy (see the module docstring); model: a
    :class:`~expportrait_core.transfer.learned.TransferModel` (needed by ``learned``); strengths:
    per-channel factors ``expression, jaw, eyes, head_rotation, translation`` (default 1);
    pose_mode: relative | absolute (:mod:`.pose`); neutral_frame: calibration frame (None or
    negative = none). Returns a Motion whose params carry the identity's betas and per-frame
    expression/jaw/eyes/pose, dynamic offsets for the identity on the face region
    (``dynamic_offsets_index`` = face-region vertex ids), the identity's camera and image size,
    ``identity`` = the target, and the driver's fps and lost frames. ``motion.identity`` (the
    driver's shape) is used when present; otherwise the template shape is assumed.
    """
    from ..io.files import Motion

    cfg = config or TransferConfig()
    n = _check_inputs(proxy, identity, motion, method, pose_mode, neutral_frame)
    if method == "auto":
        method = "learned" if model is not None else "deformation"
    if method == "learned" and model is None:
        raise ExpPortraitError("method 'learned' needs a transfer model: load one with 'ExpPortrait Load Transfer Model' "
                               "(train it with: python -m expportrait_core train-transfer), or choose 'auto' / "
                               "'deformation transfer'.")
    if cfg.scope not in SCOPES:
        raise ExpPortraitError(f"TransferConfig.scope must be one of {SCOPES}, got '{cfg.scope}'.")
    if cfg.fit_region not in ("face", "bust"):
        raise ExpPortraitError(f"TransferConfig.fit_region must be 'face' or 'bust', got '{cfg.fit_region}'.")
    s = resolve_strengths(strengths)
    t_start = time.perf_counter()
    dev = proxy.device
    T, E, N = motion.num_frames, proxy.num_expression, proxy.num_vertices
    drv_params = motion.params.expand(T)
    psi = fit_expression_dims(drv_params.expression.double().cpu(), E)  # [T, E]
    jaw = drv_params.jaw_pose.double().cpu()
    ids = face_region_ids(proxy).cpu()
    m = proxy.face_weight.double().cpu()[ids]
    d = _region_offsets(motion, ids, N)  # [T, M, 3] or None
    psi_n = psi[n : n + 1] if n is not None else torch.zeros(1, E, dtype=psi.dtype)
    d_n = d[n : n + 1] if (n is not None and d is not None) else None
    psi_c = psi - psi_n
    d_c = None if d is None else (d - d_n if d_n is not None else d)

    ref_params = identity.params.expand(1)
    pose = transfer_pose(ref_params.to(dtype=torch.float32), drv_params.to(dtype=torch.float32), mode=pose_mode,
                         anchor_frame=n if n is not None else 0, neutral_frame=n, strengths=s)

    with torch.no_grad():
        tgt_betas = fit_betas(identity.betas.to(dev).float(), proxy.num_betas)
        tgt_neutral = proxy.neutral(tgt_betas, identity.static_offsets.to(dev).float())[0]
    M = len(ids)
    offsets = torch.zeros(T, M, 3, dtype=torch.float64)

    if method == "copy":
        psi_r = psi_c * s["expression"]
        if cfg.copy_dynamic_offsets and d_c is not None:
            offsets = d_c * s["expression"]
        report(progress, T, T)
    elif method == "learned":
        psi_r = psi_c * s["expression"]
        ref_e = psi[n : n + 1] if n is not None else None
        ref_j = jaw[n : n + 1] if n is not None else None
        pred, pred_ids = model.predict(proxy, tgt_neutral, psi.float(), jaw.float(),
                                       None if ref_e is None else ref_e.float(), None if ref_j is None else ref_j.float(),
                                       chunk=cfg.chunk, progress=progress)
        if not torch.equal(pred_ids.cpu(), ids):
            raise ExpPortraitError("The transfer model predicted offsets on another vertex set than the proxy's face region.")
        offsets = pred.double() * s["expression"]
    elif cfg.scope != "classic" and (d_c is None or not bool(d_c.abs().max() > 0)):
        # nothing to deform: the driver has no dynamic detail (e.g. a fast-path track), so the
        # transfer is exactly the driver's coefficients (see _deformation_method)
        psi_r = psi_c * s["expression"]
        report(progress, T, T)
    else:
        psi_r, offsets = _deformation_method(proxy, motion, tgt_neutral, psi, psi_c, psi_n, d, d_c, d_n, ids, m, n,
                                             cfg, s["expression"], progress)

    params = HeadParams(
        betas=identity.betas.float().expand(T, -1).clone(),
        expression=psi_r.float(),
        global_orient=pose["global_orient"].float(),
        neck_pose=pose["neck_pose"].float(),
        head_pose=pose["head_pose"].float(),
        jaw_pose=pose["jaw_pose"].float(),
        leye_pose=pose["leye_pose"].float(),
        reye_pose=pose["reye_pose"].float(),
        transl=pose["transl"].float(),
    )
    log.info("Expression transfer (%s, %d frames): %.2f s", method, T, time.perf_counter() - t_start)
    return Motion(
        params=params,
        camera={k: v.clone() for k, v in identity.camera.items()},
        fps=float(motion.fps),
        model=proxy.describe(),
        image_size=tuple(identity.image_size),
        dynamic_offsets=offsets.float(),
        dynamic_offsets_index=ids.clone(),
        lost_frames=list(motion.lost_frames),
        crops=None,
        identity=identity,
        name=f"{motion.name or 'motion'}_to_{identity.name or 'identity'}",
    )


def _deformation_method(proxy, motion, tgt_neutral, psi, psi_c, psi_n, d, d_c, d_n, ids, m, n, cfg: TransferConfig,
                        strength: float, progress):
    """ψ_r [T, E] and offsets [T, M, 3] by deformation transfer (see the module docstring)."""
    T, E, N = psi.shape[0], psi.shape[1], proxy.num_vertices
    drv = motion.identity
    with torch.no_grad():
        if drv is None:
            log.warning("The motion carries no driving identity; assuming the template shape for the driver.")
            src = proxy.neutral(proxy.zero_params(1).betas)[0]
        else:
            src = proxy.neutral(fit_betas(drv.betas.to(proxy.device).float(), proxy.num_betas),
                                drv.static_offsets.to(proxy.device).float())[0]
    src = src.double().cpu().numpy()
    proj = expression_projector(proxy)
    ids_np = ids.numpy()
    m_np = m.numpy()
    # the driver's mesh at the calibration frame is the source neutral
    if n is not None:
        src = src + proj.displacement(psi_n.numpy())[0]
        if d_n is not None:
            src[ids_np] += m_np[:, None] * d_n[0].numpy()
    T0 = tgt_neutral.double().cpu().numpy()
    dcfg = cfg.deformation
    if cfg.scope == "classic":
        dcfg = replace(dcfg, anchor_face=cfg.classic_anchor)
    dt = deformation_transfer_for(proxy, src, T0, dcfg)
    fitter = expression_projector(proxy, cfg.fit_region)
    psi_r = np.zeros((T, E))
    out = np.zeros((T, len(ids_np), 3))
    chunk = max(1, int(cfg.chunk))
    for s0 in range(0, T, chunk):
        sl = slice(s0, min(T, s0 + chunk))
        c = sl.stop - sl.start
        pc = psi_c[sl].numpy()
        dyn = np.zeros((c, N, 3))
        if d_c is not None:
            dyn[:, ids_np] = m_np[None, :, None] * d_c[sl].numpy()
        if cfg.scope == "full":
            # the driver's deformation = parametric part (same ψ: the reference's own blend-shape
            # response, B(E ψ) for both) ∘ detail, whose gradients are measured on the driver's
            # expressive mesh and applied to the reference's
            P = proj.displacement(pc)
            D = dt.transfer_detail(dyn, src[None] + P, T0[None] + P)
            # express the result as coefficients + offsets: the least-squares coefficients of the
            # reference's transferred deformation minus the driver's own of its deformation
            # (ψ_c + Π(D) − ψ_c − Π(d), Π linear) are added to the driver's coefficients — what
            # the identity change moved into the expression basis goes to ψ, the rest stays as
            # offsets (self-transfer keeps ψ and the offsets; a neutral frame gets ψ = 0)
            delta = fitter.fit(D - dyn, np.zeros_like(pc), cfg.expression_prior)
            psi_r[sl] = pc + delta
            if not cfg.keep_residual:
                D = np.zeros_like(D)
            else:
                D = D - proj.displacement(delta)
        elif cfg.scope == "detail":
            D = dt.transfer_detail(dyn)
            psi_r[sl] = pc
        else:  # classic: Sumner & Popović on the whole deformation, then a coefficient re-fit
            S_p = src[None] + proj.displacement(pc)
            X = dt.transfer(np.concatenate([S_p, S_p + dyn], 0))
            R_p, R_dyn = X[:c] - T0[None], X[c:] - X[:c]
            fit = fitter.fit(R_p, pc, cfg.expression_prior)
            D = R_dyn
            if cfg.keep_residual:
                D = D + (R_p - proj.displacement(fit))
            psi_r[sl] = fit
        out[sl] = D[:, ids_np]
        report(progress, sl.stop, T)
    offsets = _divide_mask(torch.from_numpy(out) * strength, m, cfg)
    return torch.from_numpy(psi_r) * strength, offsets
