"""Expression editor: pose a portrait or edit a motion with named, interpretable controls.

Controls (:func:`available_controls` lists them for a proxy):

- ``jaw_open`` — degrees of jaw opening (``jaw_pose`` about +x; the result is clamped at 0).
- ``head_pitch``, ``head_yaw``, ``head_roll`` — degrees: pitch > 0 looks up, yaw > 0 turns the face
  towards the subject's left (+x), roll > 0 tilts the head towards the subject's left shoulder.
  Applied to neck and head (split evenly, the project's convention).
- ``gaze_yaw``, ``gaze_pitch`` — degrees, both eyes (same sign conventions as the head).
- ``eyelid_close``, ``eyelid_close_left``, ``eyelid_close_right`` — 0 (as is) … 1 (closed): an
  expression-space direction that moves the upper-lid landmarks onto the lower-lid ones with the
  rest of the face held still (solved per proxy; on the synthetic head its named blink
  directions are used), scaled so that 1 closes the lids of the neutral face.
- ``expr_00`` … ``expr_99`` — raw expression coefficients (on SMPL-X the leading ones are its
  main expression components); on the synthetic head also its named directions
  (``smile``, ``brow_raise``, ...).

Modes: ``offset`` adds the values to every frame; ``constant`` sets the channel to the value in
every frame; ``keyframes`` interpolates per-frame offsets between ``(frame, values)`` keyframes
(a control missing from a keyframe holds its neighbours' interpolation; before the first / after
the last keyframe the values are held). Presets save/load as JSON or ``.safetensors``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import ExpPortraitError
from ..io.atomic import write_json_atomic
from ..head.params import HeadParams
from .rotations import aa_to_matrix, matrix_to_aa

PRESET_KIND = "expportrait.expression_preset"
PRESET_VERSION = "1"
MODES = ("offset", "constant", "keyframes")
POSE_CONTROLS = {
    "jaw_open": "jaw opening, degrees",
    "head_pitch": "head pitch, degrees (> 0 looks up)",
    "head_yaw": "head yaw, degrees (> 0 turns to the subject's left)",
    "head_roll": "head roll, degrees (> 0 tilts to the subject's left shoulder)",
    "gaze_yaw": "eye gaze yaw, degrees (> 0 to the subject's left)",
    "gaze_pitch": "eye gaze pitch, degrees (> 0 up)",
    "eyelid_close": "both eyelids, 0 open … 1 closed",
    "eyelid_close_left": "left eyelid (subject's left), 0 … 1",
    "eyelid_close_right": "right eyelid (subject's right), 0 … 1",
}
# iBUG-68 eyelid landmarks: (upper, lower) pairs of the subject's right (image-left) and left eye
_LIDS = {"right": ((37, 41), (38, 40)), "left": ((43, 47), (44, 46))}


@dataclass
class ExpressionEdit:
    """An edit: ``values`` {control: value} for ``offset``/``constant``; ``keyframes`` a list of
    ``(frame, {control: value})`` for ``keyframes``; ``interpolation`` linear | smooth (smoothstep)."""

    values: Dict[str, float] = field(default_factory=dict)
    mode: str = "offset"
    keyframes: List[Tuple[int, Dict[str, float]]] = field(default_factory=list)
    interpolation: str = "smooth"
    name: str = ""

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ExpPortraitError(f"Edit mode must be one of {MODES}, got '{self.mode}'.")
        if self.interpolation not in ("linear", "smooth"):
            raise ExpPortraitError(f"interpolation must be 'linear' or 'smooth', got '{self.interpolation}'.")
        if self.mode == "keyframes" and not self.keyframes:
            raise ExpPortraitError("Edit mode 'keyframes' needs at least one keyframe.")
        for f, vals in self.keyframes:
            if int(f) < 0:
                raise ExpPortraitError(f"Keyframe index {f} is negative.")
            for k, v in vals.items():
                if not math.isfinite(float(v)):
                    raise ExpPortraitError(f"Keyframe {f}: control '{k}' is not a finite number.")
        for k, v in self.values.items():
            if not math.isfinite(float(v)):
                raise ExpPortraitError(f"Control '{k}' is not a finite number.")

    def controls(self) -> List[str]:
        names = set(self.values)
        for _, vals in self.keyframes:
            names.update(vals)
        return sorted(names)

    def to_dict(self) -> dict:
        return {"kind": PRESET_KIND, "format_version": PRESET_VERSION, "name": self.name, "mode": self.mode,
                "interpolation": self.interpolation, "values": {k: float(v) for k, v in self.values.items()},
                "keyframes": [[int(f), {k: float(v) for k, v in vals.items()}] for f, vals in self.keyframes]}

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> "ExpressionEdit":
        if d.get("kind", PRESET_KIND) != PRESET_KIND:
            raise ExpPortraitError(f"'{source}' is not an expression preset (kind={d.get('kind')!r}).")
        try:
            kf = [(int(f), {str(k): float(v) for k, v in vals.items()}) for f, vals in d.get("keyframes", [])]
            e = cls(values={str(k): float(v) for k, v in d.get("values", {}).items()}, mode=str(d.get("mode", "offset")),
                    keyframes=kf, interpolation=str(d.get("interpolation", "smooth")), name=str(d.get("name", "")))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ExpPortraitError(f"'{source}' is not a valid expression preset ({exc}).") from exc
        e.validate()
        return e


def parse_controls(text: str) -> Dict[str, float]:
    """``"smile=0.8, brow_raise=0.5"`` (commas, semicolons or spaces) → {name: value}."""
    out: Dict[str, float] = {}
    for tok in text.replace(";", ",").replace("\n", ",").replace(" ", ",").split(","):
        tok = tok.strip()
        if not tok:
            continue
        if "=" not in tok:
            raise ExpPortraitError(f"Cannot read control '{tok}': write name=value, e.g. 'smile=0.8'.")
        k, v = tok.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError as exc:
            raise ExpPortraitError(f"Control '{k.strip()}' has a value that is not a number: '{v}'.") from exc
    return out


def parse_keyframes(text: str) -> List[Tuple[int, Dict[str, float]]]:
    """``"0: jaw_open=0; 15: jaw_open=20 smile=1 | 30: jaw_open=0"`` (keyframes separated by ``|``
    or new lines) or a JSON list ``[[0, {"jaw_open": 0}], ...]`` → keyframes."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            return [(int(f), {str(k): float(v) for k, v in vals.items()}) for f, vals in json.loads(text)]
        except (ValueError, TypeError, AttributeError) as exc:
            raise ExpPortraitError(f"Keyframes JSON is not a list of [frame, {{control: value}}] ({exc}).") from exc
    out = []
    for part in text.replace("\n", "|").split("|"):
        part = part.strip()
        if not part:
            continue
        if ":" not in part:
            raise ExpPortraitError(f"Keyframe '{part}' lacks 'frame:'; write e.g. '15: jaw_open=20 smile=1'.")
        f, rest = part.split(":", 1)
        try:
            frame = int(f.strip())
        except ValueError as exc:
            raise ExpPortraitError(f"Keyframe frame '{f.strip()}' is not an integer.") from exc
        out.append((frame, parse_controls(rest)))
    return sorted(out, key=lambda kv: kv[0])


# ---------------------------------------------------------------------------------------------
class EditorRig:
    """Per-proxy control directions (expression-space eyelid directions and their scales)."""

    def __init__(self, proxy) -> None:
        self.proxy = proxy
        self.names: Dict[str, int] = {}
        if getattr(proxy, "synthetic", False):
            from ..head.synthetic import SYNTHETIC_EXPRESSION_NAMES

            self.names = {k: v for k, v in SYNTHETIC_EXPRESSION_NAMES.items() if v < proxy.num_expression}
        self.lid_dirs: Dict[str, torch.Tensor] = {}
        if proxy.num_expression > 0:
            self._solve_lids()

    def _lid_jacobian(self):
        rig = self.proxy.landmark_rig(self.proxy.zero_params(1).betas)
        ns = rig.num_static  # static landmarks are iBUG 17..67
        basis = rig.expr_basis[:ns].double()  # [51, 3, E]
        pts = rig.points0[:ns].double()
        return pts, basis

    def _solve_lids(self) -> None:
        pts, basis = self._lid_jacobian()
        E = basis.shape[-1]
        for side in ("left", "right"):
            named = self.names.get(f"blink_{side}")
            pairs = _LIDS[side]
            gap = lambda p: torch.stack([p[u - 17] - p[lo - 17] for u, lo in pairs])  # noqa: E731
            g0 = gap(pts)  # [2, 3] upper − lower at rest
            if named is not None:
                d = torch.zeros(E, dtype=torch.float64)
                d[named] = 1.0
            else:
                # upper lids move onto the lower ones, every other landmark stays (ridge-regularized LS)
                target = torch.zeros_like(pts)
                for (u, _lo), gi in zip(pairs, g0):
                    target[u - 17] = -gi
                A = basis.reshape(-1, E)
                lam = 1e-3 * torch.trace(A.T @ A) / E
                d = torch.linalg.solve(A.T @ A + lam * torch.eye(E, dtype=A.dtype), A.T @ target.reshape(-1))
            rate = gap(torch.einsum("pce,e->pc", basis, d))  # gap change per unit of d
            # scale so that value 1 closes the vertical gap of the neutral face
            closing = -(rate[:, 1] * g0[:, 1]).sum() / (rate[:, 1] ** 2).sum().clamp_min(1e-18)
            self.lid_dirs[side] = (d * closing).float()

    def control_names(self) -> Dict[str, str]:
        out = dict(POSE_CONTROLS)
        if self.proxy.num_expression == 0:
            for k in ("eyelid_close", "eyelid_close_left", "eyelid_close_right"):
                out.pop(k)
        for k in range(self.proxy.num_expression):
            out[f"expr_{k:02d}"] = f"expression coefficient {k}"
        for name, k in self.names.items():
            out[name] = f"synthetic named direction (coefficient {k})"
        return out


_RIGS: Dict[int, EditorRig] = {}


def editor_rig(proxy) -> EditorRig:
    key = id(proxy)
    rig = _RIGS.get(key)
    if rig is None or rig.proxy is not proxy:
        _RIGS.clear()
        rig = _RIGS[key] = EditorRig(proxy)
    return rig


def available_controls(proxy) -> Dict[str, str]:
    """{control name: description} for this proxy."""
    return editor_rig(proxy).control_names()


# ---------------------------------------------------------------------------------------------
def _euler_to_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """User angles (radians, [T]) → [T, 3, 3] = R_z(roll) R_y(yaw) R_x(−pitch) (see module docstring)."""
    z = torch.zeros_like(pitch)
    rx = aa_to_matrix(torch.stack([-pitch, z, z], -1))
    ry = aa_to_matrix(torch.stack([z, yaw, z], -1))
    rz = aa_to_matrix(torch.stack([z, z, -roll], -1))
    return rz @ ry @ rx


def _matrix_to_euler(R: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`_euler_to_matrix` (yaw in (−90°, 90°))."""
    # R = Rz(-roll) Ry(yaw) Rx(-pitch): R[2,0] = -sin(yaw), R[2,1] = cos(yaw) sin(-pitch), R[1,0] = sin(-roll) cos(yaw)
    yaw = torch.asin((-R[:, 2, 0]).clamp(-1, 1))
    pitch = -torch.atan2(R[:, 2, 1], R[:, 2, 2])
    roll = -torch.atan2(R[:, 1, 0], R[:, 0, 0])
    return pitch, yaw, roll


def _frame_values(edit: ExpressionEdit, T: int) -> Dict[str, torch.Tensor]:
    """{control: [T] values} of the edit for T frames."""
    if edit.mode != "keyframes":
        return {k: torch.full((T,), float(v), dtype=torch.float64) for k, v in edit.values.items()}
    kfs = sorted(edit.keyframes, key=lambda kv: kv[0])
    out = {}
    t = np.arange(T, dtype=np.float64)
    for name in edit.controls():
        pts = [(f, vals[name]) for f, vals in kfs if name in vals]
        xs = np.array([p[0] for p in pts], dtype=np.float64)
        ys = np.array([p[1] for p in pts], dtype=np.float64)
        if edit.interpolation == "linear" or len(xs) == 1:
            vals = np.interp(t, xs, ys)
        else:
            j = np.clip(np.searchsorted(xs, t, side="right") - 1, 0, len(xs) - 2)
            span = np.maximum(xs[j + 1] - xs[j], 1e-9)
            u = np.clip((t - xs[j]) / span, 0.0, 1.0)
            u = u * u * (3 - 2 * u)
            vals = ys[j] + (ys[j + 1] - ys[j]) * u
        out[name] = torch.tensor(vals)
    return out


def apply_edit(proxy, params: HeadParams, edit: ExpressionEdit) -> HeadParams:
    """Edited copy of ``params`` (batch T); see the module docstring for controls and modes."""
    edit.validate()
    rig = editor_rig(proxy)
    known = rig.control_names()
    unknown = [k for k in edit.controls() if k not in known]
    if unknown:
        raise ExpPortraitError(f"Unknown control(s) {unknown}; available: {', '.join(sorted(known))}.")
    T = params.batch_size
    p = params.expand(T)
    vals = _frame_values(edit, T)
    set_mode = edit.mode == "constant"
    dt = p.expression.dtype
    expr = p.expression.clone()
    jaw, le, re = p.jaw_pose.clone(), p.leye_pose.clone(), p.reye_pose.clone()
    neck, head = p.neck_pose.clone(), p.head_pose.clone()
    rad = lambda k: torch.deg2rad(vals[k]).to(dt)  # noqa: E731

    for name, v in vals.items():
        k = rig.names.get(name)
        if k is None and name.startswith("expr_"):
            k = int(name[5:])
        if k is not None:
            if k >= expr.shape[1]:
                raise ExpPortraitError(f"Control '{name}' addresses coefficient {k} but the motion has {expr.shape[1]}.")
            expr[:, k] = v.to(dt) if set_mode else expr[:, k] + v.to(dt)
    if "jaw_open" in vals:
        jaw[:, 0] = rad("jaw_open") if set_mode else jaw[:, 0] + rad("jaw_open")
    jaw[:, 0] = jaw[:, 0].clamp_min(0.0)
    for side, keys in (("left", ("eyelid_close", "eyelid_close_left")), ("right", ("eyelid_close", "eyelid_close_right"))):
        d = rig.lid_dirs.get(side)
        if d is None:
            continue
        amount = sum((vals[k] for k in keys if k in vals), torch.zeros(T, dtype=torch.float64))
        if any(k in vals for k in keys):
            ed = d.to(dt)[: expr.shape[1]]
            if set_mode:
                # closure measured along the direction: replace the current component along it
                cur = (expr[:, : len(ed)] @ ed) / (ed @ ed)
                expr[:, : len(ed)] += (amount.to(dt) - cur)[:, None] * ed[None]
            else:
                expr[:, : len(ed)] += amount.to(dt)[:, None] * ed[None]
    if "gaze_yaw" in vals or "gaze_pitch" in vals:
        for eye in (le, re):
            if "gaze_pitch" in vals:
                eye[:, 0] = -rad("gaze_pitch") if set_mode else eye[:, 0] - rad("gaze_pitch")
            if "gaze_yaw" in vals:
                eye[:, 1] = rad("gaze_yaw") if set_mode else eye[:, 1] + rad("gaze_yaw")
    head_keys = [k for k in ("head_pitch", "head_yaw", "head_roll") if k in vals]
    if head_keys:
        R = aa_to_matrix(neck) @ aa_to_matrix(head)
        zero = torch.zeros(T, dtype=dt)
        if set_mode:
            pitch, yaw, roll = _matrix_to_euler(R)
            pitch = rad("head_pitch") if "head_pitch" in vals else pitch
            yaw = rad("head_yaw") if "head_yaw" in vals else yaw
            roll = rad("head_roll") if "head_roll" in vals else roll
            R = _euler_to_matrix(pitch, yaw, roll)
        else:
            g = lambda k: rad(k) if k in vals else zero  # noqa: E731
            R = _euler_to_matrix(g("head_pitch"), g("head_yaw"), g("head_roll")) @ R
        half = matrix_to_aa(R) / 2
        neck, head = half, half.clone()
    return p.replace(expression=expr, jaw_pose=jaw, leye_pose=le, reye_pose=re, neck_pose=neck, head_pose=head)


def edit_motion(proxy, target, edit: ExpressionEdit, *, num_frames: Optional[int] = None, fps: float = 25.0):
    """Apply ``edit`` to a Motion (every frame) or an Identity (its pose; ``num_frames`` > 1 or
    keyframes make a motion of the identity). Returns ``(motion, identity)``: the edited motion
    (``identity`` attached; dynamic offsets kept) and the identity with its pose set to the first
    edited frame."""
    from ..io.files import Identity, Motion

    if isinstance(target, Motion):
        params = apply_edit(proxy, target.params, edit)
        motion = Motion(params=params, camera={k: v.clone() for k, v in target.camera.items()}, fps=target.fps, model=target.model,
                        image_size=tuple(target.image_size), dynamic_offsets=target.dynamic_offsets,
                        dynamic_offsets_index=target.dynamic_offsets_index, lost_frames=list(target.lost_frames),
                        crops=target.crops, identity=target.identity, name=(target.name or "motion") + "_edited")
        ident = target.identity
        if ident is not None:
            ident = _identity_with(ident, params.index(slice(0, 1)))
        return motion, ident
    if not isinstance(target, Identity):
        raise ExpPortraitError("The expression editor needs an identity or a motion to edit.")
    T = int(num_frames or 0)
    if T <= 0:
        T = (max(f for f, _ in edit.keyframes) + 1) if edit.mode == "keyframes" and edit.keyframes else 1
    base = target.params.expand(1)
    base = HeadParams(**{k: v.expand(T, -1).clone() for k, v in base.as_dict().items()})
    params = apply_edit(proxy, base, edit)
    motion = Motion(params=params, camera={k: v.clone() for k, v in target.camera.items()}, fps=float(fps), model=target.model,
                    image_size=tuple(target.image_size), identity=target, name=(target.name or "identity") + "_edited")
    return motion, _identity_with(target, params.index(slice(0, 1)))


def _identity_with(identity, params: HeadParams):
    from ..io.files import Identity

    return Identity(betas=identity.betas, static_offsets=identity.static_offsets,
                    params=params.replace(betas=identity.betas.clone()), camera={k: v.clone() for k, v in identity.camera.items()},
                    image_size=tuple(identity.image_size), model=identity.model, name=identity.name,
                    embedding=identity.embedding)


# ---------------------------------------------------------------------------------------------
def save_preset(edit: ExpressionEdit, path: Union[str, Path]) -> Path:
    """Write a preset as ``.json`` or ``.safetensors`` (by suffix; atomic)."""
    edit.validate()
    path = Path(path)
    d = edit.to_dict()
    if path.suffix.lower() == ".json":
        return write_json_atomic(path, d, indent=1, sort_keys=True)
    if path.suffix.lower() != ".safetensors":
        raise ExpPortraitError(f"Preset files end in .json or .safetensors, got '{path.name}'.")
    from ..io.atomic import save_safetensors_atomic

    names = edit.controls()
    vals = torch.tensor([edit.values.get(k, float("nan")) for k in names], dtype=torch.float64)
    frames = torch.tensor([int(f) for f, _ in edit.keyframes], dtype=torch.int64)
    kv = torch.tensor([[vals_.get(k, float("nan")) for k in names] for _, vals_ in edit.keyframes],
                      dtype=torch.float64).reshape(len(edit.keyframes), len(names))
    meta = {"kind": PRESET_KIND, "format_version": PRESET_VERSION, "name": edit.name, "mode": edit.mode,
            "interpolation": edit.interpolation, "controls": json.dumps(names)}
    return save_safetensors_atomic({"values": vals, "keyframe_frames": frames, "keyframe_values": kv}, path, meta)


def load_preset(path: Union[str, Path]) -> ExpressionEdit:
    """Read a preset written by :func:`save_preset` (JSON is parsed as data only)."""
    path = Path(path)
    if not path.is_file():
        raise ExpPortraitError(f"Preset file not found: '{path}'.")
    if path.suffix.lower() == ".json":
        try:
            d = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ExpPortraitError(f"'{path.name}' is not valid JSON ({exc}).") from exc
        if not isinstance(d, dict):
            raise ExpPortraitError(f"'{path.name}' is not an expression preset.")
        return ExpressionEdit.from_dict(d, path.name)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            t = {k: fh.get_tensor(k) for k in fh.keys()}
        names = json.loads(meta.get("controls", "[]"))
        values = {k: float(v) for k, v in zip(names, t["values"].tolist()) if not math.isnan(v)}
        kfs = [(int(f), {k: float(v) for k, v in zip(names, row) if not math.isnan(v)})
               for f, row in zip(t["keyframe_frames"].tolist(), t["keyframe_values"].tolist())]
    except ExpPortraitError:
        raise
    except Exception as exc:
        raise ExpPortraitError(f"Cannot read preset '{path.name}' ({type(exc).__name__}: {exc}).") from exc
    return ExpressionEdit.from_dict({"kind": meta.get("kind"), "name": meta.get("name", ""), "mode": meta.get("mode"),
                                     "interpolation": meta.get("interpolation", "smooth"), "values": values,
                                     "keyframes": kfs}, path.name)


# ---------------------------------------------------------------------------------------------
def build_edit(values: Dict[str, float], mode: str = "offset", *, more: str = "", keyframes: str = "",
               preset: Optional[ExpressionEdit] = None, interpolation: str = "smooth") -> ExpressionEdit:
    """Combine a preset (optional), slider ``values`` (zeros ignored), a ``more`` text of
    ``name=value`` pairs and a ``keyframes`` text (:func:`parse_keyframes`) into one edit.
    Later sources override earlier ones per control; a non-empty keyframes text replaces the
    preset's keyframes; ``mode`` always applies."""
    vals: Dict[str, float] = dict(preset.values) if preset is not None else {}
    vals.update({k: float(v) for k, v in values.items() if float(v) != 0.0})
    vals.update(parse_controls(more))
    kfs = parse_keyframes(keyframes) if keyframes.strip() else (list(preset.keyframes) if preset is not None else [])
    if mode == "keyframes" and not kfs and vals:
        kfs = [(0, dict(vals))]  # a single keyframe = the slider values held over the clip
    edit = ExpressionEdit(values=vals, mode=mode, keyframes=kfs,
                          interpolation=preset.interpolation if preset is not None else interpolation,
                          name=preset.name if preset is not None else "")
    edit.validate()
    return edit


def template_identity(proxy, image_size=(512, 512)):
    """The proxy's template head (zero shape, no static offsets) framed as a portrait: lets the
    editor pose a head without any fitted identity."""
    from ..head.framing import portrait_camera_params
    from ..io.files import Identity

    params = proxy.zero_params(1)
    with torch.no_grad():
        lm = proxy(params).landmarks[0].cpu()
    h, w = int(image_size[0]), int(image_size[1])
    cam = portrait_camera_params(lm.mean(0), float((lm[:, 1].max() - lm[:, 1].min()) * 1.9), w, h)
    return Identity(betas=params.betas.cpu().clone(), static_offsets=torch.zeros(proxy.num_vertices, 3), params=params.to("cpu"),
                    camera=cam, image_size=(h, w), model=proxy.describe(), name="template")


def preview_frames(proxy, motion, identity=None, size: int = 256, max_frames: int = 4) -> np.ndarray:
    """Normal-map previews (uint8 [K, H, W, 3], K ≤ max_frames evenly spaced frames) of a motion
    on an identity, rendered with the identity's camera rescaled so the longer side is ``size``."""
    from ..control import render_control
    from ..io.files import Motion

    T = motion.num_frames
    k = max(1, min(int(max_frames), T))
    sel = sorted(set(np.linspace(0, T - 1, k).round().astype(int).tolist()))
    dyn = None
    if motion.dynamic_offsets is not None:
        dyn = motion.dynamic_offsets[sel]
    sub = Motion(params=motion.params.index(torch.tensor(sel)), camera=motion.camera, fps=motion.fps, model=motion.model,
                 image_size=motion.image_size, dynamic_offsets=dyn, dynamic_offsets_index=motion.dynamic_offsets_index,
                 identity=motion.identity)
    ident = identity if identity is not None else motion.identity
    h0, w0 = (ident.image_size if ident is not None else motion.image_size) or (512, 512)
    h0, w0 = int(h0) or 512, int(w0) or 512
    scale = size / max(h0, w0)
    frames, _ = render_control(proxy, ident, sub, width=max(8, round(w0 * scale)), height=max(8, round(h0 * scale)))
    return frames
