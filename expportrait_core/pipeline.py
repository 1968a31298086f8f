"""The headless main job: reference portrait + driving video → control video (→ generated video).

``python -m expportrait_core animate --reference IMG --driving VIDEO --out OUT.mp4`` runs the same
stages as the cross-reenactment workflow: face analysis → identity fit of the reference → tracking
of the driving clip → identity-adaptive expression transfer → normal-map control rendering →
(if a generator is given) DiT sampling. Without generator weights it writes the control video and
a side-by-side preview (reference | driving | control) and says so.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import ExpPortraitError

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parents[1]
DEMO_REFERENCE = PACK_ROOT / "assets" / "demo" / "reference.png"
DEMO_DRIVING = PACK_ROOT / "assets" / "demo" / "driving.mp4"


@dataclass
class AnimateResult:
    control_video: Path
    preview_video: Path
    generated_video: Optional[Path]
    num_frames: int
    fps: float
    seconds: dict = field(default_factory=dict)
    lost_frames: list = field(default_factory=list)
    identity: Any = None  # the reference's fitted (or loaded) Identity
    motion: Any = None  # the motion retargeted onto the reference (what the control video shows)
    driving_landmarks: Optional[np.ndarray] = None  # [T, 68, 2] detected on the driving frames (NaN where lost)


def side_by_side(reference: np.ndarray, driving: np.ndarray, control: np.ndarray, height: int = 256) -> np.ndarray:
    """One preview frame: reference | driving | control, each resized to ``height`` px high."""
    from PIL import Image

    tiles = []
    for im in (reference, driving, control):
        h, w = im.shape[:2]
        tiles.append(np.asarray(Image.fromarray(im).resize((max(1, round(w * height / h)), height), Image.BILINEAR)))
    return np.concatenate(tiles, 1)


def _check_output(out: Path) -> None:
    import os

    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExpPortraitError(f"Cannot create output folder '{parent}': {exc.strerror or exc}.") from exc
    if not os.access(parent, os.W_OK):
        raise ExpPortraitError(f"Output folder '{parent}' is not writable.")


def animate(reference: str | Path, driving: str | Path, out: str | Path, *, smplx: Optional[str] = None,
            identity_file: Optional[str] = None, generator: Optional[str] = None, device: str = "cpu",
            generator_base: Optional[str] = None, vae: Optional[str] = None, clip_vision: Optional[str] = None,
            face_backend: str = "auto", transfer_method: str = "auto", transfer_model: Optional[str] = None,
            max_frames: int = 0, steps: int = 30, cfg: float = 5.0, seed: int = 0) -> AnimateResult:
    """Run the whole pipeline; see the module docstring. Returns paths and timings."""
    import torch

    from .control import render_control
    from .face import load_face_analyzer
    from .fit import fit_identity
    from .head import load_head_proxy, synthetic_head_proxy
    from .io.files import load_identity
    from .io.video import iter_video_frames, prefetch, probe_video, read_image, write_video
    from .progress import TqdmProgress
    from .track import track_video
    from .transfer import transfer_motion

    out = Path(out)
    seconds: dict = {}
    t = time.perf_counter()
    ref_img = read_image(reference)
    info = probe_video(driving)
    if info.num_frames == 0:
        raise ExpPortraitError(f"Driving video '{driving}' has no frames.")
    _check_output(out)
    if smplx:
        proxy = load_head_proxy(smplx, device=device)
    else:
        log.warning("No SMPL-X file given (--smplx): using the synthetic stand-in head. Results are for trying the "
                    "pipeline; download SMPLX_NEUTRAL_2020.npz for real use.")
        proxy = synthetic_head_proxy(device=device)
    analyzer = load_face_analyzer(face_backend)
    seconds["load"] = time.perf_counter() - t

    t = time.perf_counter()
    if identity_file:
        identity = load_identity(identity_file, proxy.describe())
    else:
        with TqdmProgress("fit identity") as bar:
            identity = fit_identity(proxy, ref_img, analyzer=analyzer, progress=bar).identity
    seconds["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    frames = prefetch(iter_video_frames(driving, max_frames), depth=8)
    with TqdmProgress("track driving video") as bar:
        tracked = track_video(proxy, frames, analyzer, fps=info.fps, progress=bar)
    motion = tracked.motion
    seconds["track"] = time.perf_counter() - t
    if motion.lost_frames:
        log.warning("No face in %d driving frame(s) %s: bridged by interpolation.", len(motion.lost_frames), motion.lost_frames[:20])

    t = time.perf_counter()
    model = None
    if transfer_model:
        from .transfer import load_transfer_model

        model = load_transfer_model(transfer_model)
    with TqdmProgress("transfer") as bar:
        retargeted = transfer_motion(proxy, identity, motion, method=transfer_method, model=model, progress=bar)
    seconds["transfer"] = time.perf_counter() - t

    t = time.perf_counter()
    with TqdmProgress("render control") as bar:
        control, _ = render_control(proxy, identity, retargeted, progress=bar)
    seconds["render"] = time.perf_counter() - t
    control_path = out.with_name(out.stem + "_control.mp4")
    write_video(control_path, control, info.fps)

    preview = []
    for i, drv in enumerate(iter_video_frames(driving, max_frames)):
        preview.append(side_by_side(ref_img, drv, control[min(i, len(control) - 1)]))
    preview_path = out.with_name(out.stem + "_preview.mp4")
    write_video(preview_path, preview, info.fps)

    generated = None
    if generator:
        t = time.perf_counter()
        from .generator import load_generator

        gen = load_generator(generator, base=generator_base, vae=vae, clip_vision=clip_vision, device=device)
        ref_normal, _ = render_control(proxy, identity, None)  # the paper's reference normal map N^R
        with TqdmProgress("sample") as bar:
            video = gen.sample(ref_img, control, reference_normal=ref_normal[0], steps=steps, cfg=cfg, seed=seed,
                               progress=bar)
        arr = video.cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
        write_video(out, arr, info.fps)
        generated = out
        seconds["generate"] = time.perf_counter() - t
    else:
        write_video(out, control, info.fps)
        print("No generator was given (--generator): wrote the normal-map control video. Put a generator checkpoint in "
              "models/expportrait/generator (see README, 'Generator') to synthesize the portrait video.")
    return AnimateResult(control_video=control_path, preview_video=preview_path, generated_video=generated,
                         num_frames=len(control), fps=info.fps, seconds={k: round(v, 2) for k, v in seconds.items()},
                         lost_frames=list(motion.lost_frames), identity=identity, motion=retargeted,
                         driving_landmarks=np.asarray(tracked.detected))


def _run(args: argparse.Namespace) -> int:
    if args.demo:
        reference, driving = args.reference or DEMO_REFERENCE, args.driving or DEMO_DRIVING
    else:
        if not args.reference or not args.driving:
            raise ExpPortraitError("animate needs --reference IMG and --driving VIDEO (or --demo).")
        reference, driving = args.reference, args.driving
    for p, what in ((reference, "reference image"), (driving, "driving video")):
        if not Path(p).is_file():
            raise ExpPortraitError(f"The {what} '{p}' does not exist.")
    res = animate(reference, driving, args.out, smplx=args.smplx, identity_file=args.identity, generator=args.generator,
                  generator_base=args.base_model, vae=args.vae, clip_vision=args.clip_vision,
                  device=args.device, face_backend=args.face_backend, transfer_method=args.transfer,
                  transfer_model=args.transfer_model, max_frames=args.max_frames, steps=args.steps, cfg=args.cfg, seed=args.seed)
    print(f"wrote {args.out} ({res.num_frames} frames at {res.fps:g} fps), {res.control_video}, {res.preview_video}; "
          f"seconds per stage: {res.seconds}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("animate", help="reference portrait + driving video → control video (→ portrait video)")
    p.add_argument("--reference", help="reference portrait image")
    p.add_argument("--driving", help="driving video")
    p.add_argument("--out", default="output/animate.mp4", help="output MP4 (…_control.mp4 and …_preview.mp4 beside it)")
    p.add_argument("--demo", action="store_true", help="use the bundled real demo inputs (assets/demo)")
    p.add_argument("--smplx", help="SMPL-X model file (SMPLX_NEUTRAL_2020.npz); default: the synthetic stand-in")
    p.add_argument("--identity", help="a saved identity (.safetensors) instead of fitting the reference")
    p.add_argument("--generator", help="generator checkpoint (diffusers folder or .safetensors)")
    p.add_argument("--base-model", help="Wan 2.1 transformer the generator bundle was trained on (diffusion_models/)")
    p.add_argument("--vae", help="Wan 2.1 VAE (vae/wan_2.1_vae.safetensors) when the bundle has none")
    p.add_argument("--clip-vision", help="CLIP vision model (clip_vision/clip_vision_h.safetensors)")
    p.add_argument("--transfer", default="auto", choices=["auto", "learned", "deformation", "copy"])
    p.add_argument("--transfer-model", help="learned transfer module weights (.safetensors)")
    p.add_argument("--face-backend", default="auto", choices=["auto", "dlib", "insightface"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-frames", type=int, default=0, help="only the first N driving frames (0 = all)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)
