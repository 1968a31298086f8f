"""Benchmark of the identity fit: seconds per identity at 512² (per stage) and accuracy figures.

    python bench/bench_fit.py [--size 512] [--quality balanced] [--smplx FILE] [--repeats 1] [--compare-threads]

Case: the synthetic head (or an SMPL-X file) rendered with known shape, expression, pose and a
smooth static-offset field (5 mm bumps on the cheeks, forehead and left temple); inputs are its
exact landmark projections + 1 px noise and its normal/depth/mask renders at ``--size`` (the
case of tests/test_fit.py). Prints per-stage seconds, the mean head vertex error (mm and % of
head width, each in its camera frame after the unobservable scale about the camera centre), the
landmark error vs the exact projections and the static-offset cosine on the visible head, for
landmarks only and with the dense terms, a smiling reference, 1 vs 2 torch threads; then the real
portrait (dlib) when available.
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
                times = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    res = fit_identity(proxy, case["image"], landmarks=case["landmarks"], config=cfg, **kw)
                    times.append(time.perf_counter() - t)
                err = T._camera_space_error(proxy, res, case)
                lm_err = float(np.linalg.norm(res.landmarks_2d - case["landmarks_exact"], axis=-1).mean())
                a, b = res.identity.static_offsets[h].reshape(-1), case["static"][h].reshape(-1)
                cos = float(torch.dot(a, b) / (a.norm() * b.norm() + 1e-12))
                print(f"[{args.size}² {args.quality} smile={smile} threads={threads}] {label}: {min(times):.2f} s total "
                      f"(best of {args.repeats}); stages {res.stage_seconds}; iterations {res.iterations}")
                print(f"    head vertex error {err * 1000:.2f} mm = {100 * err / width:.2f}% of head width {width * 100:.1f} cm "
                      f"(scale about the camera {case['last_scale']:.3f}); landmarks {lm_err:.2f} px vs exact; "
                      f"static-offset cosine (visible head) {cos:.3f}")
                rows.append((smile, label, threads, min(times), err / width, lm_err, cos))
    print(f"load average: {os.getloadavg()}")

    try:
        import insightface
        from PIL import Image

        from expportrait_core.face import load_face_analyzer

        path = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
        analyzer = load_face_analyzer("dlib")
        img = np.asarray(Image.open(path).convert("RGB"))
        t = time.perf_counter()
        x0, y0, x1, y1 = [int(round(float(v))) for v in analyzer.detect(img)[0].box]
        img = img[max(0, y0 - (x1 - x0)): y1 + (x1 - x0), max(0, x0 - (x1 - x0)): x1 + (x1 - x0)]
        res = fit_identity(proxy, img, analyzer=analyzer, config=FitConfig.preset(args.quality, num_threads=1))
        lm = analyzer.detect(img)[0].landmarks
        iod = float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))
        err = float(np.linalg.norm(res.landmarks_2d - lm, axis=-1).mean())
        inner = float(np.linalg.norm(res.landmarks_2d - lm, axis=-1)[17:].mean())
        print(f"[real t1.jpg crop {img.shape[1]}x{img.shape[0]}, dlib, landmarks only] {time.perf_counter() - t:.2f} s "
              f"(incl. detection); landmark error {err:.2f} px = {100 * err / iod:.2f}% of IOD ({iod:.1f} px), "
              f"inner 51: {100 * inner / iod:.2f}%; stages {res.stage_seconds}")
    except Exception as exc:  # optional part
        print(f"real portrait skipped: {exc}")


if __name__ == "__main__":
    main()
