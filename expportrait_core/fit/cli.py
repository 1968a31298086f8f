"""``python -m expportrait_core fit --image IMG --out ID.safetensors [--smplx FILE] [--normal IMG]
[--depth IMG] [--mask IMG]``: fit an identity from a portrait and save it."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    from ..errors import ExpPortraitError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ExpPortraitError(f"Cannot read image '{path}' ({exc}).") from exc


def _read_gray(path: str) -> np.ndarray:
    from PIL import Image

    from ..errors import ExpPortraitError

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("I;16") if im.mode.startswith("I") else im.convert("L"), dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise ExpPortraitError(f"Cannot read image '{path}' ({exc}).") from exc
    return a / max(float(a.max()), 1.0)


def run_fit(args: argparse.Namespace) -> int:
    from ..face import load_face_analyzer
    from ..head import load_head_proxy, synthetic_head_proxy
    from ..io.files import save_identity
    from ..progress import TqdmProgress
    from .config import FitConfig
    from .core import fit_identity

    if args.smplx:
        proxy = load_head_proxy(args.smplx)
    else:
        log.warning("No --smplx file given: fitting the SYNTHETIC demo head (not SMPL-X). Results are only a demo; "
                    "pass --smplx SMPLX_NEUTRAL_2020.npz for real use.")
        proxy = synthetic_head_proxy()
    image = _read_rgb(args.image)
    normal = None if not args.normal else _read_rgb(args.normal).astype(np.float32) / 255.0
    depth = None if not args.depth else _read_gray(args.depth)
    mask = None if not args.mask else _read_gray(args.mask)
    cfg = FitConfig.preset(args.quality, fov_y_deg=args.fov, fit_static_offsets=not args.no_offsets, seed=args.seed)
    analyzer = load_face_analyzer(args.face_backend)
    with TqdmProgress("fit") as bar:
        result = fit_identity(proxy, image, analyzer=analyzer, normal_map=normal, depth=depth, mask=mask, config=cfg,
                              progress=bar)
    result.identity.name = Path(args.out).stem
    out = save_identity(result.identity, args.out)
    if args.preview:
        from PIL import Image

        Image.fromarray(result.preview).save(args.preview)
    for w in result.warnings:
        log.warning("%s", w)
    print(f"wrote {out}: landmark error {result.landmark_error_px:.2f} px, stages (s) {result.stage_seconds}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit a personalized identity (SMPL-X shape + static offsets) to a portrait")
    p.add_argument("--image", required=True, help="reference portrait (RGB)")
    p.add_argument("--out", required=True, help="output identity file (.safetensors)")
    p.add_argument("--smplx", default="", help="SMPLX_NEUTRAL_2020.npz (default: the synthetic demo head, with a warning)")
    p.add_argument("--normal", default="", help="normal map of the portrait (rgb = 0.5*n + 0.5, x right, y up, z to viewer)")
    p.add_argument("--depth", default="", help="relative depth or disparity map (grayscale; scale/shift are aligned)")
    p.add_argument("--mask", default="", help="person mask (grayscale, white = person)")
    p.add_argument("--preview", default="", help="write the preview PNG (fitted normals over the photo) here")
    p.add_argument("--quality", default="balanced", choices=["fast", "balanced", "best"])
    p.add_argument("--fov", type=float, default=14.0, help="vertical field of view of the photo in degrees")
    p.add_argument("--face-backend", default="auto", help="face analyzer backend (auto, dlib, insightface)")
    p.add_argument("--no-offsets", action="store_true", help="skip the dense static offsets")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_fit)
