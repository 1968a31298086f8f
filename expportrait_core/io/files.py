"""Identity and motion files: ``.safetensors`` with JSON metadata, written atomically.

Layout (all tensors float32 unless noted):

identity file (``kind = "expportrait.identity"``)
    ``betas [1, S]``, ``static_offsets [N_s, 3]``, ``params.<field> [1, n]`` (the reference
    frame's pose/expression, see :class:`~expportrait_core.head.HeadParams`), ``camera.<k>``
    (``fx, fy, cx, cy [1]``, ``R [3, 3]``, ``t [3]``), optional ``embedding [D]``.
motion file (``kind = "expportrait.motion"``)
    ``params.<field> [T, n]``, optional ``dynamic_offsets [T, M, 3]`` on the vertices
    ``dynamic_offsets_index [M]`` (int64; the face region), ``camera.<k>``, optional
    ``crops [T, 3]`` (scale, x0, y0 of each frame's crop in the original frame), and the driving
    subject's identity under the prefix ``identity.``.
Metadata (strings): ``format_version``, ``kind``, ``model`` (JSON of ``HeadProxy.describe()``:
SMPL-X file hash, vertex counts), ``fps``, ``lost_frames`` (JSON list), ``image_size`` (JSON),
``name``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..errors import ExpPortraitError
from ..head.params import HeadParams
from .atomic import save_safetensors_atomic

FORMAT_VERSION = "1"
IDENTITY_KIND = "expportrait.identity"
MOTION_KIND = "expportrait.motion"
CAMERA_KEYS = ("fx", "fy", "cx", "cy", "R", "t")


@dataclass
class Identity:
    """A personalized subject: shape, static offsets, the reference frame's pose and camera.

    betas: [1, S]; static_offsets: [N_s, 3]; params: HeadParams with batch 1 (reference pose and
    expression; its ``betas`` equal ``betas``); camera: dict of tensors (``CAMERA_KEYS``);
    image_size: (height, width) of the reference image; model: ``HeadProxy.describe()``.
    """

    betas: torch.Tensor
    static_offsets: torch.Tensor
    params: HeadParams
    camera: Dict[str, torch.Tensor]
    image_size: tuple
    model: dict
    name: str = ""
    embedding: Optional[torch.Tensor] = None

    def to_tensors(self, prefix: str = "") -> Dict[str, torch.Tensor]:
        out = {f"{prefix}betas": self.betas, f"{prefix}static_offsets": self.static_offsets}
        out.update({f"{prefix}params.{k}": v for k, v in self.params.as_dict().items()})
        out.update({f"{prefix}camera.{k}": v for k, v in self.camera.items()})
        if self.embedding is not None:
            out[f"{prefix}embedding"] = self.embedding
        return out

    @classmethod
    def from_tensors(cls, t: Dict[str, torch.Tensor], meta: Dict[str, str], prefix: str = "") -> "Identity":
        params = {k[len(prefix) + 7 :]: v for k, v in t.items() if k.startswith(prefix + "params.")}
        camera = {k[len(prefix) + 7 :]: v for k, v in t.items() if k.startswith(prefix + "camera.")}
        return cls(
            betas=t[prefix + "betas"],
            static_offsets=t[prefix + "static_offsets"],
            params=HeadParams.from_dict(params),
            camera=camera,
            image_size=tuple(json.loads(meta.get(prefix + "image_size", "[0, 0]"))),
            model=json.loads(meta.get("model", "{}")),
            name=meta.get(prefix + "name", ""),
            embedding=t.get(prefix + "embedding"),
        )


@dataclass
class Motion:
    """Per-frame motion of a driving clip (or a retargeted one).

    params: HeadParams with batch T; dynamic_offsets: [T, M, 3] on vertex ids
    dynamic_offsets_index [M] (or None); camera: dict of tensors; fps; lost_frames: frame indices
    bridged by interpolation; crops: [T, 3] or None; identity: the driving subject (or None).
    """

    params: HeadParams
    camera: Dict[str, torch.Tensor]
    fps: float
    model: dict
    image_size: tuple = (0, 0)
    dynamic_offsets: Optional[torch.Tensor] = None
    dynamic_offsets_index: Optional[torch.Tensor] = None
    lost_frames: List[int] = field(default_factory=list)
    crops: Optional[torch.Tensor] = None
    identity: Optional[Identity] = None
    name: str = ""

    @property
    def num_frames(self) -> int:
        return self.params.batch_size

    def dense_dynamic_offsets(self, num_vertices: int, frames=None) -> Optional[torch.Tensor]:
        """[T, N_s, 3] dynamic offsets scattered to all proxy vertices (zeros off the face)."""
        if self.dynamic_offsets is None:
            return None
        d = self.dynamic_offsets if frames is None else self.dynamic_offsets[frames]
        out = d.new_zeros(d.shape[0], num_vertices, 3)
        out[:, self.dynamic_offsets_index] = d
        return out


def _load(path: Path, kind: str) -> tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ExpPortraitError(f"File not found: '{path}'.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise ExpPortraitError(
            f"Cannot read '{path}' as a safetensors file ({type(exc).__name__}: {exc}); it may be truncated or not an ExpPortrait file."
        ) from exc
    if meta.get("kind") != kind:
        raise ExpPortraitError(f"'{path.name}' is not an {kind.split('.')[-1]} file (kind={meta.get('kind')!r}).")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExpPortraitError(
            f"'{path.name}' has format version {meta.get('format_version')!r}; this ExpPortrait reads version {FORMAT_VERSION}."
        )
    return tensors, meta


def check_model_compatible(file_model: dict, proxy_model: dict, path: str | Path = "") -> None:
    """Raise a clear error when a file was made for another SMPL-X model or proxy resolution."""
    problems = []
    for key in ("smplx_sha256", "num_vertices", "num_betas"):
        a, b = file_model.get(key), proxy_model.get(key)
        if a is not None and b is not None and a != b:
            problems.append(f"{key}: file {a!r} vs loaded proxy {b!r}")
    if problems:
        raise ExpPortraitError(
            f"'{Path(path).name}' was made for another head model ({'; '.join(problems)}). Load the SMPL-X file and "
            "subdivision it was made with, or fit it again."
        )


def save_identity(identity: Identity, path: str | Path) -> Path:
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": IDENTITY_KIND,
        "model": json.dumps(identity.model, sort_keys=True),
        "image_size": json.dumps(list(identity.image_size)),
        "name": identity.name,
    }
    return save_safetensors_atomic(identity.to_tensors(), path, meta)


def load_identity(path: str | Path, proxy_model: Optional[dict] = None) -> Identity:
    tensors, meta = _load(Path(path), IDENTITY_KIND)
    ident = Identity.from_tensors(tensors, meta)
    if proxy_model is not None:
        check_model_compatible(ident.model, proxy_model, path)
    return ident


def save_motion(motion: Motion, path: str | Path) -> Path:
    tensors = {f"params.{k}": v for k, v in motion.params.as_dict().items()}
    tensors.update({f"camera.{k}": v for k, v in motion.camera.items()})
    if motion.dynamic_offsets is not None:
        tensors["dynamic_offsets"] = motion.dynamic_offsets
        tensors["dynamic_offsets_index"] = motion.dynamic_offsets_index
    if motion.crops is not None:
        tensors["crops"] = motion.crops
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": MOTION_KIND,
        "model": json.dumps(motion.model, sort_keys=True),
        "fps": repr(float(motion.fps)),
        "lost_frames": json.dumps([int(i) for i in motion.lost_frames]),
        "image_size": json.dumps(list(motion.image_size)),
        "name": motion.name,
    }
    if motion.identity is not None:
        tensors.update(motion.identity.to_tensors("identity."))
        meta["identity.image_size"] = json.dumps(list(motion.identity.image_size))
        meta["identity.name"] = motion.identity.name
    return save_safetensors_atomic(tensors, path, meta)


def load_motion(path: str | Path, proxy_model: Optional[dict] = None) -> Motion:
    tensors, meta = _load(Path(path), MOTION_KIND)
    params = {k[7:]: v for k, v in tensors.items() if k.startswith("params.")}
    camera = {k[7:]: v for k, v in tensors.items() if k.startswith("camera.")}
    model = json.loads(meta.get("model", "{}"))
    if proxy_model is not None:
        check_model_compatible(model, proxy_model, path)
    identity = None
    if "identity.betas" in tensors:
        identity = Identity.from_tensors(tensors, meta, prefix="identity.")
    return Motion(
        params=HeadParams.from_dict(params),
        camera=camera,
        fps=float(meta.get("fps", "25")),
        model=model,
        image_size=tuple(json.loads(meta.get("image_size", "[0, 0]"))),
        dynamic_offsets=tensors.get("dynamic_offsets"),
        dynamic_offsets_index=tensors.get("dynamic_offsets_index"),
        lost_frames=json.loads(meta.get("lost_frames", "[]")),
        crops=tensors.get("crops"),
        identity=identity,
        name=meta.get("name", ""),
    )
