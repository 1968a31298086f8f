"""Face-analysis speed on this machine: ms per 512x512 frame, per backend.

Measures, on real frames (the 480x480 driving clip of ``/work/shared/testdata`` upscaled to 512²,
or the reference portrait padded to 512² when the clip is missing):

* ``detect``: detection + 68 landmarks (``FaceAnalyzer.detect``), what every frame costs with
  ``redetect_every=0``;
* ``track``: landmarks in a known box only (``landmarks_in_box``), the cost of in-between frames
  with ``redetect_every > 0``;
* ``embed``: one identity embedding.

The insightface backend needs a model pack (``--insightface-root``, the folder holding
``models/<pack>/``); without one it is timed on generated tiny graphs with the pack's I/O
signatures, which measures only our pre/post-processing (letterbox, anchor decoding, NMS, warps),
not the networks.

Usage: ``python bench/bench_face.py [--frames 30] [--cnn-frames 3] [--insightface-root DIR]``
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from expportrait_core.face import load_face_analyzer  # noqa: E402

TESTDATA = Path(os.environ.get("EXPPORTRAIT_TESTDATA", "/work/shared/testdata"))


def load_frames(n: int) -> list:
    import cv2

    clip = TESTDATA / "driving_expressions_480.mp4"
    if clip.is_file():
        import av

        with av.open(str(clip)) as c:
            frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0))]
        return [cv2.resize(f, (512, 512), interpolation=cv2.INTER_LINEAR) for f in frames]
    from PIL import Image

    ref = np.asarray(Image.open(TESTDATA / "reference_glasses_512x480.png").convert("RGB"))
    img = np.zeros((512, 512, 3), np.uint8)
    img[16:496] = ref
    return [img] * n


def time_backend(an, frames, label: str) -> dict:
    an.detect(frames[0], with_embedding=True)  # warm-up (lazy loads, first-run allocations)
    det, trk, emb = [], [], []
    for f in frames:
        t0 = time.perf_counter()
        faces = an.detect(f, max_faces=1)
        det.append((time.perf_counter() - t0) * 1e3)
        if not faces:
            continue
        t0 = time.perf_counter()
        an.landmarks_in_box(f, faces[0].box, faces[0].score)
        trk.append((time.perf_counter() - t0) * 1e3)
        if len(emb) < 5:
            t0 = time.perf_counter()
            an.embed(f, faces[0])
            emb.append((time.perf_counter() - t0) * 1e3)
    med = lambda v: statistics.median(v) if v else float("nan")
    return {"backend": label, "frames": len(frames), "found": len(trk), "detect_ms": med(det),
            "track_ms": med(trk), "embed_ms": med(emb)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--cnn-frames", type=int, default=3)
    ap.add_argument("--insightface-root", default=None)
    ap.add_argument("--pack", default="buffalo_l")
    ap.add_argument("--jitter-frames", type=int, default=90, help="clip frames for the crop-jitter figure (0: skip)")
    args = ap.parse_args()

    frames = load_frames(max(args.frames, args.cnn_frames))
    rows = []
    if args.frames > 0:
        rows.append(time_backend(load_face_analyzer("dlib", dlib_detector="hog"), frames[: args.frames], "dlib-hog"))
    if args.cnn_frames > 0:
        rows.append(time_backend(load_face_analyzer("dlib", dlib_detector="cnn"), frames[: args.cnn_frames], "dlib-cnn"))
    if args.frames <= 0:
        pass
    elif args.insightface_root:
        an = load_face_analyzer("insightface", model_pack=args.pack, models_dir=args.insightface_root)
        rows.append(time_backend(an, frames[: args.frames], f"insightface:{args.pack} ({','.join(an.providers)})"))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        try:
            from test_face import make_pack  # the generated graphs of the tests

            with tempfile.TemporaryDirectory() as d:
                make_pack(Path(d) / "models" / "buffalo_l", analytic=True)
                an = load_face_analyzer("insightface", models_dir=d, providers=["cpu"])
                # the tiny detector fires on bright cells, not faces: time it on a frame it detects in
                rows.append(time_backend(an, frames[: args.frames], "insightface tiny graphs (overhead only)"))
        except Exception as e:  # pytest/onnx missing: skip this row
            print(f"(insightface overhead not measured: {e})")

    # crop stability on the real clip: RMS frame-to-frame motion of the crop centre, raw vs smoothed
    jitter = None
    clip_frames = load_frames(args.jitter_frames) if args.jitter_frames > 0 else []
    if clip_frames:
        from expportrait_core.face import smooth_boxes, track_faces_in_video

        vf = track_faces_in_video(load_face_analyzer("dlib"), clip_frames, on_missing="interpolate")
        raw = vf.landmark_boxes
        sm = smooth_boxes(raw)
        def rms_diff(b, order):
            c = (b[:, :2] + b[:, 2:]) / 2
            return float(np.sqrt(np.mean(np.sum(np.diff(c, n=order, axis=0) ** 2, axis=1))))

        jitter = (len(clip_frames), rms_diff(raw, 1), rms_diff(sm, 1), rms_diff(raw, 2), rms_diff(sm, 2),
                  float(np.median(raw[:, 2] - raw[:, 0])))

    print(f"# face analysis, 512x512 frames, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, numpy {np.__version__}")
    print("| backend | frames (found) | detect + 68 landmarks, ms | landmarks in a known box, ms | embedding, ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['frames']} ({r['found']}) | {r['detect_ms']:.1f} | {r['track_ms']:.1f} | {r['embed_ms']:.1f} |")
    if jitter:
        n, v_raw, v_sm, a_raw, a_sm, side = jitter
        print(f"\ncrop centre on {n} real clip frames (dlib landmark boxes, face ~{side:.0f} px, the head moves): "
              f"RMS frame-to-frame motion {v_raw:.2f} px raw / {v_sm:.2f} px smoothed; RMS acceleration (jitter) "
              f"{a_raw:.2f} / {a_sm:.2f} px ({a_raw / max(a_sm, 1e-9):.1f}x less)")


if __name__ == "__main__":
    main()
