"""The only place where node modules touch ComfyUI.

Everything here degrades gracefully outside ComfyUI (tests, CLI): ``folder_paths`` falls back to
``expportrait_core.paths``; the progress callback falls back to a no-op. Node modules import
from here, never from ``comfy`` directly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List

import numpy as np
import torch

from expportrait_core.errors import ExpPortraitError, InterruptedByUser, MissingModelError
from expportrait_core.grad import autograd_enabled
from expportrait_core.io.atomic import atomic_path
from expportrait_core.paths import COMFY_CORE_FOLDERS, MODEL_FOLDERS, model_folder
from expportrait_core.progress import ProgressFn

CATEGORY = "ExpPortrait"

try:  # inside ComfyUI
    import folder_paths  # type: ignore

    IN_COMFY = True
except Exception:  # pragma: no cover - depends on the host
    folder_paths = None
    IN_COMFY = False


def register_model_folders() -> None:
    """Register this pack's model folders with ComfyUI (so extra_model_paths.yaml works)."""
    if folder_paths is None:
        return
    exts = {".npz", ".pkl", ".safetensors", ".json", ".onnx", ".pt", ".bin"}
    for key, sub in MODEL_FOLDERS.items():
        if key in COMFY_CORE_FOLDERS:
            continue
        path = os.path.join(folder_paths.models_dir, sub)
        if key in getattr(folder_paths, "folder_names_and_paths", {}):
            paths, old_exts = folder_paths.folder_names_and_paths[key]
            if path not in paths:
                paths.append(path)
            folder_paths.folder_names_and_paths[key] = (paths, set(old_exts) | exts)
        else:
            folder_paths.folder_names_and_paths[key] = ([path], exts)


DEMO_INPUTS = {"reference.png": "expportrait_demo_reference.png", "driving.mp4": "expportrait_demo_driving.mp4"}


def install_demo_inputs() -> None:
    """Copy the bundled demo footage into ComfyUI's input folder (once) so shipped workflows run as-is."""
    if folder_paths is None:
        return
    import shutil

    src_dir = Path(__file__).resolve().parents[1] / "assets" / "demo"
    try:
        dst_dir = Path(folder_paths.get_input_directory())
        for src, dst in DEMO_INPUTS.items():
            if (src_dir / src).is_file() and not (dst_dir / dst).exists():
                with atomic_path(dst_dir / dst) as tmp:
                    shutil.copyfile(src_dir / src, tmp)
    except (OSError, ExpPortraitError):
        pass  # a read-only input folder must not break loading the pack


def list_models(key: str) -> List[str]:
    """File names available for a model folder key (ComfyUI's list, or the CLI folder)."""
    if folder_paths is not None:
        try:
            return sorted(folder_paths.get_filename_list(key))
        except Exception:
            return []
    folder = model_folder(key)
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def folder_for(key: str) -> str:
    """The (first) folder a user should put files of this kind in, for error messages."""
    if folder_paths is not None:
        try:
            return folder_paths.get_folder_paths(key)[0]
        except Exception:
            pass
    return str(model_folder(key))


def resolve_model(key: str, name: str, what: str, source: str = "") -> Path:
    """Full path of model file ``name`` in folder ``key``; a clear error when it is missing."""
    if not name:
        raise MissingModelError(what, folder_for(key), "<a file>", source)
    if os.path.isabs(name) and os.path.isfile(name):
        return Path(name)
    if folder_paths is not None:
        full = folder_paths.get_full_path(key, name)
        if full and os.path.isfile(full):
            return Path(full)
    else:
        p = model_folder(key) / name
        if p.is_file():
            return p
    raise MissingModelError(what, folder_for(key), name, source)


def output_dir() -> Path:
    """ComfyUI's output directory (or ./output outside ComfyUI)."""
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    p = Path("output")
    p.mkdir(exist_ok=True)
    return p


def comfy_progress(total: int) -> ProgressFn:
    """A core ``ProgressFn`` driving ComfyUI's progress bar; raises when the user pressed Cancel.

    ``comfy.model_management.throw_exception_if_processing_interrupted`` raises ComfyUI's own
    interruption exception, which the executor handles as a cancel, not a failure.
    """
    try:
        import comfy.model_management as mm  # type: ignore
        import comfy.utils  # type: ignore

        bar = comfy.utils.ProgressBar(total)
    except Exception:
        mm = None
        bar = None

    def _progress(i: int, n: int, preview: Any = None) -> None:
        if mm is not None:
            mm.throw_exception_if_processing_interrupted()
        if bar is not None:
            bar.update_absolute(i, n)

    return _progress


def allow_autograd(cls: type) -> type:
    """Run the node's FUNCTION outside ComfyUI's ``torch.inference_mode()`` with grad enabled.

    Fitting and detail tracking optimize with autograd, and every tensor a pack node creates (head
    proxy buffers, identities, motions) must be an ordinary tensor so that later nodes can use it in
    autograd; tensors created in inference mode cannot be. Applied once to every pack node class.
    """
    name = getattr(cls, "FUNCTION", None)
    fn = getattr(cls, name, None) if name else None
    if fn is None or getattr(fn, "_expportrait_autograd", False):
        return cls
    wrapped = autograd_enabled(fn)
    wrapped._expportrait_autograd = True  # type: ignore[attr-defined]
    setattr(cls, name, wrapped)
    return cls


def image_to_numpy(image: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE ``[B, H, W, C]`` float 0..1 → uint8 ``[B, H, W, 3]`` RGB (alpha dropped, gray expanded)."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ValueError(f"expected an IMAGE tensor [B, H, W, C], got shape {tuple(image.shape)}")
    arr = image.detach().cpu().float().clamp(0, 1).numpy()
    c = arr.shape[-1]
    if c == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif c == 4:
        arr = arr[..., :3]
    elif c != 3:
        raise ValueError(f"IMAGE must have 1, 3 or 4 channels, got {c}")
    return (arr * 255.0 + 0.5).astype(np.uint8)


def numpy_to_image(frames: np.ndarray) -> torch.Tensor:
    """uint8 or float ``[B, H, W, 3]`` (or ``[H, W, 3]``) → ComfyUI IMAGE float 0..1."""
    if frames.ndim == 3:
        frames = frames[None]
    t = torch.from_numpy(np.ascontiguousarray(frames))
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    return t.float().clamp(0, 1)


__all__ = [
    "CATEGORY",
    "allow_autograd",
    "IN_COMFY",
    "InterruptedByUser",
    "comfy_progress",
    "folder_for",
    "install_demo_inputs",
    "image_to_numpy",
    "list_models",
    "numpy_to_image",
    "output_dir",
    "register_model_folders",
    "resolve_model",
]
