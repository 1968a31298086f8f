"""Command line for the transfer stage.

``python -m expportrait_core train-transfer --out transfer.safetensors [--motions M ...] [--synthetic-identities 16]
[--steps 600] [--resume] [--plot loss.png]`` trains the learned module (checkpoints, resume, progress bar, loss
plot, held-out synthetic evaluation against parameter copy and deformation transfer).

``python -m expportrait_core transfer --identity ID --motion M --out OUT [--method auto|learned|deformation|copy]``
retargets a motion file onto an identity file.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _proxy(path: str):
    from ..head import load_head_proxy, synthetic_head_proxy

    if path:
        return load_head_proxy(path)
    log.warning("No --smplx file given: using the SYNTHETIC demo head (not SMPL-X). Pass --smplx SMPLX_NEUTRAL_2020.npz "
                "for real use.")
    return synthetic_head_proxy()


def run_train(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    if args.threads > 0:  # small per-step operations: one thread avoids OpenMP spinning on shared CPUs
        torch.set_num_threads(args.threads)
    try:
        return _run_train(args)
    finally:
        torch.set_num_threads(threads)


def _run_train(args: argparse.Namespace) -> int:
    from ..errors import ExpPortraitError
    from ..io.files import load_motion
    from ..progress import TqdmProgress
    from .evaluate import evaluate_methods, format_table, make_pairs
    from .learned import TransferModelConfig
    from .train import TrainConfig, TransferTrainer, plot_losses

    proxy = _proxy(args.smplx)
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_name(out.stem + ".ckpt.safetensors")
    plot = Path(args.plot) if args.plot else out.with_name(out.stem + ".loss.png")
    tc = TrainConfig(steps=args.steps, lr=args.lr, subjects_per_step=args.subjects_per_step,
                     frames_per_step=args.frames_per_step, faces_per_sample=args.faces_per_sample,
                     normal_weight=args.normal_weight,
                     rendered_normal_weight=args.rendered_normal_weight, seed=args.seed, threads=args.threads,
                     checkpoint_every=args.checkpoint_every, synthetic_identities=args.synthetic_identities)
    mc = TransferModelConfig(num_expression=max(proxy.num_expression, 1), code_dim=args.code_dim, hidden=args.hidden,
                             layers=args.layers, vertex_embedding=args.vertex_embedding)
    trainer = TransferTrainer(proxy, mc, tc)
    for m in args.motions or []:
        trainer.add_motion(load_motion(m, proxy.describe()), Path(m).stem)
    trainer.add_synthetic(tc.synthetic_identities)
    if not trainer.subjects:
        raise ExpPortraitError("No usable training data: give --motions with dynamic offsets or --synthetic-identities > 0.")
    if args.resume:
        trainer.load_checkpoint(ckpt)
        print(f"resumed from {ckpt} at step {trainer.step}")
    with TqdmProgress("train-transfer") as bar:
        trainer.train(tc.steps, checkpoint_path=ckpt, progress=bar, time_limit=args.time_limit or None)
    model_path = trainer.export(out)
    plot_losses(trainer.history, plot)
    last = trainer.history[-1] if trainer.history else [0, float("nan"), float("nan"), float("nan")]
    print(f"wrote {model_path} (step {trainer.step}, loss {last[1]:.4f}, {trainer.seconds:.0f} s), checkpoint {ckpt}, plot {plot}")
    if args.eval_pairs > 0:
        pairs = make_pairs(proxy, args.eval_pairs, frames=args.eval_frames, detail=trainer.detail)
        res = evaluate_methods(proxy, pairs, {
            "parameter copy (no offsets)": {"method": "copy", "config": _copy_cfg(False)},
            "parameter copy + offsets": {"method": "copy", "config": _copy_cfg(True)},
            "deformation transfer": {"method": "deformation"},
            "learned": {"method": "learned", "model": trainer.model},
        })
        print(f"held-out synthetic pairs: {args.eval_pairs} × {args.eval_frames} frames")
        print(format_table(res))
        if args.eval_json:
            Path(args.eval_json).write_text(json.dumps(res, indent=1))
    return 0


def _copy_cfg(copy_offsets: bool):
    from .core import TransferConfig

    return TransferConfig(copy_dynamic_offsets=copy_offsets)


def run_transfer(args: argparse.Namespace) -> int:
    from ..io.files import load_identity, load_motion, save_motion
    from ..progress import TqdmProgress
    from .core import transfer_motion
    from .learned import load_transfer_model

    proxy = _proxy(args.smplx)
    ident = load_identity(args.identity, proxy.describe())
    motion = load_motion(args.motion, proxy.describe())
    model = load_transfer_model(args.model) if args.model else None
    strengths = {k: getattr(args, k) for k in ("expression", "jaw", "eyes", "head_rotation", "translation")}
    with TqdmProgress("transfer") as bar:
        res = transfer_motion(proxy, ident, motion, method=args.method, model=model, strengths=strengths,
                              pose_mode=args.pose_mode, neutral_frame=args.neutral_frame, progress=bar)
    save_motion(res, args.out)
    print(f"wrote {args.out} ({res.num_frames} frames)")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-transfer", help="train the learned identity-adaptive expression transfer module")
    p.add_argument("--out", required=True, help="model file to write (.safetensors); put it in models/expportrait/transfer")
    p.add_argument("--smplx", default="", help="SMPLX_NEUTRAL_2020.npz (default: the synthetic demo head, with a warning)")
    p.add_argument("--motions", nargs="*", default=[], help="tracked motion files (with identity and dynamic offsets)")
    p.add_argument("--synthetic-identities", type=int, default=16, help="synthetic training subjects (0 = none)")
    p.add_argument("--steps", type=int, default=600, help="total optimizer steps (a resumed run continues up to this)")
    p.add_argument("--lr", type=float, default=1e-2, help="initial learning rate (cosine decay to 1e-4)")
    p.add_argument("--subjects-per-step", type=int, default=2, help="subjects per step")
    p.add_argument("--frames-per-step", type=int, default=24, help="frames per subject per step")
    p.add_argument("--faces-per-sample", type=int, default=1000,
                   help="random face-region triangles per subject and step (0 = all)")
    p.add_argument("--normal-weight", type=float, default=0.5, help="weight of the surface-normal loss")
    p.add_argument("--rendered-normal-weight", type=float, default=0.0,
                   help="weight of an extra rasterized normal-map loss (0 = off; slower)")
    p.add_argument("--hidden", type=int, default=64, help="width of G")
    p.add_argument("--layers", type=int, default=2, help="hidden layers of G")
    p.add_argument("--vertex-embedding", type=int, default=16,
                   help="size of the learned per-vertex code (0 = off: the model then also fits other head models)")
    p.add_argument("--code-dim", type=int, default=32, help="size of the per-frame code q")
    p.add_argument("--seed", type=int, default=0, help="seed of initialization and data sampling")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the whole run (0 = torch's default)")
    p.add_argument("--checkpoint", default="", help="checkpoint file (default: OUT.ckpt.safetensors)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--plot", default="", help="loss plot PNG (default: OUT.loss.png)")
    p.add_argument("--time-limit", type=float, default=0.0, help="stop (with a checkpoint) after this many seconds")
    p.add_argument("--eval-pairs", type=int, default=4, help="held-out synthetic pairs to evaluate at the end (0 = skip)")
    p.add_argument("--eval-frames", type=int, default=24, help="frames per evaluation pair")
    p.add_argument("--eval-json", default="", help="also write the evaluation as JSON")
    p.set_defaults(func=run_train)

    q = sub.add_parser("transfer", help="retarget a motion file onto an identity file")
    q.add_argument("--identity", required=True, help="reference identity (.safetensors)")
    q.add_argument("--motion", required=True, help="driving motion (.safetensors)")
    q.add_argument("--out", required=True, help="output motion file")
    q.add_argument("--smplx", default="", help="SMPL-X file the files were made with (default: synthetic head)")
    q.add_argument("--method", default="auto", choices=["auto", "learned", "deformation", "copy"], help="transfer method")
    q.add_argument("--model", default="", help="transfer model file (for learned / auto)")
    q.add_argument("--pose-mode", default="relative", choices=["relative", "absolute"], help="pose transfer mode")
    q.add_argument("--neutral-frame", type=int, default=0, help="neutral-calibration frame (-1 = none)")
    for k in ("expression", "jaw", "eyes", "head_rotation", "translation"):
        q.add_argument(f"--{k.replace('_', '-')}", dest=k, type=float, default=1.0, help=f"strength of {k.replace('_', ' ')}")
    q.set_defaults(func=run_transfer)
