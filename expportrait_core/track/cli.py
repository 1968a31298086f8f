"""``python -m expportrait_core track --video VIDEO --out MOTION.safetensors [--smplx FILE]
[--mode fast|detail]``: track a driving video and save the motion (streamed from the file)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _normal_source(path: str):
    """Normal maps for detail mode: a video file (one frame per driving frame) or a folder of images."""
    from ..errors import ExpPortraitError
    from ..io.video import iter_video_frames, read_image

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise ExpPortraitError(f"No images in the normal-map folder '{p}'.")
        return (read_image(f) for f in files)
    return iter_video_frames(p)


def run_track(args: argparse.Namespace) -> int:
    from ..face import load_face_analyzer
    from ..head import load_head_proxy, synthetic_head_proxy
    from ..io.files import load_identity, save_motion
    from ..progress import TqdmProgress
    from .config import TrackConfig
    from .pipeline import track_video_file

    if args.smplx:
        proxy = load_head_proxy(args.smplx)
    else:
        log.warning("No --smplx file given: tracking with the SYNTHETIC demo head (not SMPL-X). Results are only a demo; "
                    "pass --smplx SMPLX_NEUTRAL_2020.npz for real use.")
        proxy = synthetic_head_proxy()
    cfg = TrackConfig(mode=args.mode, smoothing=args.smoothing, smoothing_strength=args.smoothing_strength,
                      one_euro=args.one_euro)
    identity = load_identity(args.identity, proxy.describe()) if args.identity else None
    normals = _normal_source(args.normals) if args.normals else None
    analyzer = load_face_analyzer(args.face_backend)
    with TqdmProgress("track") as bar:
        result = track_video_file(proxy, args.video, analyzer, config=cfg, normal_maps=normals, identity=identity,
                                  progress=bar, max_frames=args.max_frames)
    result.motion.name = Path(args.out).stem
    out = save_motion(result.motion, args.out)
    if args.preview:
        from ..io.video import iter_video_frames, write_video
        from .preview import overlay_preview

        frames = overlay_preview(iter_video_frames(args.video, args.max_frames), result, proxy, max_side=512)
        write_video(args.preview, frames, result.motion.fps)
    T = result.num_frames
    summary = {
        "frames": T,
        "lost_frames": result.lost_frames,
        "fps_end_to_end": round(T / max(result.stage_seconds.get("total", 1e-9), 1e-9), 1),
        "median_reprojection_px": float(round(float(_nanmedian(result.reprojection_error)), 3)),
        "jitter": result.jitter,
        "stage_seconds": {k: round(v, 3) for k, v in result.stage_seconds.items()},
    }
    print(f"wrote {out}")
    print(json.dumps(summary, indent=1))
    return 0


def _nanmedian(a):
    import numpy as np

    a = np.asarray(a, np.float64)
    return np.nanmedian(a) if np.isfinite(a).any() else float("nan")


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="track a driving video (pose, jaw, expression per frame) and save a motion file")
    p.add_argument("--video", required=True, help="driving video (any format PyAV reads)")
    p.add_argument("--out", required=True, help="output motion file (.safetensors)")
    p.add_argument("--smplx", default="", help="SMPLX_NEUTRAL_2020.npz (default: the synthetic demo head, with a warning)")
    p.add_argument("--mode", choices=["fast", "detail"], default="fast",
                   help="fast: landmarks only (real time); detail: + dynamic offsets from --normals")
    p.add_argument("--normals", default="", help="detail mode: normal maps of the driving frames (a video or a folder of images)")
    p.add_argument("--identity", default="", help="driving identity file (default: fitted on keyframes of the clip)")
    p.add_argument("--smoothing", choices=["offline", "causal", "none"], default="offline", help="temporal smoother")
    p.add_argument("--smoothing-strength", type=float, default=1.0, help="multiplies all temporal weights")
    p.add_argument("--one-euro", action="store_true", help="add a causal One-Euro filter on the output parameters")
    p.add_argument("--face-backend", default="auto", help="face analyzer backend: auto, dlib or insightface")
    p.add_argument("--max-frames", type=int, default=0, help="track only the first N frames (0 = all)")
    p.add_argument("--preview", default="", help="also write an overlay preview video (.mp4)")
    p.set_defaults(func=run_track)
