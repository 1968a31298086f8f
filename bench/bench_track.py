"""Driving-video tracking benchmark (figures recorded in bench/RESULTS.md, "## Tracking").

    python bench/bench_track.py                 # everything (about 3 minutes on the 2-core CPU)
    python bench/bench_track.py --skip-memory   # without the 1,000 / 3,000-frame memory runs

1. Fast path end to end at 512² (the real driving clip upscaled from 480², decoded from the file
   and resized on the fly): frames per second with a per-stage breakdown, with and without the
   per-clip identity fit.
2. Jitter on the real clip: the tracked result versus the independent per-frame fits (the same
   solver with no temporal terms), RMS acceleration of projected face vertices (px) and of the
   head rotation (deg).
3. Detail path: frames per second of the dynamic-offset fit, with normal maps rendered from the
   fast-path result standing in for a normal estimator's output.
4. Peak memory (max RSS) when tracking 1,000 and 3,000 frames streamed from the file (the clip
   looped), each in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLIP = ROOT.parent / "shared" / "testdata" / "driving_expressions_480.mp4"
SIZE = 512


def frames_512(path, loops: int = 1, limit: int = 0, depth: int = 8):
    """Decode the clip (looped) and resize each frame to 512² on the fly, on a background thread
    ``depth`` frames ahead (as ``track_video_file`` does; ``depth=0``: inline)."""
    import cv2

    from expportrait_core.io.video import iter_video_frames, prefetch

    def decode():
        n = 0
        for _ in range(loops):
            for f in iter_video_frames(path):
                yield cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
                n += 1
                if limit and n >= limit:
                    return

    return prefetch(decode(), depth)


def load(smplx: str):
    from expportrait_core.face import load_face_analyzer
    from expportrait_core.head import load_head_proxy, synthetic_head_proxy

    proxy = load_head_proxy(smplx) if smplx else synthetic_head_proxy()
    return proxy, load_face_analyzer("dlib")


def memory_child(n: int, smplx: str) -> None:
    """Track n frames (looped clip) and print the peak RSS in MiB as JSON."""
    from expportrait_core.track import TrackConfig, track_video

    proxy, analyzer = load(smplx)
    loops = n // 216 + 1
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    res = track_video(proxy, frames_512(CLIP, loops, n), analyzer, fps=30.0, config=TrackConfig())
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": res.num_frames, "peak_rss_mib": rss, "rss_before_mib": rss0, "seconds": dt,
                      "lost": len(res.lost_frames)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smplx", default="", help="SMPL-X file (default: the synthetic head)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--detail-frames", type=int, default=32)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.smplx)
        return

    import numpy as np
    import torch

    from expportrait_core.control import camera_from_dict
    from expportrait_core.render import render_normals
    from expportrait_core.track import TrackConfig, mouth_gap, pearson, track_video
    from expportrait_core.track.metrics import inter_ocular

    proxy, analyzer = load(args.smplx)
    print(f"CPU threads: torch {torch.get_num_threads()}, os {os.cpu_count()}; load average {os.getloadavg()}")

    # 1) fast path, end to end at 512²: decoding inline, then on a background thread (the default)
    t = time.perf_counter()
    r0 = track_video(proxy, frames_512(CLIP, depth=0), analyzer, fps=30.0, num_frames=216)
    wall0 = time.perf_counter() - t
    print(f"\n[fast path 512², decode inline] {r0.num_frames} frames in {wall0:.2f} s wall: {r0.num_frames / wall0:.1f} fps incl. "
          f"identity fit; {r0.num_frames / (wall0 - r0.stage_seconds.get('identity', 0)):.1f} fps excluding it")
    del r0
    t = time.perf_counter()
    res = track_video(proxy, frames_512(CLIP), analyzer, fps=30.0, num_frames=216)
    wall = time.perf_counter() - t
    T = res.num_frames
    st, cpu = res.stage_seconds, res.stage_cpu_seconds
    per_frame = {k: 1000 * v / T for k, v in st.items() if k not in ("identity", "total")}
    per_cpu = {k: 1000 * v / T for k, v in cpu.items() if k not in ("identity", "total")}
    cpu_track = sum(per_cpu.values())
    print(f"\n[fast path 512², decode prefetched] {T} frames in {wall:.2f} s wall: {T / wall:.1f} fps end to end incl. identity fit; "
          f"{T / (wall - st.get('identity', 0)):.1f} fps excluding the one-time identity fit ({st.get('identity', 0):.2f} s wall, "
          f"{cpu.get('identity', 0):.2f} s CPU, {res.identity_info.get('method')})")
    print("  per-frame wall ms: " + ", ".join(f"{k} {v:.2f}" for k, v in per_frame.items()))
    print("  per-frame CPU ms (this thread; what a stage costs on an idle core): "
          + ", ".join(f"{k} {v:.2f}" for k, v in per_cpu.items())
          + f"; total {cpu_track:.2f} ms = {1000 / cpu_track:.0f} fps of CPU")
    iod = inter_ocular(res.detected)
    print(f"  median reprojection {np.nanmedian(res.reprojection_error):.2f} px = {np.nanmedian(res.reprojection_error / iod):.3f} IOD; "
          f"jaw-vs-mouth-gap r = {pearson(res.motion.params.jaw_pose[:, 0].numpy(), mouth_gap(res.detected)):.3f}; "
          f"lost {len(res.lost_frames)}; detector runs {res.identity_info.get('detections')}")

    # 2) jitter on the real clip
    j, jr = res.jitter, res.jitter_raw
    print(f"\n[jitter, real clip] tracked {j['accel_px']:.3f} px / {j['accel_deg']:.3f} deg; independent per-frame fit "
          f"{jr['accel_px']:.3f} px / {jr['accel_deg']:.3f} deg (ratio {j['accel_px'] / jr['accel_px']:.2f} / "
          f"{j['accel_deg'] / max(jr['accel_deg'], 1e-9):.2f})")
    for sm in ("causal",):
        rc = track_video(proxy, frames_512(CLIP), analyzer, fps=30.0, identity=res.motion.identity,
                         config=TrackConfig(smoothing=sm))
        print(f"  {sm}: {rc.jitter['accel_px']:.3f} px / {rc.jitter['accel_deg']:.3f} deg, "
              f"{rc.num_frames / rc.stage_seconds['total']:.1f} fps wall")

    # 3) detail path
    n = args.detail_frames
    frames = list(frames_512(CLIP, 1, n))
    cam = camera_from_dict(res.motion.camera, SIZE, SIZE)
    normals = []
    with torch.no_grad():
        for s in range(0, n, 8):
            e = min(n, s + 8)
            v = proxy(res.motion.params.index(slice(s, e)), res.motion.identity.static_offsets).vertices
            normals.append(render_normals(v, proxy.faces, cam.batch(e - s)).normal_rgb.numpy())
    normals = np.concatenate(normals)
    cfg = TrackConfig(mode="detail")
    t = time.perf_counter()
    rd = track_video(proxy, frames, analyzer, fps=30.0, identity=res.motion.identity, normal_maps=list(normals), config=cfg)
    wall = time.perf_counter() - t
    print(f"\n[detail path 512²] {n} frames in {wall:.2f} s: {n / wall:.2f} fps end to end; detail stage "
          f"{1000 * rd.stage_seconds.get('detail', 0) / n:.0f} ms/frame wall, {1000 * rd.stage_cpu_seconds.get('detail', 0) / n:.0f} ms CPU ({cfg.detail_iters} Adam steps at "
          f"{cfg.detail_resolution}², batch {cfg.detail_batch}); offsets on {rd.motion.dynamic_offsets.shape[1]} vertices, "
          f"mean |Δ| {1000 * rd.motion.dynamic_offsets.norm(dim=-1).mean():.2f} mm")

    # 4) memory, 1,000 vs 3,000 frames, fresh processes
    if not args.skip_memory:
        out = {}
        for n in (1000, 3000):
            cmd = [sys.executable, __file__, "--memory-child", str(n)] + (["--smplx", args.smplx] if args.smplx else [])
            r = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[n] = json.loads(r.stdout.strip().splitlines()[-1])
        a, b = out[1000]["peak_rss_mib"], out[3000]["peak_rss_mib"]
        print(f"\n[memory] peak RSS 1,000 frames {a:.0f} MiB ({out[1000]['seconds']:.0f} s), 3,000 frames {b:.0f} MiB "
              f"({out[3000]['seconds']:.0f} s): +{100 * (b - a) / a:.1f} %")


if __name__ == "__main__":
    main()
