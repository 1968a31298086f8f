"""Choosing and loading a face-analysis backend."""
from __future__ import annotations

import importlib.util
import logging
from typing import List, Optional

from ..errors import ExpPortraitError, MissingModelError
from ..paths import model_folder
from .types import FaceAnalyzer

log = logging.getLogger(__name__)

BACKENDS = ("auto", "insightface", "dlib")


def default_insightface_root() -> str:
    """``<models>/insightface`` of :mod:`expportrait_core.paths` (CLI default)."""
    return str(model_folder("insightface"))


def available_backends(model_pack: str = "buffalo_l", models_dir: Optional[str] = None) -> List[str]:
    """Backends usable here without loading anything (cheap checks of modules and files)."""
    from .insightface_backend import find_pack_dir

    out = []
    if importlib.util.find_spec("onnxruntime") is not None and find_pack_dir(
        model_pack, models_dir or default_insightface_root()
    ):
        out.append("insightface")
    if importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None:
        out.append("dlib")
    return out


def load_face_analyzer(
    backend: str = "auto",
    model_pack: str = "buffalo_l",
    models_dir: Optional[str] = None,
    providers: Optional[List[str]] = None,
    dlib_detector: str = "hog",
    **options,
) -> FaceAnalyzer:
    """Load a face analyzer.

    backend: ``"insightface"`` (ONNX pack via onnxruntime), ``"dlib"`` (offline default) or
        ``"auto"`` (insightface when the pack's files are present, else dlib).
    model_pack: insightface pack name (``buffalo_l``, ``antelopev2``...) or a folder path.
    models_dir: the insightface root holding ``models/<pack>/`` (``ComfyUI/models/insightface``);
        defaults to ``<models>/insightface`` (``EXPPORTRAIT_MODELS_DIR`` or ``./models``).
    providers: onnxruntime providers (``None``/``["auto"]``: CUDA when available, then CPU).
    dlib_detector: ``"hog"`` or ``"cnn"`` for the dlib backend.
    options: extra settings, ``insightface_config=InsightFaceConfig(...)`` or ``dlib_config=DlibConfig(...)``.

    Nothing is ever downloaded: a missing pack raises :class:`MissingModelError` naming the folder
    and the files expected.
    """
    backend = (backend or "auto").lower()
    if backend not in BACKENDS:
        raise ExpPortraitError(f"Unknown face backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    root = models_dir or default_insightface_root()
    if backend in ("insightface", "auto"):
        from .insightface_backend import InsightFaceAnalyzer, KNOWN_PACKS, PACK_SOURCE, expected_pack_folder, find_pack_dir

        pack_dir = find_pack_dir(model_pack, root)
        if pack_dir is not None:
            try:
                return InsightFaceAnalyzer(
                    str(pack_dir), providers=providers, config=options.get("insightface_config"),
                    pack_name=model_pack if "/" not in model_pack else None,
                )
            except ExpPortraitError as e:
                if backend == "insightface":
                    raise
                log.warning("insightface pack '%s' found but unusable (%s); falling back to dlib", model_pack, e)
        elif backend == "insightface":
            raise MissingModelError(
                f"insightface model pack '{model_pack}'",
                expected_pack_folder(model_pack, root),
                ", ".join(KNOWN_PACKS.get(model_pack, KNOWN_PACKS["buffalo_l"])),
                PACK_SOURCE,
            )
    from .dlib_backend import DlibConfig, DlibFaceAnalyzer

    cfg = options.get("dlib_config") or DlibConfig(detector=dlib_detector)
    try:
        return DlibFaceAnalyzer(cfg, models_dir=options.get("dlib_models_dir"))
    except ExpPortraitError as e:
        if backend == "auto":
            raise ExpPortraitError(
                f"No face backend is usable: no insightface pack '{model_pack}' in "
                f"'{expected_pack_folder(model_pack, root)}', and dlib failed: {e}"
            ) from e
        raise


__all__ = ["BACKENDS", "available_backends", "default_insightface_root", "load_face_analyzer"]
