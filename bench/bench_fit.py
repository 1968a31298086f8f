"""Benchmark of the identity fit: seconds per identity at 512² (per stage) and accuracy figures.

    python bench/bench_fit.py [--size 512] [--quality balanced] [--smplx FILE] [--repeats 1] [--compare-threads]

Case: the synthetic head (or an SMPL-X file) rendered with known shape, expression, pose and a
smooth static-offset field (5 mm bumps on the cheeks, forehead and left temple); inputs are its
exact landmark projections + 1 px noise and its normal/depth/mask renders at ``--size`` (the
case of tests/test_fit.py). Prints per-stage seconds, the mean head vertex error (mm and % of
head width, each in its camera frame after the unobservable scale about the camera centre), the
landmark error vs the exact projections and the static-offset cosine on the visible head, for
landmarks only and with the dense terms, a smiling reference, 1 vs 2 torch threads; with
``--repeats N`` also whether the N runs gave bit-identical offsets. Then real portraits (dlib,
landmarks only) when available: the insightface sample ``t1.jpg`` and the bundled
``reference_glasses_512x480.png`` (``../shared/testdata``), each without and with the
landmark-driven static offsets, with the landmark error per group (% of the inter-ocular distance).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--quality", default="balanced", choices=["fast", "balanced", "best"])
    ap.add_argument("--smplx", default="")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--compare-threads", action="store_true", help="also run the dense fit with 2 torch threads (slow here)")
    args = ap.parse_args()

    import test_fit as T

    from expportrait_core.fit import FitConfig, fit_identity
    from expportrait_core.head import load_head_proxy, synthetic_head_proxy

    t0 = time.perf_counter()
    proxy = load_head_proxy(args.smplx) if args.smplx else synthetic_head_proxy()
    print(f"proxy: {proxy.num_vertices} vertices, {proxy.faces.shape[0]} faces"
          f"{' (synthetic)' if proxy.synthetic else ''}; load {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    rows = []
    for smile in (0.0, 0.5):
        T.SMILE = smile
        case = T.make_synthetic_case(proxy, args.size)
        width = T._head_width(case)
        h = case["head"] & case["visible"]
        inputs = (("landmarks only", {}),
                  ("+ normal/depth/mask", {"normal_map": case["normal"], "depth": case["depth"], "mask": case["mask"]}),
                  ("+ normal only", {"normal_map": case["normal"]}))
        for label, kw in inputs if smile == 0.0 else inputs[1:2]:
            both = args.compare_threads and smile == 0.0 and label.startswith("+ normal/")
            for threads in ([1, 2] if both else [1]):
                cfg = FitConfig.preset(args.quality, num_threads=threads)
                times, offsets = [], []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    res = fit_identity(proxy, case["image"], landmarks=case["landmarks"], config=cfg, **kw)
                    times.append(time.perf_counter() - t)
                    offsets.append(res.identity.static_offsets)
                same = all(torch.equal(offsets[0], o) for o in offsets[1:])
                err = T._camera_space_error(proxy, res, case)
                lm_err = float(np.linalg.norm(res.landmarks_2d - case["landmarks_exact"], axis=-1).mean())
                a, b = res.identity.static_offsets[h].reshape(-1), case["static"][h].reshape(-1)
                cos = float(torch.dot(a, b) / (a.norm() * b.norm() + 1e-12))
                rep = f"best of {args.repeats}, identical results: {same}" if args.repeats > 1 else "1 run"
                print(f"[{args.size}² {args.quality} smile={smile} threads={threads}] {label}: {min(times):.2f} s total "
                      f"({rep}); stages {res.stage_seconds}; iterations {res.iterations}")
                print(f"    head vertex error {err * 1000:.2f} mm = {100 * err / width:.2f}% of head width {width * 100:.1f} cm "
                      f"(scale about the camera {case['last_scale']:.3f}); landmarks {lm_err:.2f} px vs exact; "
                      f"static-offset cosine (visible head) {cos:.3f}")
                rows.append((smile, label, threads, min(times), err / width, lm_err, cos))
    print(f"load average: {os.getloadavg()}")

    real_portraits(proxy, args)


GROUPS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48), "mouth": range(48, 68)}


def real_portraits(proxy, args) -> None:
    """Landmarks-only fits of real photos (dlib), without and with the landmark-driven offsets."""
    try:
        import insightface
        from PIL import Image

        from expportrait_core.face import load_face_analyzer
        from expportrait_core.fit import FitConfig, fit_identity

        analyzer = load_face_analyzer("dlib")
    except Exception as exc:  # optional part
        print(f"real portraits skipped: {exc}")
        return
    paths = [os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg"),
             str(ROOT.parent / "shared" / "testdata" / "reference_glasses_512x480.png")]
    for path in paths:
        if not os.path.isfile(path):
            print(f"real portrait skipped: {path} not found")
            continue
        img = np.asarray(Image.open(path).convert("RGB"))
        x0, y0, x1, y1 = [int(round(float(v))) for v in analyzer.detect(img)[0].box]
        pad = x1 - x0
        img = img[max(0, y0 - pad): y1 + pad, max(0, x0 - pad): x1 + pad]  # the crop of tests/test_fit.py
        face = analyzer.detect(img)[0]  # what fit_identity(image, analyzer=...) uses: landmarks and their weights
        lm = face.landmarks
        iod = float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))
        for label, over in (("shape space only", {"landmark_offsets": False}), ("+ landmark static offsets", {})):
            t = time.perf_counter()
            res = fit_identity(proxy, img, landmarks=lm, landmark_weights=face.landmark_weights,
                               config=FitConfig.preset(args.quality, num_threads=1, **over))
            dt = time.perf_counter() - t
            err = np.linalg.norm(res.landmarks_2d - lm, axis=-1)
            groups = ", ".join(f"{k} {100 * err[list(r)].mean() / iod:.2f}%" for k, r in GROUPS.items())
            print(f"[real {os.path.basename(path)} crop {img.shape[1]}x{img.shape[0]}, dlib, {label}] {dt:.2f} s "
                  f"(detection excluded); "
                  f"landmark error {err.mean():.2f} px = {100 * err.mean() / iod:.2f}% of IOD ({iod:.1f} px), "
                  f"inner 51: {100 * err[17:].mean() / iod:.2f}%; {groups}; stages {res.stage_seconds}")


if __name__ == "__main__":
    main()
