"""Self-supervised training of the learned transfer module (paper §4).

Every training subject contributes its *own* driving code (ψ, ω), its own neutral personalized
mesh and its own dynamic offsets Δ_f; the model learns Δ_f = G(V_neutral, E(ψ, ω)) − G(V_neutral,
E(0, 0)) across many subjects, so at transfer time it predicts the *target's* detail for a
driving code. Subjects come from

- tracked motion files (``Motion`` with ``identity`` and ``dynamic_offsets``; each frame is a
  sample), and/or
- synthetic identities (:mod:`.synthetic`): random shapes and static offsets, random (ψ, ω)
  drawn per step, the identity-dependent ground-truth detail of :class:`SyntheticDetail`.

Loss per step (a few subjects × a few frames over the face-region triangles):
``L = mean_f mean_(v∈f) ‖m_v (Δ̂ − Δ)‖² / output_scale² + w_n · mean_f (1 − cos(n̂_f, n_f))`` —
squared offset error in mm² (the detail is sparse, so an L1 loss would settle on "no detail")
plus the face normals of the neutral surface carrying the offsets ``V_neutral + m ⊙ Δ`` (the
expression blend shapes are identical for prediction and target, so the flat-shaded normal map
difference is dominated by this term; an optional rasterized normal-map term,
``rendered_normal_weight``, uses the full expressive surface). Triangles are importance-sampled
(half uniform, half by the subject's detail energy) and reweighted, so the estimate is unbiased
while most samples land where the folds are.

Determinism: the sample of step k depends only on (seed, k), the optimizer is Adam with a
step-indexed learning-rate schedule, and checkpoints store weights, Adam moments and the loss
history, so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import List, Optional

import torch

from ..errors import ExpPortraitError
from ..grad import autograd_enabled
from ..io.atomic import atomic_path
from ..progress import ProgressFn, report
from .geometry import expression_displacement, face_region_ids, fit_betas, fit_expression_dims, region_faces
from .learned import TransferModel, TransferModelConfig, VertexFeatures, model_from_tensors
from .synthetic import SyntheticDetail, random_identity, sample_expressions

log = logging.getLogger(__name__)
CHECKPOINT_KIND = "expportrait.transfer_checkpoint"


@dataclass
class TrainConfig:
    """steps: optimizer steps; lr → lr_final: cosine schedule; subjects_per_step × frames_per_step
    samples per step; faces_per_sample: random face-region triangles (and their vertices) per
    subject and step (0 = all; a subset makes steps several times cheaper); normal_weight: w_n of the surface-normal term; rendered_normal_weight: an
    extra rasterized normal-map L1 term (0 = off; slower); seed: data sampling and init;
    checkpoint_every: steps between checkpoints; synthetic_identities: number of synthetic training
    subjects (0 = only motion files); synthetic_seed: first synthetic identity seed;
    synthetic_shape_scale: standard deviation of their leading betas; threads: torch threads
    while training (1: the per-step operations are small, and on a shared machine several
    spinning OpenMP threads made steps 4× slower; 0 = leave torch's setting);
    grad_clip: max gradient norm."""

    steps: int = 600
    lr: float = 1e-2
    lr_final: float = 1e-4
    subjects_per_step: int = 2
    frames_per_step: int = 24
    faces_per_sample: int = 1000
    normal_weight: float = 0.5
    rendered_normal_weight: float = 0.0
    seed: int = 0
    checkpoint_every: int = 100
    synthetic_identities: int = 16
    synthetic_seed: int = 1000
    synthetic_shape_scale: float = 1.0
    grad_clip: float = 1.0
    threads: int = 1


@dataclass
class Subject:
    """One training subject: features of its neutral mesh and where its targets come from.

    neutral_region: [M, 3] V_neutral on the face region; either ``detail_basis`` [K, M, 3]
    (synthetic: targets drawn per step) or ``expression`` [T, E], ``jaw`` [T, 3], ``offsets``
    [T, M, 3] (tracked); face_prob: [F_r] sampling distribution over the face-region triangles."""

    name: str
    features: VertexFeatures
    neutral_region: torch.Tensor
    face_prob: Optional[torch.Tensor] = None
    detail_basis: Optional[torch.Tensor] = None
    expression: Optional[torch.Tensor] = None
    jaw: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None


class TransferTrainer:
    """Holds the proxy-side precomputations, the subjects, the model and the optimizer."""

    def __init__(self, proxy, model_config: Optional[TransferModelConfig] = None, config: Optional[TrainConfig] = None,
                 detail: Optional[SyntheticDetail] = None) -> None:
        self.proxy = proxy
        self.config = config or TrainConfig()
        mc = model_config or TransferModelConfig(num_expression=max(proxy.num_expression, 1))
        if mc.vertex_embedding > 0 and mc.region_vertices != int((proxy.face_weight > 0).sum()):
            mc = replace(mc, region_vertices=int((proxy.face_weight > 0).sum()))
        with torch.random.fork_rng():  # seeded init without touching the caller's global RNG
            torch.manual_seed(self.config.seed)
            self.model = TransferModel(mc, {"trained_on": proxy.describe()})
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        self.step = 0
        self.history: List[list] = []  # [step, loss, offset_loss, normal_loss]
        self.ids = face_region_ids(proxy)
        self.mask = proxy.face_weight[self.ids].float()
        self.faces = region_faces(proxy.faces, self.ids, proxy.num_vertices)
        self.detail = detail
        self.subjects: List[Subject] = []
        self.data_description: dict = {"motions": [], "synthetic": 0}
        self.seconds = 0.0

    # -- data ---------------------------------------------------------------------------------
    def _features(self, betas: torch.Tensor, static: torch.Tensor):
        with torch.no_grad():
            neutral = self.proxy.neutral(fit_betas(betas.float(), self.proxy.num_betas), static.float())[0]
            return neutral, self.model.vertex_features(self.proxy, neutral, self.ids)

    def add_synthetic(self, count: int, first_seed: Optional[int] = None) -> None:
        """Add ``count`` synthetic subjects (seeds first_seed, first_seed + 1, ...)."""
        if count <= 0:
            return
        self.detail = self.detail or SyntheticDetail(self.proxy)
        s0 = self.config.synthetic_seed if first_seed is None else first_seed
        for i in range(count):
            ident = random_identity(self.proxy, s0 + i, shape_scale=self.config.synthetic_shape_scale)
            neutral, feats = self._features(ident.betas, ident.static_offsets)
            with torch.no_grad():
                basis = self.detail.basis(neutral).float()
            energy = (basis ** 2).sum((0, 2))  # [M] detail energy per vertex
            self.subjects.append(Subject(ident.name, feats, neutral[self.ids].float(), self._face_prob(energy),
                                         detail_basis=basis))
        self.data_description["synthetic"] += count

    def add_motion(self, motion, name: str = "") -> bool:
        """Add a tracked motion (needs ``identity`` and dynamic offsets); False (logged) if unusable."""
        from .core import _region_offsets

        label = name or motion.name or f"motion{len(self.subjects)}"
        if motion.identity is None or motion.dynamic_offsets is None:
            log.warning("Skipping %s: a training motion needs its driving identity and dynamic offsets "
                        "(track with the detail path).", label)
            return False
        if motion.identity.static_offsets.shape[0] != self.proxy.num_vertices:
            raise ExpPortraitError(f"'{label}' was made with another proxy resolution "
                                   f"({motion.identity.static_offsets.shape[0]} vertices vs {self.proxy.num_vertices}).")
        neutral, feats = self._features(motion.identity.betas, motion.identity.static_offsets)
        p = motion.params.expand(motion.num_frames)
        offs = _region_offsets(motion, self.ids.cpu(), self.proxy.num_vertices).float()
        energy = (offs ** 2).sum(-1).mean(0)
        self.subjects.append(Subject(label, feats, neutral[self.ids].float(), self._face_prob(energy),
                                     expression=fit_expression_dims(p.expression.float(), self.proxy.num_expression),
                                     jaw=p.jaw_pose.float(), offsets=offs))
        self.data_description["motions"].append(label)
        return True

    def _face_prob(self, energy: torch.Tensor) -> torch.Tensor:
        """Importance distribution over face-region triangles: half uniform, half proportional to the
        subject's detail energy (the loss is reweighted by 1/p, so it stays unbiased)."""
        e = (energy * self.mask)[self.faces].mean(1)
        uni = torch.full_like(e, 1.0 / len(e))
        if float(e.sum()) <= 0:
            return uni
        return 0.5 * uni + 0.5 * e / e.sum()

    def _sample(self, step: int):
        """The deterministic batch of ``step``: list of (subject, ψ [F, E], ω [F, 3], Δ [F, M', 3],
        faces [F', 3], vertex subset [M'] or None, face weights [F'] or None). With
        ``faces_per_sample`` > 0, triangles are drawn from the subject's importance distribution
        (with their vertices) and weighted by 1/p: an unbiased, much cheaper estimate of the loss."""
        cfg = self.config
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        picks = torch.randint(len(self.subjects), (cfg.subjects_per_step,), generator=g).tolist()
        out = []
        for i in picks:
            sub = self.subjects[i]
            faces, verts, fw = self.faces, None, None
            if 0 < cfg.faces_per_sample < len(self.faces):
                sel = torch.multinomial(sub.face_prob, cfg.faces_per_sample, replacement=True, generator=g)
                fw = 1.0 / (len(self.faces) * sub.face_prob[sel] * cfg.faces_per_sample)  # unbiased weights
                verts, faces = torch.unique(self.faces[sel], return_inverse=True)
            if sub.detail_basis is not None:
                psi, jaw = sample_expressions(cfg.frames_per_step, self.proxy.num_expression, g)
                act = self.detail.activations(psi, jaw).float()
                basis = sub.detail_basis if verts is None else sub.detail_basis[:, verts]
                target = torch.einsum("tk,kmc->tmc", act, basis)
            else:
                fr = torch.randint(sub.expression.shape[0], (cfg.frames_per_step,), generator=g)
                psi, jaw, target = sub.expression[fr], sub.jaw[fr], sub.offsets[fr]
                if verts is not None:
                    target = target[:, verts]
            out.append((sub, psi.float(), jaw.float(), target.float(), faces, verts, fw))
        return out

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, batch) -> tuple[torch.Tensor, float, float]:
        """Mean over face-region triangles (of the per-triangle mean over its vertices) of the offset
        error, plus the normal term; estimated from the sampled triangles when subsampling."""
        cfg = self.config
        scale = self.model.config.output_scale
        total_off, total_n = 0.0, 0.0
        for sub, psi, jaw, target, faces, verts, fw in batch:
            feats = sub.features if verts is None else sub.features.subset(verts)
            m = (self.mask if verts is None else self.mask[verts])[None, :, None]
            q = self.model.encode(torch.cat([psi, psi.new_zeros(1, psi.shape[1])]), torch.cat([jaw, jaw.new_zeros(1, 3)]))
            out = self.model.decode(feats, q)  # vertex trunk once per subject, shared by its frames
            pred = out[:-1] - out[-1:]
            # squared error in mm (the detail is sparse: an L1 loss would settle on "no detail")
            err = (((pred - target) * m / scale) ** 2).sum(-1)  # [T, M']
            err_f = err[:, faces].mean(-1)  # [T, F']
            # normals of the neutral surface carrying the offsets (the expression blend shapes are
            # the same for prediction and target, so they are left out)
            neutral = sub.neutral_region if verts is None else sub.neutral_region[verts]
            fn_pred = _face_normals(neutral[None] + m * pred, faces)
            with torch.no_grad():
                fn_gt = _face_normals(neutral[None] + m * target, faces)
            nl_f = 1 - (fn_pred * fn_gt).sum(-1)  # [T, F']
            if fw is None:
                off, nl = err_f.mean(), nl_f.mean()
            else:
                off, nl = (err_f * fw).sum(-1).mean(), (nl_f * fw).sum(-1).mean()
            total_off = total_off + off
            total_n = total_n + nl
            if cfg.rendered_normal_weight > 0:
                base = neutral[None] + expression_displacement(self.proxy, psi, self.ids).float()
                total_n = total_n + cfg.rendered_normal_weight / max(cfg.normal_weight, 1e-9) * self._rendered(base, pred, target)
        k = len(batch)
        loss = (total_off + cfg.normal_weight * total_n) / k
        return loss, float(total_off.detach()) / k, float(total_n.detach()) / k

    def _rendered(self, base, pred, target) -> torch.Tensor:
        """L1 between rasterized normal maps (64², frontal orthographic-like camera) of the face region."""
        from ..render import Camera, render_normals

        m = self.mask[None, :, None]
        c = base[0].mean(0).detach()
        cam = Camera.look_at(eye=(float(c[0]), float(c[1]), float(c[2]) + 1.2), target=tuple(float(x) for x in c),
                             up=(0.0, 1.0, 0.0), fov_y_deg=12.0, width=64, height=64)
        B = base.shape[0]
        a = render_normals(base + m * pred, self.faces, cam.batch(B))
        with torch.no_grad():
            b = render_normals(base + m * target, self.faces, cam.batch(B))
        both = (a.mask * b.mask)[..., None]
        return ((a.normals - b.normals).abs() * both).sum() / both.sum().clamp_min(1.0)

    def _lr(self, step: int) -> float:
        cfg = self.config
        t = min(1.0, step / max(1, cfg.steps))
        return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * t))

    # -- loop -----------------------------------------------------------------------------------
    @autograd_enabled
    def train(self, steps: Optional[int] = None, *, checkpoint_path: Optional[Path] = None,
              progress: Optional[ProgressFn] = None, time_limit: Optional[float] = None) -> List[list]:
        """Run until ``steps`` (default config.steps) total steps, checkpointing every
        ``checkpoint_every`` steps and at the end. ``time_limit`` (s) stops early (checkpointed)."""
        if not self.subjects:
            raise ExpPortraitError("No training data: give motion files with dynamic offsets or synthetic identities.")
        if self.config.rendered_normal_weight > 0 and 0 < self.config.faces_per_sample < len(self.faces):
            raise ExpPortraitError("The rendered normal-map loss needs whole faces: use --faces-per-sample 0 with "
                                   "--rendered-normal-weight.")
        total = int(steps if steps is not None else self.config.steps)
        threads = torch.get_num_threads()
        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        try:
            return self._train(total, checkpoint_path, progress, time_limit)
        finally:
            torch.set_num_threads(threads)

    def _train(self, total: int, checkpoint_path, progress, time_limit) -> List[list]:
        t0 = start = time.perf_counter()
        self.model.train()
        while self.step < total:
            for grp in self.optimizer.param_groups:
                grp["lr"] = self._lr(self.step)
            batch = self._sample(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss, lo, ln = self.loss(batch)
            loss.backward()
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.step += 1
            self.history.append([self.step, loss.item(), lo, ln])
            report(progress, self.step, total)
            done = self.step >= total or (time_limit is not None and time.perf_counter() - start > time_limit)
            if checkpoint_path is not None and (self.step % max(1, self.config.checkpoint_every) == 0 or done):
                self.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save_checkpoint(checkpoint_path)
            if done:
                break
        self.seconds += time.perf_counter() - t0
        self.model.eval()
        return self.history

    # -- checkpoints ------------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"trained_on": self.proxy.describe(), "steps": self.step, "data": self.data_description,
                "train_config": asdict(self.config), "train_seconds": round(self.seconds, 2),
                "final_loss": self.history[-1][1] if self.history else None}

    def save_checkpoint(self, path: Path) -> Path:
        """Weights, Adam state, step and loss history (``.safetensors``, atomic)."""
        from ..io.atomic import save_safetensors_atomic

        tensors = {f"model.{k}": v.detach().float() for k, v in self.model.state_dict().items()}
        for i, p in enumerate(self.model.parameters()):
            st = self.optimizer.state.get(p)
            if st:
                tensors[f"optim.{i}.exp_avg"] = st["exp_avg"]
                tensors[f"optim.{i}.exp_avg_sq"] = st["exp_avg_sq"]
                tensors[f"optim.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
        meta = {"kind": CHECKPOINT_KIND, "format_version": "1",
                "config": json.dumps(asdict(self.model.config), sort_keys=True),
                "meta": json.dumps(self._meta(), sort_keys=True), "step": str(self.step),
                "history": json.dumps(self.history)}
        return save_safetensors_atomic(tensors, path, meta)

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights, optimizer state, step and history (training continues exactly)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ExpPortraitError(f"Checkpoint '{path}' not found (drop --resume to start a new run).")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:
            raise ExpPortraitError(f"Cannot read checkpoint '{path.name}' ({type(exc).__name__}: {exc}).") from exc
        if meta.get("kind") != CHECKPOINT_KIND:
            raise ExpPortraitError(f"'{path.name}' is not a transfer training checkpoint.")
        saved_cfg = json.loads(meta["config"])
        if saved_cfg != json.loads(json.dumps(asdict(self.model.config), sort_keys=True)):
            raise ExpPortraitError(f"'{path.name}' was trained with another architecture ({saved_cfg}); "
                                   "use the same --hidden/--layers/--code-dim or start a new run.")
        model = model_from_tensors(tensors, {**meta, "kind": "expportrait.transfer_model"}, path)
        self.model.load_state_dict(model.state_dict())
        self.model.meta = model.meta
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        for i, p in enumerate(self.model.parameters()):
            if f"optim.{i}.exp_avg" in tensors:
                self.optimizer.state[p] = {"step": torch.tensor(float(tensors[f"optim.{i}.step"][0])),
                                           "exp_avg": tensors[f"optim.{i}.exp_avg"].clone(),
                                           "exp_avg_sq": tensors[f"optim.{i}.exp_avg_sq"].clone()}
        self.step = int(meta["step"])
        self.history = [list(h) for h in json.loads(meta.get("history", "[]"))]
        self.seconds = float(json.loads(meta.get("meta", "{}")).get("train_seconds", 0.0))

    def export(self, path: Path) -> Path:
        """The trained model alone (weights + config + training facts), for the nodes."""
        self.model.meta = self._meta()
        return self.model.save(path)


def _face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit face normals [B, F, 3] of verts [B, N, 3] (the flat-shaded normal map's content)."""
    a, b, c = verts[:, faces[:, 0]], verts[:, faces[:, 1]], verts[:, faces[:, 2]]
    n = torch.cross(b - a, c - a, dim=-1)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------
def plot_losses(history: List[list], path: Path, title: str = "transfer training") -> Path:
    """A PNG line plot of total / offset / normal loss (log scale) with PIL only."""

    from PIL import Image, ImageDraw

    W, H, pad = 720, 400, 50
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    dr.rectangle([pad, pad // 2, W - pad // 2, H - pad], outline="black")
    dr.text((pad, 5), title, fill="black")
    if history:
        steps = [h[0] for h in history]
        series = [([h[1] for h in history], (200, 30, 30), "total"), ([h[2] for h in history], (30, 90, 200), "offset (mm²)"),
                  ([h[3] for h in history], (30, 150, 60), "normal")]
        vals = [v for s, _, _ in series for v in s if v > 0 and math.isfinite(v)]
        lo, hi = math.log10(min(vals)), math.log10(max(vals))
        hi = hi if hi > lo else lo + 1
        x0, x1 = pad, W - pad // 2
        y0, y1 = H - pad, pad // 2
        sx = lambda s: x0 + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (x1 - x0)  # noqa: E731
        sy = lambda v: y0 - (math.log10(max(v, 1e-12)) - lo) / (hi - lo) * (y0 - y1)  # noqa: E731
        win = max(1, len(steps) // 100)
        for k, (s, col, label) in enumerate(series):
            sm = [sum(s[max(0, i - win + 1) : i + 1]) / len(s[max(0, i - win + 1) : i + 1]) for i in range(len(s))]
            dr.line([(sx(a), sy(b)) for a, b in zip(steps, sm)], fill=col, width=2)
            dr.text((W - 170, pad + 14 * k), label, fill=col)
        for e in range(math.floor(lo), math.ceil(hi) + 1):
            if lo <= e <= hi:
                dr.text((5, sy(10 ** e) - 6), f"1e{e}", fill="black")
        dr.text((x0, y0 + 8), str(steps[0]), fill="black")
        dr.text((x1 - 40, y0 + 8), str(steps[-1]), fill="black")
        dr.text(((x0 + x1) // 2 - 10, y0 + 8), "step", fill="black")
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
