"""Where model files live, without importing ComfyUI.

Folder names follow ComfyUI's ``models/`` layout. Inside ComfyUI the nodes resolve files through
``folder_paths`` (so ``extra_model_paths.yaml`` works); the CLI uses ``--models-dir`` or the
``EXPPORTRAIT_MODELS_DIR`` environment variable, defaulting to ``./models``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

# ComfyUI folder keys (``folder_paths`` names) used by this pack, with the sub-path inside
# ``ComfyUI/models``.
MODEL_FOLDERS = {
    "smplx": "smplx",
    "expportrait_identities": "expportrait/identities",
    "expportrait_motions": "expportrait/motions",
    "expportrait_transfer": "expportrait/transfer",
    "expportrait_generator": "expportrait/generator",
    "expportrait_presets": "expportrait/presets",
    "insightface": "insightface",
    # ComfyUI's own folders, used by the generator (never re-registered by this pack)
    "diffusion_models": "diffusion_models",
    "vae": "vae",
    "clip_vision": "clip_vision",
}
COMFY_CORE_FOLDERS = ("diffusion_models", "vae", "clip_vision")

SMPLX_SOURCE = "https://smpl-x.is.tue.mpg.de (free registration; download 'SMPL-X 2020', file SMPLX_NEUTRAL_2020.npz)"


def models_root(override: Optional[str] = None) -> Path:
    """The ``models`` directory for CLI use: argument, ``EXPPORTRAIT_MODELS_DIR``, or ``./models``."""
    return Path(override or os.environ.get("EXPPORTRAIT_MODELS_DIR") or "models").expanduser()


def model_folder(key: str, root: Optional[str] = None) -> Path:
    """Folder for a model kind (a key of :data:`MODEL_FOLDERS`) under :func:`models_root`."""
    return models_root(root) / MODEL_FOLDERS[key]


def cache_dir() -> Path:
    """A per-user cache folder for generated assets (the synthetic head model)."""
    base = os.environ.get("EXPPORTRAIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "expportrait"
    )
    p = Path(base)
    p.mkdir(parents=True, exist_ok=True)
    return p
