"""Expression-transfer benchmark (figures recorded in bench/RESULTS.md, "## Transfer").

    python bench/bench_transfer.py                      # timing + held-out synthetic evaluation
    python bench/bench_transfer.py --train-steps 1500   # also train the learned module first (minutes)
    python bench/bench_transfer.py --model M.safetensors --real --out-dir output/transfer_bench

1. ms per frame of each method at full proxy resolution (the synthetic head, 39k vertices, face
   region 21k) on a synthetic pair, and the one-time costs (deformation-transfer factorization,
   expression projectors, learned per-identity vertex state).
2. Held-out vertex error on synthetic identity pairs with known ground truth (same expression
   coefficients, identity-dependent detail) for parameter copy (no offsets / + the driver's
   offsets), deformation transfer (full scope = default, detail scope, classic Sumner & Popović
   ablation) and the learned module; plus the exactness checks of the default: self-transfer
   (driver = reference) and a neutral driving frame → the reference's neutral mesh (max vertex
   error, mm).
3. ``--real``: the real driving clip tracked (fast path), the real reference portrait fitted,
   the motion transferred onto it by deformation transfer (and learned when a model is given),
   a normal-map video written; checks that the reference's static offsets are untouched and that
   the transferred mouth opens when the driver's does (Pearson r of the lip gaps). The track has
   no dynamic offsets, so the real identity pair is also scored with synthetic ground-truth detail
   (:func:`real_pair_with_synthetic_detail`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TESTDATA = ROOT.parent / "shared" / "testdata"


def timing(proxy, model, frames: int) -> dict:
    import torch

    from expportrait_core.transfer import SyntheticDetail, TransferConfig, clear_caches, random_identity, synthetic_motion
    from expportrait_core.transfer.core import _DT_CACHE, expression_projector, transfer_motion

    det = SyntheticDetail(proxy)
    a, b = random_identity(proxy, 501), random_identity(proxy, 502)
    motion = synthetic_motion(proxy, a, frames, 77, detail=det)
    out = {}
    t = time.perf_counter()
    expression_projector(proxy)
    expression_projector(proxy, "face")
    out["projector_setup_s"] = time.perf_counter() - t
    methods = {"copy": {"method": "copy"},
               "deformation (full, default)": {"method": "deformation"},
               "deformation (detail)": {"method": "deformation", "config": TransferConfig(scope="detail")},
               "deformation (classic)": {"method": "deformation", "config": TransferConfig(scope="classic")}}
    if model is not None:
        methods["learned"] = {"method": "learned", "model": model}
    for label, kw in methods.items():
        clear_caches()
        t = time.perf_counter()
        transfer_motion(proxy, b, motion, **kw)  # first call: includes the one-time factorization
        first = time.perf_counter() - t
        t = time.perf_counter()
        transfer_motion(proxy, b, motion, **kw)  # second call: factorization reused
        again = time.perf_counter() - t
        out[label] = {"first_call_ms_per_frame": 1e3 * first / frames, "ms_per_frame": 1e3 * again / frames}
    clear_caches()
    transfer_motion(proxy, b, motion, method="deformation")
    dt = next(iter(_DT_CACHE.values()))
    out["factorization_s"] = dt.factor_seconds
    out["free_vertices"] = dt.num_free
    if model is not None:
        with torch.no_grad():
            neutral = proxy.neutral(b.betas, b.static_offsets)[0]
            t = time.perf_counter()
            model.vertex_state(model.vertex_features(proxy, neutral))
            out["learned_vertex_state_s"] = time.perf_counter() - t
    return out


def exactness(proxy, frames: int = 8) -> dict:
    """Max vertex error (mm) of the default deformation transfer: self-transfer of a synthetic
    motion with detail (posed meshes), and a neutral driving frame (ψ = 0, jaw 0, no offsets;
    without calibration, and a calibration frame) against the reference's neutral mesh."""
    import torch

    from expportrait_core.io.files import Motion
    from expportrait_core.transfer import SyntheticDetail, random_identity, synthetic_motion, transfer_motion

    det = SyntheticDetail(proxy)
    a, b = random_identity(proxy, 601), random_identity(proxy, 602)
    motion = synthetic_motion(proxy, a, frames, 78, detail=det)

    def verts(m, ident, idx=None):
        p = m.params if idx is None else m.params.index(idx)
        dense = m.dense_dynamic_offsets(proxy.num_vertices, None if idx is None else [idx])
        with torch.no_grad():
            return proxy(p, ident.static_offsets, dense).vertices

    out = transfer_motion(proxy, a, motion, method="deformation", pose_mode="absolute", neutral_frame=None)
    res = {"self_transfer_max_mm": float((verts(out, a) - verts(motion, a)).norm(dim=-1).max()) * 1e3,
           "self_transfer_max_coeff_diff": float((out.params.expression - motion.params.expression).abs().max())}
    k = frames // 2
    drv = motion.params.detach()
    drv.expression[k] = 0
    drv.jaw_pose[k] = 0
    offs = motion.dynamic_offsets.clone()
    offs[k] = 0
    neutral_k = Motion(params=drv, camera=motion.camera, fps=motion.fps, model=motion.model, image_size=motion.image_size,
                       dynamic_offsets=offs, dynamic_offsets_index=motion.dynamic_offsets_index, identity=a)
    with torch.no_grad():
        ref = proxy.neutral(b.betas, b.static_offsets)[0]
    zero = {f: torch.zeros(1, 3) for f in ("global_orient", "neck_pose", "head_pose", "leye_pose", "reye_pose", "transl")}
    for label, mot, nf in (("neutral_frame_max_mm", neutral_k, None), ("calibration_frame_max_mm", motion, k)):
        o = transfer_motion(proxy, b, mot, method="deformation", neutral_frame=nf)
        p = o.params.index(k).replace(**zero)
        with torch.no_grad():
            v = proxy(p, b.static_offsets, o.dense_dynamic_offsets(proxy.num_vertices, [k])).vertices[0]
        res[label] = float((v - ref).norm(dim=-1).max()) * 1e3
    return res


def evaluation(proxy, model, pairs: int, frames: int) -> dict:
    from expportrait_core.transfer import TransferConfig
    from expportrait_core.transfer.evaluate import evaluate_methods, format_table, make_pairs

    prs = make_pairs(proxy, pairs, frames=frames)
    methods = {
        "parameter copy (no offsets)": {"method": "copy"},
        "parameter copy + driver offsets": {"method": "copy", "config": TransferConfig(copy_dynamic_offsets=True)},
        "deformation transfer (full, default)": {"method": "deformation"},
        "deformation transfer (detail)": {"method": "deformation", "config": TransferConfig(scope="detail")},
        "deformation transfer (classic, ablation)": {"method": "deformation", "config": TransferConfig(scope="classic")},
    }
    if model is not None:
        methods["learned"] = {"method": "learned", "model": model}
    res = evaluate_methods(proxy, prs, methods)
    print(format_table(res))
    return res


def real(proxy, model, out_dir: Path) -> dict:
    """Track the real clip, fit the real reference, transfer, render; mouth-gap correlation."""
    import numpy as np
    import torch
    from PIL import Image

    from expportrait_core.control import render_control
    from expportrait_core.face import load_face_analyzer
    from expportrait_core.fit import fit_identity
    from expportrait_core.io.video import write_video
    from expportrait_core.track import pearson, track_video_file
    from expportrait_core.transfer import transfer_motion

    analyzer = load_face_analyzer("dlib")
    t = time.perf_counter()
    track = track_video_file(proxy, TESTDATA / "driving_expressions_480.mp4", analyzer)
    t_track = time.perf_counter() - t
    image = np.asarray(Image.open(TESTDATA / "reference_glasses_512x480.png").convert("RGB"))
    t = time.perf_counter()
    fit = fit_identity(proxy, image, analyzer=analyzer)
    t_fit = time.perf_counter() - t
    ref = fit.identity
    static_before = ref.static_offsets.clone()
    res = {"track_s": t_track, "fit_s": t_fit, "frames": track.motion.num_frames}

    def lip_gap(motion, identity):
        dense = motion.dense_dynamic_offsets(proxy.num_vertices)
        p = motion.params.replace(betas=identity.betas.expand(motion.num_frames, -1))
        with torch.no_grad():
            lm = proxy(p, identity.static_offsets, dense).landmarks
        return ((lm[:, 62] - lm[:, 66]).norm(dim=-1) + (lm[:, 61] - lm[:, 67]).norm(dim=-1)
                + (lm[:, 63] - lm[:, 65]).norm(dim=-1)).numpy() / 3

    drv_gap = lip_gap(track.motion, track.motion.identity)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = {"deformation": None}
    if model is not None:
        methods["learned"] = model
    for name, m in methods.items():
        t = time.perf_counter()
        out = transfer_motion(proxy, ref, track.motion, method=name, model=m)
        t_tr = time.perf_counter() - t
        gap = lip_gap(out, ref)
        t = time.perf_counter()
        frames, _ = render_control(proxy, ref, out)
        t_r = time.perf_counter() - t
        path = out_dir / f"transfer_{name}.mp4"
        write_video(path, frames, track.motion.fps)
        Image.fromarray(np.concatenate([frames[int(i)] for i in np.linspace(0, len(frames) - 1, 6)], 1)).save(
            out_dir / f"transfer_{name}_strip.png")
        res[name] = {"transfer_s": t_tr, "render_s": t_r, "video": str(path),
                     "static_offsets_unchanged": bool(torch.equal(out.identity.static_offsets, static_before)),
                     "mouth_gap_pearson_r": pearson(gap, drv_gap),
                     "driver_gap_mm_range": [float(drv_gap.min() * 1e3), float(drv_gap.max() * 1e3)],
                     "transferred_gap_mm_range": [float(gap.min() * 1e3), float(gap.max() * 1e3)]}
    res["synthetic_detail_on_real_pair"] = real_pair_with_synthetic_detail(proxy, track.motion, ref)
    return res


def real_pair_with_synthetic_detail(proxy, motion, ref) -> dict:
    """The fast-path track has no dynamic offsets, so the default transfer there is the driver's
    coefficients exactly. To exercise deformation transfer between the two *real* identities
    (tracked driver, fitted reference), give both the synthetic identity-dependent detail for the
    tracked coefficients and jaw (driver: as input; reference: as ground truth) and score the
    methods (absolute pose, no calibration; vertex error in mm)."""
    import dataclasses

    import torch

    from expportrait_core.transfer import SyntheticDetail, TransferConfig, transfer_motion
    from expportrait_core.transfer.evaluate import vertex_errors

    det = SyntheticDetail(proxy)
    drv = motion.identity
    p = motion.params
    with torch.no_grad():
        d_drv = det.offsets(proxy.neutral(drv.betas, drv.static_offsets)[0], p.expression, p.jaw_pose).float()
        d_ref = det.offsets(proxy.neutral(ref.betas, ref.static_offsets)[0], p.expression, p.jaw_pose).float()
    driving = dataclasses.replace(motion, dynamic_offsets=d_drv, dynamic_offsets_index=det.ids.cpu())
    truth = dataclasses.replace(motion, dynamic_offsets=d_ref, dynamic_offsets_index=det.ids.cpu(), identity=ref)
    out = {}
    for label, kw in {"parameter copy": {"method": "copy"},
                      "parameter copy + driver offsets": {"method": "copy", "config": TransferConfig(copy_dynamic_offsets=True)},
                      "deformation transfer (full, default)": {"method": "deformation"}}.items():
        t = time.perf_counter()
        res = transfer_motion(proxy, ref, driving, pose_mode="absolute", neutral_frame=None, **kw)
        secs = time.perf_counter() - t
        out[label] = {**vertex_errors(proxy, res, truth, ref), "transfer_s": secs}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smplx", default="", help="SMPL-X file (default: the synthetic head)")
    ap.add_argument("--model", default="", help="a trained transfer model (.safetensors)")
    ap.add_argument("--train-steps", type=int, default=0, help="train a model first (CLI defaults otherwise)")
    ap.add_argument("--frames", type=int, default=48, help="frames for the timing run")
    ap.add_argument("--pairs", type=int, default=4, help="held-out synthetic pairs")
    ap.add_argument("--pair-frames", type=int, default=24)
    ap.add_argument("--real", action="store_true", help="run the real-clip pipeline (tracking + fitting: minutes)")
    ap.add_argument("--out-dir", default="output/transfer_bench")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from expportrait_core.head import load_head_proxy, synthetic_head_proxy
    from expportrait_core.transfer import load_transfer_model

    proxy = load_head_proxy(args.smplx) if args.smplx else synthetic_head_proxy()
    print(f"proxy: {proxy.num_vertices} vertices, face region {int((proxy.face_weight > 0).sum())}; "
          f"load average {os.getloadavg()[0]:.1f}")
    model = load_transfer_model(args.model) if args.model else None
    out_dir = Path(args.out_dir)
    report = {}
    if args.train_steps > 0:
        from expportrait_core.progress import TqdmProgress
        from expportrait_core.transfer.train import TrainConfig, TransferTrainer, plot_losses

        tr = TransferTrainer(proxy, config=TrainConfig(steps=args.train_steps))
        t = time.perf_counter()
        tr.add_synthetic(tr.config.synthetic_identities)
        t_data = time.perf_counter() - t
        with TqdmProgress("train") as bar:
            tr.train(progress=bar, checkpoint_path=out_dir / "transfer.ckpt.safetensors")
        tr.export(out_dir / "transfer.safetensors")
        plot_losses(tr.history, out_dir / "transfer.loss.png")
        model = tr.model
        report["training"] = {"steps": tr.step, "data_s": t_data, "train_s": tr.seconds,
                              "first_loss": tr.history[0][1], "last_loss_mean20": sum(h[1] for h in tr.history[-20:]) / 20}
        print("training:", report["training"])
    if not args.skip_timing:
        report["timing"] = timing(proxy, model, args.frames)
        print(json.dumps(report["timing"], indent=1))
    if not args.skip_eval:
        report["exactness"] = exactness(proxy)
        print(json.dumps(report["exactness"], indent=1))
        report["evaluation"] = evaluation(proxy, model, args.pairs, args.pair_frames)
    if args.real:
        report["real"] = real(proxy, model, out_dir)
        print(json.dumps(report["real"], indent=1))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_transfer.json").write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {out_dir / 'bench_transfer.json'} (load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
