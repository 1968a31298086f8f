"""Synthetic identities, motions and identity-dependent expression detail (ground truth).

Used by the tests, the benchmark and the training CLI when no (or too few) tracked motion files
are available. Nothing here is learned; it is a hand-written generative model with the property
the paper's transfer module is about: *the same expression produces different detail on
different faces*.

Detail model (:class:`SyntheticDetail`). For a subject with neutral personalized mesh
``p = V_neutral`` (normals ``n``) and the upsampled template ``t`` (vertex correspondence), the
dynamic offset of frame ``i`` on face-region vertex ``v`` is

    Δ_f(i)_v = Σ_k  c_k(ψ_i, ω_i) · A · σ_v · a_v · g_k(t_v) · [β + (1 − β) · sin(2π (t_v · u_k) / λ_k + φ_k)] · n_v

- ``c_k`` channel activations: ``relu(w_k · ψ)`` for fixed random directions ``w_k`` over the
  leading expression coefficients, and the jaw opening for the chin channel;
- ``g_k`` and the stripes ("wrinkles", wavelength ``λ_k`` of a few millimetres) are anatomical:
  defined on the template, around sites found from the 68 landmarks (forehead, glabella, crow's
  feet, nasolabial folds, chin) — the same folds on every face, at corresponding places;
- they are laid along the subject's own normals ``n_v`` and sized by its local scale
  ``σ_v = sqrt(area around v on p / area around v on t)`` (a larger face has larger folds);
- their depth depends on the subject's local fullness: ``a_v = clip(exp(δ_v / s), a_min, a_max)``
  with ``δ_v = (p_v − t_v) · n_v − mean`` the identity displacement along the normal relative to
  the face's mean (fuller cheeks fold deeper; a flat face barely creases).

Deformation transfer can recover σ and n (they are properties of the target's surface relative
to the driver's) but not a (it copies the driver's depth); parameter copy recovers neither; the
learned module sees the target's neutral mesh and can learn all three.

Identities (:func:`random_identity`): random leading betas plus a smooth random static offset
field (Gaussian bumps along the normal). Motions (:func:`synthetic_motion`): smooth random
expression, jaw, eye and head trajectories with this detail as dynamic offsets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..head.params import HeadParams
from .geometry import face_region_ids, template_upsampled, vertex_normals

# Anatomical sites (iBUG-68 landmark combinations, offsets in metres in template space) and the
# stripe direction of each detail channel. The last channel is driven by the jaw opening.
_SITES = (
    ("forehead", (19, 24), (0.0, 0.025, 0.0), (0.0, 1.0, 0.0), 0.028),
    ("glabella", (21, 22), (0.0, 0.006, 0.0), (1.0, 0.0, 0.0), 0.012),
    ("crow_left", (45,), (0.012, 0.0, -0.006), (0.0, 1.0, 0.0), 0.012),
    ("crow_right", (36,), (-0.012, 0.0, -0.006), (0.0, 1.0, 0.0), 0.012),
    ("nasolabial_left", (35, 54), (0.004, 0.0, 0.0), (0.8, 0.6, 0.0), 0.013),
    ("nasolabial_right", (31, 48), (-0.004, 0.0, 0.0), (-0.8, 0.6, 0.0), 0.013),
    ("chin", (57, 8), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), 0.015),
)


@dataclass
class DetailConfig:
    """Parameters of the synthetic detail model (see the module docstring).

    amplitude: metres per unit activation (1 mm); bulge: share β of the smooth bulge vs. stripes;
    wavelength: range of stripe wavelengths λ_k (m); fullness_scale: s in a_v (m); a_min/a_max:
    clip of a_v; expression_dims: leading expression coefficients that drive the channels;
    jaw_scale: jaw opening (rad) that gives activation 1; seed: fixes w_k, λ_k, φ_k."""

    amplitude: float = 1.0e-3
    bulge: float = 0.4
    wavelength: tuple = (0.006, 0.011)
    fullness_scale: float = 0.01
    a_min: float = 0.33
    a_max: float = 3.0
    expression_dims: int = 16
    jaw_scale: float = 0.25
    seed: int = 1234


class SyntheticDetail:
    """The ground-truth detail generator for one proxy. ``ids``: [M] face-region vertex ids."""

    def __init__(self, proxy, config: Optional[DetailConfig] = None) -> None:
        self.config = cfg = config or DetailConfig()
        self.proxy = proxy
        self.ids = face_region_ids(proxy)
        g = np.random.default_rng(cfg.seed)
        with torch.no_grad():
            tmpl = template_upsampled(proxy)
            lm = proxy(proxy.zero_params(1)).landmarks[0]  # rest pose = canonical template
        self.template = tmpl[self.ids]  # [M, 3]
        centers, dirs, widths = [], [], []
        for _name, lms, off, u, width in _SITES:
            centers.append(lm[list(lms)].mean(0) + torch.tensor(off, dtype=lm.dtype))
            d = torch.tensor(u, dtype=lm.dtype)
            dirs.append(d / d.norm())
            widths.append(width)
        self.centers = torch.stack(centers)  # [K, 3]
        self.dirs = torch.stack(dirs)
        self.widths = torch.tensor(widths, dtype=lm.dtype)
        K = len(_SITES)
        lo, hi = cfg.wavelength
        self.wavelengths = torch.tensor(g.uniform(lo, hi, K), dtype=lm.dtype)
        self.phases = torch.tensor(g.uniform(0, 2 * np.pi, K), dtype=lm.dtype)
        E = min(cfg.expression_dims, max(proxy.num_expression, 1))
        w = g.standard_normal((K - 1, E)) / math.sqrt(E) * 1.5
        self.expr_weights = torch.tensor(w, dtype=lm.dtype)  # [K-1, E]
        # Gaussian windows in template space (identity independent: same anatomical site)
        d2 = ((self.template[None] - self.centers[:, None]) ** 2).sum(-1)  # [K, M]
        self.windows = torch.exp(-0.5 * d2 / self.widths[:, None] ** 2)
        phase = 2 * np.pi * (self.template @ self.dirs.T).T / self.wavelengths[:, None] + self.phases[:, None]
        self.pattern = cfg.bulge + (1 - cfg.bulge) * torch.sin(phase)  # [K, M] anatomical folds
        with torch.no_grad():
            self.template_area = self._vertex_area(tmpl)

    @property
    def num_channels(self) -> int:
        return len(_SITES)

    def activations(self, expression: torch.Tensor, jaw_pose: torch.Tensor) -> torch.Tensor:
        """c_k: [T, K]. expression: [T, E'] (any E'); jaw_pose: [T, 3] (x = opening)."""
        E = self.expr_weights.shape[1]
        e = expression[:, :E].to(self.expr_weights.dtype)
        if e.shape[1] < E:
            e = torch.cat([e, e.new_zeros(e.shape[0], E - e.shape[1])], 1)
        c = torch.relu(e @ self.expr_weights.T)
        jaw = torch.relu(jaw_pose[:, :1].to(c.dtype)) / self.config.jaw_scale
        return torch.cat([c, jaw], 1)

    def basis(self, neutral: torch.Tensor) -> torch.Tensor:
        """Per-channel detail of one subject at unit activation: [K, M, 3].

        neutral: [N_s, 3] the subject's V_neutral (all proxy vertices)."""
        cfg = self.config
        n = vertex_normals(neutral, self.proxy.faces)[self.ids]
        p = neutral[self.ids]
        w = self.proxy.face_weight[self.ids]
        fullness = ((p - self.template) * n).sum(-1)
        fullness = fullness - (fullness * w).sum() / w.sum()
        a = torch.exp(fullness / cfg.fullness_scale).clamp(cfg.a_min, cfg.a_max)  # [M]
        sigma = torch.sqrt(self._vertex_area(neutral) / self.template_area)
        amp = cfg.amplitude * (sigma * a)[None] * self.windows * self.pattern  # [K, M]
        return amp[..., None] * n[None]

    def _vertex_area(self, verts: torch.Tensor) -> torch.Tensor:
        """Area around each face-region vertex (a third of its incident triangles): [M]."""
        F = self.proxy.faces
        a, b, c = verts[F[:, 0]], verts[F[:, 1]], verts[F[:, 2]]
        fa = torch.cross(b - a, c - a, dim=-1).norm(dim=-1) / 6
        out = torch.zeros(verts.shape[0], dtype=verts.dtype, device=verts.device)
        for k in range(3):
            out.index_add_(0, F[:, k], fa)
        return out[self.ids].clamp_min(1e-14)

    def offsets(self, neutral: torch.Tensor, expression: torch.Tensor, jaw_pose: torch.Tensor) -> torch.Tensor:
        """Ground-truth dynamic offsets [T, M, 3] on :attr:`ids` for one subject."""
        return torch.einsum("tk,kmc->tmc", self.activations(expression, jaw_pose), self.basis(neutral))


# ---------------------------------------------------------------------------------------------
def random_identity(proxy, seed: int, *, shape_scale: float = 1.0, num_betas: int = 20,
                    static_scale: float = 3e-3, num_bumps: int = 12, image_size=(512, 512), name: str = ""):
    """A random synthetic :class:`~expportrait_core.io.files.Identity`.

    betas: N(0, shape_scale²) on the first ``num_betas`` components; static offsets: ``num_bumps``
    Gaussian bumps (radius 2–5 cm, amplitude N(0, static_scale²) along the template normal)
    anywhere on the bust. Camera: the default portrait framing for ``image_size`` (H, W)."""
    from ..head.framing import portrait_camera_params
    from ..io.files import Identity

    g = np.random.default_rng(seed)
    dev, dt = proxy.device, proxy.v_template.dtype
    betas = torch.zeros(1, proxy.num_betas, dtype=dt, device=dev)
    k = min(num_betas, proxy.num_betas)
    betas[0, :k] = torch.tensor(g.standard_normal(k) * shape_scale, dtype=dt)
    with torch.no_grad():
        base = proxy.neutral(betas)[0]
        n = vertex_normals(base, proxy.faces)
        centers = base[torch.tensor(g.choice(proxy.num_vertices, num_bumps, replace=False), device=dev)]
        radii = torch.tensor(g.uniform(0.02, 0.05, num_bumps), dtype=dt, device=dev)
        amps = torch.tensor(g.standard_normal(num_bumps) * static_scale, dtype=dt, device=dev)
        d2 = ((base[None] - centers[:, None]) ** 2).sum(-1)
        field = (amps[:, None] * torch.exp(-0.5 * d2 / radii[:, None] ** 2)).sum(0)
        static = field[:, None] * n
        params = proxy.zero_params(1).replace(betas=betas.clone())  # no shared storage (safetensors)
        lm = proxy(params, static).landmarks[0].cpu()
    h, w = int(image_size[0]), int(image_size[1])
    camera = portrait_camera_params(lm.mean(0), float((lm[:, 1].max() - lm[:, 1].min()) * 1.9), w, h)
    return Identity(betas=betas.cpu(), static_offsets=static.cpu(), params=params.to("cpu"), camera=camera,
                    image_size=(h, w), model=proxy.describe(), name=name or f"synthetic_{seed}")


def sample_expressions(num: int, num_expression: int, generator: torch.Generator, *, named: int = 16,
                       scale: float = 1.0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent random (ψ, ω) for training: sparse-ish activations of the leading components.

    Returns expression [num, E] and jaw_pose [num, 3] (opening in 0..0.35 rad, tiny yaw/roll)."""
    E = num_expression
    k = min(named, E)
    psi = torch.zeros(num, E, dtype=dtype)
    lead = torch.randn(num, k, generator=generator, dtype=dtype) * scale
    keep = torch.rand(num, k, generator=generator, dtype=dtype) < 0.45
    psi[:, :k] = lead * keep
    if E > k:
        psi[:, k:] = torch.randn(num, E - k, generator=generator, dtype=dtype) * 0.15 * scale
    jaw = torch.zeros(num, 3, dtype=dtype)
    opening = torch.rand(num, generator=generator, dtype=dtype) * 0.35
    opening = opening * (torch.rand(num, generator=generator, dtype=dtype) < 0.6)
    jaw[:, 0] = opening
    jaw[:, 1:] = torch.randn(num, 2, generator=generator, dtype=dtype) * 0.01
    return psi, jaw


def _smooth_tracks(g: np.random.Generator, T: int, n: int, amp, freq=(0.2, 1.2), fps: float = 30.0) -> np.ndarray:
    """[T, n] sums of two random sinusoids per channel (a smooth performance)."""
    t = np.arange(T)[:, None] / fps
    out = np.zeros((T, n))
    for _ in range(2):
        f = g.uniform(*freq, n)
        ph = g.uniform(0, 2 * np.pi, n)
        out += np.sin(2 * np.pi * f * t + ph) * (np.asarray(amp) / 2)
    return out


def synthetic_params(proxy, num_frames: int, seed: int, *, betas: Optional[torch.Tensor] = None,
                     head_deg: float = 15.0, fps: float = 30.0) -> HeadParams:
    """A smooth random performance: expression (leading 16 components strong), jaw opening, gaze,
    head rotation (split evenly between neck and head, the project's convention) and translation."""
    g = np.random.default_rng(seed)
    T, E = num_frames, proxy.num_expression
    k = min(16, E)
    expr = np.zeros((T, E))
    expr[:, :k] = np.maximum(_smooth_tracks(g, T, k, 1.6, fps=fps), -0.6)
    if E > k:
        expr[:, k:] = _smooth_tracks(g, T, E - k, 0.2, fps=fps)
    jaw = np.zeros((T, 3))
    jaw[:, 0] = np.clip(_smooth_tracks(g, T, 1, 0.5, fps=fps)[:, 0], 0.0, 0.35)
    head = _smooth_tracks(g, T, 3, math.radians(head_deg) * np.array([1.0, 1.5, 0.6]), freq=(0.1, 0.5), fps=fps)
    gaze = _smooth_tracks(g, T, 2, 0.2, freq=(0.2, 0.8), fps=fps)
    eyes = np.zeros((T, 3))
    eyes[:, 0], eyes[:, 1] = gaze[:, 0], gaze[:, 1]
    transl = _smooth_tracks(g, T, 3, 0.01, freq=(0.1, 0.4), fps=fps)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    p = HeadParams.zeros(T, proxy.num_betas, E)
    if betas is not None:
        p = p.replace(betas=betas.expand(T, -1).clone().float())
    return p.replace(expression=f(expr), jaw_pose=f(jaw), neck_pose=f(head / 2), head_pose=f(head / 2),
                     leye_pose=f(eyes), reye_pose=f(eyes), transl=f(transl))


def synthetic_motion(proxy, identity, num_frames: int, seed: int, *, detail: Optional[SyntheticDetail] = None,
                     params: Optional[HeadParams] = None, fps: float = 30.0, name: str = ""):
    """A :class:`~expportrait_core.io.files.Motion` of ``identity`` with ground-truth dynamic offsets.

    ``params`` (batch T) overrides the random performance; ``detail`` defaults to
    ``SyntheticDetail(proxy)``."""
    from ..io.files import Motion

    detail = detail or SyntheticDetail(proxy)
    if params is None:
        params = synthetic_params(proxy, num_frames, seed, betas=identity.betas, fps=fps)
    else:
        params = params.replace(betas=identity.betas.expand(params.batch_size, -1).clone())
    with torch.no_grad():
        neutral = proxy.neutral(identity.betas.to(proxy.device), identity.static_offsets.to(proxy.device))[0]
        dyn = detail.offsets(neutral, params.expression.to(proxy.device), params.jaw_pose.to(proxy.device))
    return Motion(params=params, camera={k: v.clone() for k, v in identity.camera.items()}, fps=float(fps), model=proxy.describe(),
                  image_size=tuple(identity.image_size), dynamic_offsets=dyn.float().cpu(),
                  dynamic_offsets_index=detail.ids.cpu(), identity=identity, name=name or f"synthetic_motion_{seed}")
