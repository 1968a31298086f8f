"""The no-download demo of the head proxy: animate the synthetic head and render normal maps.

``python -m expportrait_core demo --out output/demo_head.mp4`` builds the project's synthetic
SMPL-X-format model (not SMPL-X; see ``head/synthetic.py``), animates jaw, expression, eyes and
head pose over ~50 frames, renders the personalized proxy as normal maps and writes the MP4 plus
a contact-sheet PNG.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def demo_motion(proxy, num_frames: int = 50):
    """Smooth synthetic trajectories: jaw opening, a smile, brow raise, blinks, head turns.

    Returns HeadParams with batch ``num_frames``."""
    from .head.synthetic import SYNTHETIC_EXPRESSION_NAMES as names

    p = proxy.zero_params(num_frames)
    t = torch.linspace(0, 1, num_frames)
    p.jaw_pose[:, 0] = 0.25 * torch.sin(math.pi * 2 * t).clamp(min=0)
    e = p.expression
    if proxy.synthetic:
        e[:, names["smile"]] = 1.5 * torch.sin(math.pi * t) ** 2
        e[:, names["brow_raise"]] = 1.5 * torch.sin(math.pi * 3 * t).clamp(min=0)
        for k in ("blink_left", "blink_right"):
            e[:, names[k]] = torch.exp(-((t - 0.7) ** 2) / 0.002)
    else:  # real SMPL-X: leading components
        e[:, 0] = 1.5 * torch.sin(math.pi * t)
        e[:, 1] = 1.0 * torch.sin(math.pi * 3 * t)
    p.head_pose[:, 1] = math.radians(25) * torch.sin(math.pi * 2 * t)
    p.neck_pose[:, 0] = math.radians(8) * torch.sin(math.pi * 4 * t)
    p.head_pose[:, 2] = math.radians(6) * torch.sin(math.pi * 2 * t + 1)
    return p


def run_demo(out: str | Path, num_frames: int = 50, size: int = 512, fps: float = 25.0) -> dict:
    from .head import synthetic_head_proxy
    from .head.framing import portrait_camera_params
    from .control import render_motion_normals
    from .io.video import contact_sheet, write_image, write_video
    from .progress import TqdmProgress

    t0 = time.perf_counter()
    proxy = synthetic_head_proxy()
    t_load = time.perf_counter() - t0
    params = demo_motion(proxy, num_frames)
    with torch.no_grad():
        rest = proxy(proxy.zero_params(1))
    lm = rest.landmarks[0]
    center = lm.mean(0)
    head_h = float((lm[:, 1].max() - lm[:, 1].min()) * 1.9)
    camera = portrait_camera_params(center, head_h, size, size)
    t1 = time.perf_counter()
    with TqdmProgress("render") as bar:
        frames, _ = render_motion_normals(proxy, params, camera, size, size, progress=bar)
    t_render = time.perf_counter() - t1
    out = Path(out)
    write_video(out, frames, fps)
    sheet_path = out.with_name(out.stem + "_sheet.png")
    write_image(sheet_path, contact_sheet(frames, columns=10, max_tiles=20))
    info = {
        "video": str(out), "contact_sheet": str(sheet_path), "frames": num_frames,
        "vertices": proxy.num_vertices, "faces": int(proxy.faces.shape[0]),
        "load_s": round(t_load, 2), "render_ms_per_frame": round(1000 * t_render / num_frames, 1),
    }
    log.info("demo: %s", info)
    print(f"wrote {out} and {sheet_path} ({num_frames} frames, {proxy.num_vertices} vertices, "
          f"{info['render_ms_per_frame']} ms/frame render)")
    return info


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="animate the synthetic head proxy and write a normal-map video (no downloads)")
    p.add_argument("--out", default="output/demo_head.mp4", help="output MP4 path (a _sheet.png is written beside it)")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--fps", type=float, default=25.0)
    p.set_defaults(func=lambda a: (run_demo(a.out, a.frames, a.size, a.fps), 0)[1])
