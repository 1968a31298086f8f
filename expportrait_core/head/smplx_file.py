"""Safe reading of SMPL-X model files.

``smplx`` itself opens ``.npz`` files with ``allow_pickle=True`` and ``.pkl`` files with
``pickle.load``; an ``.npz`` from the internet may carry pickled entries (name tables) that would
run code when unpickled. We read only the numeric arrays the model needs with
``allow_pickle=False`` and never touch the rest. ``.pkl`` files are read only when the caller opts
in (``allow_pickle_file=True``), with a warning.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict

import numpy as np

from ..errors import ExpPortraitError, MissingModelError
from ..paths import SMPLX_SOURCE

log = logging.getLogger(__name__)

# Arrays (and their expected trailing shapes) that the head proxy needs from an SMPL-X file.
REQUIRED_ARRAYS = {
    "v_template": ("V", 3),
    "f": ("F", 3),
    "shapedirs": ("V", 3, None),
    "posedirs": ("V", 3, None),
    "J_regressor": (55, "V"),
    "kintree_table": (2, 55),
    "weights": ("V", 55),
    "lmk_faces_idx": (51,),
    "lmk_bary_coords": (51, 3),
    "dynamic_lmk_faces_idx": (79, 17),
    "dynamic_lmk_bary_coords": (79, 17, 3),
}
OPTIONAL_ARRAYS = ("expportrait_synthetic", "expportrait_seed")

_HASH_CACHE: Dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (cached by path, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _check_shapes(arrays: Dict[str, np.ndarray], path: Path) -> None:
    V = arrays["v_template"].shape[0]
    F = arrays["f"].shape[0]
    dims = {"V": V, "F": F}
    for name, spec in REQUIRED_ARRAYS.items():
        shape = arrays[name].shape
        ok = len(shape) == len(spec) and all(
            s is None or (dims[s] if isinstance(s, str) else s) == d for s, d in zip(spec, shape)
        )
        if not ok:
            raise ExpPortraitError(
                f"SMPL-X file '{path}' has array '{name}' of shape {shape}, expected {spec} "
                f"(V={V}, F={F}). Is this an SMPL-X 2020 model (SMPLX_NEUTRAL_2020.npz)?"
            )
    if arrays["shapedirs"].shape[-1] < 300 + 10:
        raise ExpPortraitError(
            f"SMPL-X file '{path}' has only {arrays['shapedirs'].shape[-1]} shape+expression directions; "
            "ExpPortrait needs the 2020 release with 300 shape and up to 100 expression directions "
            "(SMPLX_NEUTRAL_2020.npz)."
        )


def load_smplx_arrays(path: str | Path, allow_pickle_file: bool = False) -> Dict[str, np.ndarray]:
    """Read the numeric arrays of an SMPL-X model file without unpickling anything.

    Returns a dict with the keys of :data:`REQUIRED_ARRAYS` (plus the synthetic-model markers when
    present). ``.pkl`` files are refused unless ``allow_pickle_file`` is set.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingModelError("SMPL-X model", str(path.parent), path.name, SMPLX_SOURCE)
    arrays: Dict[str, np.ndarray] = {}
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in REQUIRED_ARRAYS if k not in data.files]
                if missing:
                    raise ExpPortraitError(
                        f"SMPL-X file '{path}' lacks arrays {missing}; download SMPLX_NEUTRAL_2020.npz from {SMPLX_SOURCE}."
                    )
                for k in list(REQUIRED_ARRAYS) + [k for k in OPTIONAL_ARRAYS if k in data.files]:
                    try:
                        arrays[k] = np.asarray(data[k])
                    except ValueError as exc:  # an object array: would need unpickling
                        raise ExpPortraitError(
                            f"SMPL-X file '{path}': array '{k}' is a pickled object; refusing to unpickle it."
                        ) from exc
        except ExpPortraitError:
            raise
        except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError...
            raise ExpPortraitError(
                f"Cannot read SMPL-X file '{path}' ({type(exc).__name__}: {exc}); the file may be truncated. "
                f"Download it again from {SMPLX_SOURCE}."
            ) from exc
    elif path.suffix == ".pkl":
        if not allow_pickle_file:
            raise ExpPortraitError(
                f"'{path.name}' is a pickle file, which can run code when loaded. Use the .npz release "
                "(SMPLX_NEUTRAL_2020.npz), or enable 'allow_pickle' if you trust this file."
            )
        import pickle

        log.warning("Loading pickled SMPL-X file %s because allow_pickle was enabled.", path)
        try:
            with open(path, "rb") as fh:
                raw = pickle.load(fh, encoding="latin1")
        except ModuleNotFoundError as exc:
            raise ExpPortraitError(
                f"'{path.name}' needs the '{exc.name}' package to unpickle; use the .npz release instead."
            ) from exc
        for k in REQUIRED_ARRAYS:
            if k not in raw:
                raise ExpPortraitError(f"SMPL-X pickle '{path}' lacks '{k}'.")
            v = raw[k]
            arrays[k] = np.asarray(v.toarray() if hasattr(v, "toarray") else v)
    else:
        raise ExpPortraitError(f"Unknown SMPL-X file type '{path.suffix}' for '{path}'; expected .npz.")
    _check_shapes(arrays, path)
    return arrays


def is_synthetic(arrays: Dict[str, np.ndarray]) -> bool:
    return "expportrait_synthetic" in arrays
