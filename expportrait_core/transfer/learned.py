"""The learned identity-adaptive transfer module (paper §4): encoder E and per-vertex MLP G.

    q_i = E(ψ_i, ω_i)                           driving expression code + jaw pose → code [D]
    Δ_f(i)_v = G(f_v(V_neutral), q_i) − G(f_v(V_neutral), q_0)

``f_v`` are per-vertex features of the **target's** neutral personalized mesh
``V_neutral = V^s + Δ_g`` (so the predicted detail adapts to the target's anatomy): its position
and normal, the template position of the same vertex (which vertex it is), the identity
displacement between them, the local area ratio to the template and the local curvature
difference, with Fourier features of both positions.

G is a per-vertex MLP with a multiplicative code interaction: a trunk maps ``f_v`` to a hidden
vector ``h_v``; one head turns ``h_v`` into a per-vertex basis ``U_v ∈ R^{D×3}`` that the code
weights (``U_v q``: expression detail is a code-weighted sum of identity-shaped patterns),
and an optional small mixing MLP on ``[h_v, q]`` adds what is not linear in ``q``. The trunk runs
once per identity; per frame only ``U_v q`` (and the mixer) runs, so inference is a few ms per
frame. Offsets are predicted in the vertex's tangent frame (t1, t2, n) of the target's neutral
mesh. Subtracting the output for the neutral code (``q_0 = E(0, 0)``, or a calibration frame's)
makes a neutral driving frame map to zero detail exactly. Weights and config are stored as
``.safetensors`` (JSON metadata).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import ExpPortraitError, MissingModelError
from .geometry import face_region_ids, fit_expression_dims, template_upsampled, vertex_normals

MODEL_KIND = "expportrait.transfer_model"
FORMAT_VERSION = "1"


@dataclass
class TransferModelConfig:
    """Architecture. num_expression: ψ size the encoder takes (100 = SMPL-X); code_dim: D;
    encoder_hidden/encoder_layers: E's MLP; hidden/layers: width and hidden-layer count of G's
    vertex trunk; mix_hidden: width of the optional [h_v, q] mixing MLP (0 = off); gain: scale
    each vertex's basis by ``exp(γ(h_v))`` — a log-additive path for identity-dependent depth
    (depth = pattern × identity factor is a product, which an MLP fits slowly otherwise);
    vertex_embedding: size of a learned per-vertex code appended to the trunk's input (which
    anatomical point a vertex is, learned; 0 = off) — ties the model to the head model's face
    region, whose size is ``region_vertices``; frequencies:
    Fourier octaves of the neutral-position features (finest period = length_scale / 2^(f-1));
    template_frequencies / wavelengths / seed: random Fourier features of the template position
    (which anatomical point a vertex is) with wavelengths log-uniform in the given range (m) and
    random directions, fixed by the seed and stored with the weights; length_scale: metres per
    unit of normalized position; displacement_scale: metres per unit of
    the identity-displacement and curvature features; output_scale: metres per unit of G's output."""

    num_expression: int = 100
    code_dim: int = 32
    encoder_hidden: int = 128
    encoder_layers: int = 2
    hidden: int = 64
    layers: int = 2
    mix_hidden: int = 0
    gain: bool = True
    vertex_embedding: int = 16
    region_vertices: int = 0
    frequencies: int = 4
    template_frequencies: int = 64
    wavelengths: tuple = (0.005, 0.08)
    seed: int = 0
    length_scale: float = 0.1
    displacement_scale: float = 0.01
    output_scale: float = 1e-3

    @property
    def feature_dim(self) -> int:
        return 14 + 2 * 3 * self.frequencies + 2 * self.template_frequencies + self.vertex_embedding


@dataclass
class VertexFeatures:
    """Per-vertex inputs of G for one identity. ids: [M] proxy vertex ids; features: [M, F];
    frame: [M, 3, 3] rows (t1, t2, n) of the tangent frame; rows: [M] position of each vertex in
    the face region (indexes the learned vertex codes; ``arange(M)`` unless subsampled)."""

    ids: torch.Tensor
    features: torch.Tensor
    frame: torch.Tensor
    rows: Optional[torch.Tensor] = None

    def subset(self, sel: torch.Tensor) -> "VertexFeatures":
        rows = sel if self.rows is None else self.rows[sel]
        return VertexFeatures(self.ids[sel], self.features[sel], self.frame[sel], rows)


def _fourier(x: torch.Tensor, n: int) -> torch.Tensor:
    freqs = (2.0 ** torch.arange(n, dtype=x.dtype, device=x.device)) * math.pi
    a = x[..., None] * freqs  # [M, 3, n]
    return torch.cat([torch.sin(a), torch.cos(a)], -1).flatten(-2)


def _vertex_area(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[N] a third of the area of the triangles around each vertex. verts: [N, 3]."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    fa = torch.cross(b - a, c - a, dim=-1).norm(dim=-1) / 6
    out = torch.zeros(verts.shape[0], dtype=verts.dtype, device=verts.device)
    for k in range(3):
        out.index_add_(0, faces[:, k], fa)
    return out


def _umbrella(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[N, 3] uniform Laplacian (neighbour mean − vertex; edges counted per incident face)."""
    acc = torch.zeros_like(verts)
    cnt = torch.zeros(verts.shape[0], dtype=verts.dtype, device=verts.device)
    for i, j in ((0, 1), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)):
        acc.index_add_(0, faces[:, i], verts[faces[:, j]])
        cnt.index_add_(0, faces[:, i], torch.ones_like(faces[:, i], dtype=verts.dtype))
    return acc / cnt.clamp_min(1)[:, None] - verts


def _mlp(sizes, act=nn.SiLU) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class TransferModel(nn.Module):
    """E and G. ``meta`` holds facts about training (steps, data, the head model it was trained on)."""

    def __init__(self, config: Optional[TransferModelConfig] = None, meta: Optional[dict] = None) -> None:
        super().__init__()
        self.config = cfg = config or TransferModelConfig()
        self.meta = dict(meta or {})
        enc = [cfg.num_expression + 3] + [cfg.encoder_hidden] * cfg.encoder_layers + [cfg.code_dim]
        self.encoder = _mlp(enc)
        g = torch.Generator().manual_seed(cfg.seed)
        dirs = torch.randn(cfg.template_frequencies, 3, generator=g)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        lo, hi = math.log(cfg.wavelengths[0]), math.log(cfg.wavelengths[1])
        lam = torch.exp(lo + (hi - lo) * torch.rand(cfg.template_frequencies, generator=g))
        self.register_buffer("template_freqs", dirs * (2 * math.pi / lam)[:, None])  # [K, 3] rad/m
        self.embedding = None
        if cfg.vertex_embedding > 0:
            if cfg.region_vertices <= 0:
                raise ValueError("vertex_embedding needs region_vertices (the proxy's face-region size)")
            self.embedding = nn.Parameter(torch.randn(cfg.region_vertices, cfg.vertex_embedding, generator=g) * 0.1)
        self.trunk = nn.Sequential(_mlp([cfg.feature_dim] + [cfg.hidden] * cfg.layers), nn.SiLU())
        self.basis = nn.Linear(cfg.hidden, cfg.code_dim * 3)
        nn.init.normal_(self.basis.weight, std=1e-2)  # start from little detail
        nn.init.zeros_(self.basis.bias)
        self.gain = None
        if cfg.gain:
            self.gain = nn.Linear(cfg.hidden, 1)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.gain.bias)
        self.mix = None
        if cfg.mix_hidden > 0:
            self.mix = _mlp([cfg.hidden + cfg.code_dim, cfg.mix_hidden, 3])
            nn.init.zeros_(self.mix[-1].weight)
            nn.init.zeros_(self.mix[-1].bias)

    # -------------------------------------------------------------------------------------------
    def encode(self, expression: torch.Tensor, jaw_pose: torch.Tensor) -> torch.Tensor:
        """q = E(ψ, ω). expression: [T, E'] (padded/truncated to num_expression); jaw_pose: [T, 3] → [T, D]."""
        e = fit_expression_dims(expression.to(self.basis.weight.dtype), self.config.num_expression)
        return self.encoder(torch.cat([e, jaw_pose.to(e.dtype)], -1))

    def vertex_features(self, proxy, neutral: torch.Tensor, ids: Optional[torch.Tensor] = None) -> VertexFeatures:
        """Features of the target's neutral mesh ``neutral: [N_s, 3]`` on ``ids`` (default: face region)."""
        cfg = self.config
        ids = face_region_ids(proxy) if ids is None else ids
        with torch.no_grad():
            tmpl = template_upsampled(proxy).to(neutral.dtype)
            n_all = vertex_normals(neutral, proxy.faces)
            area = _vertex_area(neutral, proxy.faces)
            area_t = _vertex_area(tmpl, proxy.faces)
            curv = ((_umbrella(neutral, proxy.faces) - _umbrella(tmpl, proxy.faces)) * n_all).sum(-1)
        n = n_all[ids]
        p, t = neutral[ids], tmpl[ids]
        w = proxy.face_weight[ids][:, None].to(p.dtype)
        # centre on the face region so a translated or taller body does not shift every feature
        c_p = (p * w).sum(0) / w.sum().clamp_min(1e-9)
        c_t = (t * w).sum(0) / w.sum().clamp_min(1e-9)
        x_p = (p - c_p) / cfg.length_scale
        x_t = (t - c_t) / cfg.length_scale
        disp = (p - c_p - (t - c_t)) / cfg.displacement_scale
        scale = 0.5 * torch.log(area[ids].clamp_min(1e-14) / area_t[ids].clamp_min(1e-14))
        bend = curv[ids] / (cfg.displacement_scale * 0.1)
        ang = (t - c_t).to(self.template_freqs.dtype) @ self.template_freqs.T  # [M, K]
        feats = torch.cat([x_p, x_t, disp, n, scale[:, None], bend[:, None], _fourier(x_p, cfg.frequencies),
                           torch.sin(ang).to(p.dtype), torch.cos(ang).to(p.dtype)], -1)
        if self.embedding is not None:
            if len(ids) != self.embedding.shape[0]:
                raise ExpPortraitError(
                    f"This transfer model was trained for a head model whose face region has {self.embedding.shape[0]} "
                    f"vertices; the loaded proxy's has {len(ids)}. Use a model trained with this SMPL-X file and "
                    "subdivision (python -m expportrait_core train-transfer --smplx ...).")
            # placeholder columns; the learned codes are inserted in vertex_state (they need gradients)
            feats = torch.cat([feats, torch.zeros(len(ids), self.embedding.shape[1], dtype=feats.dtype)], -1)
        ex = torch.tensor([1.0, 0.0, 0.0], dtype=n.dtype, device=n.device).expand_as(n)
        t1 = ex - (ex * n).sum(-1, keepdim=True) * n
        t1 = t1 / t1.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        t2 = torch.cross(n, t1, dim=-1)
        frame = torch.stack([t1, t2, n], 1)
        dt = self.basis.weight.dtype
        return VertexFeatures(ids=ids, features=feats.to(dt), frame=frame.to(dt), rows=torch.arange(len(ids)))

    def vertex_state(self, feats: VertexFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """The identity-dependent half of G: hidden ``h`` [M, H] and the basis ``U`` already turned
        from the tangent frame into xyz and laid out as [D, M·3] (one matrix product per frame)."""
        x = feats.features
        if self.embedding is not None:
            k = self.embedding.shape[1]
            x = torch.cat([x[:, :-k], self.embedding[feats.rows]], -1)
        h = self.trunk(x)
        U = self.basis(h).view(-1, self.config.code_dim, 3)  # [M, D, 3] in (t1, t2, n)
        if self.gain is not None:
            U = U * torch.exp(self.gain(h).clamp(-5, 5))[..., None]
        U = (U[..., None] * feats.frame[:, None]).sum(2)  # [M, D, 3] in xyz
        return h, U.permute(1, 0, 2).reshape(self.config.code_dim, -1)

    def decode(self, feats: VertexFeatures, codes: torch.Tensor, state=None) -> torch.Tensor:
        """G for every vertex and code: codes [T, D] → offsets [T, M, 3] (metres, canonical xyz)."""
        h, U = self.vertex_state(feats) if state is None else state
        T, M = codes.shape[0], h.shape[0]
        out = (codes @ U).view(T, M, 3)
        if self.mix is not None:
            x = torch.cat([h[None].expand(T, -1, -1), codes[:, None].expand(-1, M, -1)], -1)
            out = out + (self.mix(x)[..., None] * feats.frame[None]).sum(-2)
        return out * self.config.output_scale

    def forward(self, feats: VertexFeatures, expression: torch.Tensor, jaw_pose: torch.Tensor,
                ref_expression: Optional[torch.Tensor] = None, ref_jaw: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Δ_f [T, M, 3] for expressions [T, E] and jaw poses [T, 3], relative to the reference code
        (``ref_*`` [1, ...]; default: the neutral ψ = 0, ω = 0)."""
        T = expression.shape[0]
        if ref_expression is None:
            ref_expression = expression.new_zeros(1, expression.shape[1])
        if ref_jaw is None:
            ref_jaw = jaw_pose.new_zeros(1, 3)
        q = self.encode(torch.cat([expression, ref_expression]), torch.cat([jaw_pose, ref_jaw]))
        out = self.decode(feats, q)
        return out[:T] - out[T:]

    @torch.no_grad()
    def predict(self, proxy, neutral: torch.Tensor, expression: torch.Tensor, jaw_pose: torch.Tensor,
                ref_expression: Optional[torch.Tensor] = None, ref_jaw: Optional[torch.Tensor] = None,
                chunk: int = 16, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dynamic offsets of the target for a whole clip, in chunks of frames.

        neutral: [N_s, 3] target V_neutral; expression [T, E]; jaw_pose [T, 3]. Returns
        (offsets [T, M, 3] float32, ids [M])."""
        from ..progress import report

        dev = self.basis.weight.device
        feats = self.vertex_features(proxy, neutral.to(dev))
        state = self.vertex_state(feats)
        ref_expression = expression.new_zeros(1, expression.shape[1]) if ref_expression is None else ref_expression
        ref_jaw = jaw_pose.new_zeros(1, 3) if ref_jaw is None else ref_jaw
        base = self.decode(feats, self.encode(ref_expression.to(dev), ref_jaw.to(dev)), state)
        T = expression.shape[0]
        out = torch.empty(T, len(feats.ids), 3)
        for s in range(0, T, chunk):
            q = self.encode(expression[s : s + chunk].to(dev), jaw_pose[s : s + chunk].to(dev))
            out[s : s + chunk] = (self.decode(feats, q, state) - base).float().cpu()
            report(progress, min(T, s + chunk), T)
        return out, feats.ids

    # -------------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra_meta: Optional[dict] = None) -> Path:
        """Write weights + config as ``.safetensors`` (atomic)."""
        from ..io.atomic import save_safetensors_atomic

        meta = {
            "kind": MODEL_KIND,
            "format_version": FORMAT_VERSION,
            "config": json.dumps(asdict(self.config), sort_keys=True),
            "meta": json.dumps({**self.meta, **(extra_meta or {})}, sort_keys=True),
        }
        return save_safetensors_atomic({k: v.float() for k, v in self.state_dict().items()}, path, meta)


def model_from_tensors(tensors: dict, meta: dict, path: str | Path = "") -> TransferModel:
    """Build a :class:`TransferModel` from a safetensors dict + metadata (checked)."""
    name = Path(path).name
    if meta.get("kind") != MODEL_KIND:
        raise ExpPortraitError(f"'{name}' is not an ExpPortrait transfer model (kind={meta.get('kind')!r}).")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExpPortraitError(f"'{name}' has transfer-model format {meta.get('format_version')!r}; expected {FORMAT_VERSION}.")
    try:
        fields = TransferModelConfig.__dataclass_fields__
        cfg = TransferModelConfig(**{k: v for k, v in json.loads(meta["config"]).items() if k in fields})
        model = TransferModel(cfg, json.loads(meta.get("meta", "{}")))
        model.load_state_dict({k[len("model.") :] if k.startswith("model.") else k: v for k, v in tensors.items()
                               if not k.startswith("optim.")})
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ExpPortraitError(f"'{name}' does not hold a valid transfer model ({type(exc).__name__}: {exc}).") from exc
    return model.eval()


def load_transfer_model(path: str | Path, device: str | torch.device = "cpu") -> TransferModel:
    """Load a model written by :meth:`TransferModel.save` (or a training checkpoint)."""
    from safetensors import safe_open

    from ..paths import MODEL_FOLDERS

    path = Path(path)
    if not path.is_file():
        raise MissingModelError("Transfer model", str(path.parent), path.name,
                                f"training: python -m expportrait_core train-transfer --out {path.name} "
                                f"(place it in ComfyUI/models/{MODEL_FOLDERS['expportrait_transfer']})")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise ExpPortraitError(f"Cannot read '{path.name}' as a safetensors file ({type(exc).__name__}: {exc}); "
                               "it may be truncated: train or copy it again.") from exc
    return model_from_tensors(tensors, meta, path).to(device)


def check_model_matches(model: TransferModel, proxy) -> Optional[str]:
    """A warning text when the model was trained on another head model (None when it matches)."""
    trained = model.meta.get("trained_on") or {}
    if not trained:
        return None
    desc = proxy.describe()
    if trained.get("smplx_sha256") and trained.get("smplx_sha256") != desc.get("smplx_sha256"):
        kind = "the synthetic head" if trained.get("synthetic") else "another SMPL-X file"
        return f"the transfer model was trained on {kind}; its detail may not fit this head model"
    return None


__all__ = ["TransferModel", "TransferModelConfig", "VertexFeatures", "load_transfer_model", "check_model_matches",
           "model_from_tensors"]
