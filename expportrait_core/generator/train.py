"""Training (``train-generator``) and headless sampling (``generate``) command-line interfaces.

Training fits the ExpPortrait normal-map encoders and fine-tunes the Wan transformer (LoRA or
full) with Wan's flow-matching objective: ``x_t = (1 − σ)·x0 + σ·ε``, the transformer predicts
``v = ε − x0`` at timestep ``1000·σ``; ``σ`` is uniform then shifted like the sampler
(``σ' = s·σ / (1 + (s − 1)·σ)``). Conditions are dropped at random (control, reference, text) so
that classifier-free guidance works at inference.

Every step draws its data, noise, σ and dropout from a generator seeded by ``(seed, step)``, and a
checkpoint stores the trainable weights *and* the AdamW state; so ``--resume`` continues exactly as
if the run had not stopped. Checkpoints and the final export are safetensors.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from ..errors import ExpPortraitError
from ..grad import autograd_enabled
from ..progress import TqdmProgress
from .config import ControlEncoderConfig, tiny_config
from .video_rules import latent_frames

log = logging.getLogger("expportrait.generator")

CKPT_FORMAT = "expportrait-generator-train-state"


# ----------------------------------------------------------------------------------------------
# model set-up
# ----------------------------------------------------------------------------------------------
def add_encoders(gen, enc_cfg: Optional[ControlEncoderConfig] = None, seed: int = 0):
    """Turn an ``i2v`` generator into an ``expportrait`` one with fresh (zero-output) encoders."""
    from .encoders import NormalVideoEncoder, ReferenceNormalEncoder

    if gen.config.layout == "expportrait":
        return gen
    if gen.config.layout != "i2v":
        raise ExpPortraitError(
            f"ExpPortrait encoders need a Wan image-to-video base (got layout {gen.config.layout!r}); "
            "use --mode lora/full without encoders to fine-tune a Fun-Control model"
        )
    enc_cfg = enc_cfg or ControlEncoderConfig(out_dim=gen.config.inner_dim)
    torch.manual_seed(seed)
    gen.pose_encoder = NormalVideoEncoder(enc_cfg).to(gen.device)
    gen.ref_encoder = ReferenceNormalEncoder(enc_cfg).to(gen.device)
    gen.config.layout = "expportrait"
    gen.config.encoder = enc_cfg
    gen.config.cfg_on = "control+reference"
    gen.config.validate()
    return gen


def _trainable(gen, mode: str) -> Dict[str, nn.Parameter]:
    """Named trainable parameters (names are the bundle keys)."""
    params: Dict[str, nn.Parameter] = {}
    for name in ("pose_encoder", "ref_encoder"):
        mod = getattr(gen, name)
        if mod is not None:
            params.update({f"{name}.{k}": p for k, p in mod.named_parameters()})
    if mode == "lora":
        params.update(gen.lora.peft_state_dict())
        # peft_state_dict returns the Parameters themselves
    elif mode == "full":
        params.update({f"transformer.{k}": p for k, p in gen.transformer.named_parameters()})
    return params


def _conditions(gen, s, n_lat: int, cache: Optional[Dict[Any, Any]]):
    """``(x0 [1, z, L, h, w], Conditions)`` for a training sample; frozen encodings cached by key if asked."""
    from .model import Conditions, pad_text

    def get(key, fn):
        if cache is None:
            return fn()
        if key not in cache:
            cache[key] = fn()
        return cache[key]

    with torch.no_grad():
        x0 = get(("video", s.clip, s.start), lambda: gen.encode_video(s.video * 2.0 - 1.0))
        ref_concat = get(("ref", s.clip, s.ref_index), lambda: gen.reference_concat(s.reference, n_lat))
        img = get(("clip", s.clip, s.ref_index), lambda: gen.image_embeds(s.reference))
        cond = Conditions(
            text=pad_text(s.prompt_embeds if s.prompt_embeds is not None else gen.prompt_embeds, gen.config.text_dim),
            negative_text=pad_text(gen.negative_prompt_embeds, gen.config.text_dim),
            image_embeds=img, ref_concat=ref_concat, n_latent=n_lat, window=(n_lat, 0),
        )
        if gen.config.layout == "fun_control":
            cond.control_latents = get(("ctrl", s.clip, s.start), lambda: gen.encode_video(s.normals * 2.0 - 1.0))
        else:
            cond.control_pixels = s.normals * 2.0 - 1.0
            cond.ref_normal = None if s.reference_normal is None else s.reference_normal * 2.0 - 1.0
    return x0, cond


def _sigma(u: float, shift: float) -> float:
    return shift * u / (1.0 + (shift - 1.0) * u)


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def save_train_state(path: Path, step: int, params: Dict[str, nn.Parameter], opt: torch.optim.Optimizer, meta: Dict[str, Any]) -> None:
    """Trainable weights + AdamW moments + step, atomically, in one safetensors file."""
    from .checkpoint import save_safetensors

    names = list(params)
    t = {f"param.{n}": p.detach() for n, p in params.items()}
    sd = opt.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            t[f"optim.{names[i]}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    md = {"format": CKPT_FORMAT, "step": str(step), "param_groups": json.dumps(sd["param_groups"]), "names": json.dumps(names)}
    md.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    save_safetensors(t, path, md)


def load_train_state(path: Path, params: Dict[str, nn.Parameter], opt: torch.optim.Optimizer) -> int:
    """Restore what :func:`save_train_state` wrote; returns the step to continue from."""
    from .checkpoint import LazyTensors

    lt = LazyTensors([path])
    if lt.metadata.get("format") != CKPT_FORMAT:
        raise ExpPortraitError(f"'{path}' is not a generator training checkpoint")
    names = json.loads(lt.metadata["names"])
    if names != list(params):
        missing = sorted(set(names) ^ set(params))[:5]
        raise ExpPortraitError(f"checkpoint '{path}' was written for other trainable parameters (differ: {missing}); "
                               "resume with the same --mode/--lora-rank/model")
    with torch.no_grad():
        for n, p in params.items():
            v = lt.get(f"param.{n}")
            if v.shape != p.shape:
                raise ExpPortraitError(f"checkpoint '{path}': parameter {n} has shape {tuple(v.shape)}, expected {tuple(p.shape)}")
            p.copy_(v)
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for i, n in enumerate(names):
        pre = f"optim.{n}."
        st = {k[len(pre):]: lt.get(k) for k in lt.keys() if k.startswith(pre)}
        if st:
            state[i] = st
    opt.load_state_dict({"state": state, "param_groups": json.loads(lt.metadata["param_groups"])})
    return int(lt.metadata["step"])


def _latest(ckpt_dir: Path) -> Optional[Path]:
    files = sorted(ckpt_dir.glob("step-*.safetensors"))
    return files[-1] if files else None


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    losses: List[float]
    step: int
    export: Optional[Path]


@autograd_enabled
def train(args: argparse.Namespace) -> TrainResult:
    """Run training as configured by the ``train-generator`` arguments (see :func:`add_cli`)."""
    from .data import TripletDataset
    from .loading import load_generator, save_generator
    from .lora import LoRA
    from .model import build_generator

    torch.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    device = args.device
    # frozen weights in --dtype; trainable ones stay fp32 (autocast mixes them when dtype != fp32)
    if args.tiny:
        gen = build_generator(tiny_config("expportrait"), seed=args.seed, device=device, dtype=args.dtype)
        include = ["transformer", "vae", "clip"]
    else:
        if not (args.init or args.base):
            raise ExpPortraitError("train-generator needs --init (bundle/folder) or --base (Wan I2V transformer), or --tiny")
        gen = load_generator(args.init or args.base, base=args.base if args.init else None, vae=args.vae,
                             clip_vision=args.clip_vision, prompt_embeds=args.prompt_embeds,
                             dtype=args.dtype, device=device, merge_lora=False)
        include = ["transformer"] if args.mode == "full" else []
    if gen.config.layout == "i2v":
        add_encoders(gen, ControlEncoderConfig(out_dim=gen.config.inner_dim), seed=args.seed)
    if args.mode == "lora" and gen.lora is None:
        torch.manual_seed(args.seed + 1)
        gen.lora = LoRA(gen.transformer, rank=args.lora_rank, alpha=args.lora_alpha).to(device)
    for m in gen.modules().values():
        m.requires_grad_(False)
    params = _trainable(gen, args.mode)
    if not params:
        raise ExpPortraitError("nothing to train: this layout has no encoders; use --mode lora or full")
    for p in params.values():
        p.data = p.data.float()
        p.requires_grad_(True)
    if args.gradient_checkpointing:
        gen.transformer.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(list(params.values()), lr=args.lr, weight_decay=args.weight_decay)
    start = 0
    if args.resume:
        ck = _latest(ckpt_dir) if args.resume == "auto" else Path(args.resume)
        if ck is None:
            log.info("no checkpoint in %s; starting from step 0", ckpt_dir)
        else:
            start = load_train_state(ck, params, opt)
            log.info("resumed from %s at step %d", ck, start)
    ds = TripletDataset(Path(args.data), args.frames, args.height, args.width, cache=args.cache_data)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    if amp_dtype is None and gen.dtype != torch.float32:
        # frozen weights in bf16/fp16 and fp32 trainable ones only mix under autocast
        amp_dtype = gen.dtype
        log.info("--dtype %s: using autocast %s for the forward pass", args.dtype, gen.dtype)
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
    dev_type = torch.device(device).type
    log_f = open(out / "train_log.jsonl", "a")
    losses: List[float] = []
    latent_cache: Optional[Dict[Any, Any]] = {} if args.cache_latents else None
    n_lat = latent_frames(args.frames)
    meta = {"mode": args.mode, "lora_rank": args.lora_rank, "seed": args.seed}
    t0 = time.time()
    try:
        for step in range(start, args.steps):
            g = torch.Generator("cpu").manual_seed(args.seed * 1_000_003 + step)
            s = ds.sample(g)
            drop = set()
            for branch, p in (("control", args.drop_control), ("reference", args.drop_reference), ("text", args.drop_text)):
                if float(torch.rand((), generator=g)) < p:
                    drop.add(branch)
            sigma = _sigma(float(torch.rand((), generator=g)), args.shift)
            x0, cond = _conditions(gen, s, n_lat, latent_cache)
            noise = torch.randn(x0.shape, generator=g).to(x0.device)
            xt = (1.0 - sigma) * x0 + sigma * noise
            target = noise - x0
            lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
            for grp in opt.param_groups:
                grp["lr"] = lr
            with torch.autocast(dev_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                inputs = gen.model_inputs(xt, 0, n_lat, cond, drop=drop, cache=False)
                v = gen.velocity(inputs, torch.tensor([sigma * 1000.0]))
            loss = torch.nn.functional.mse_loss(v.float(), target.float())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.max_grad_norm > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(list(params.values()), args.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise ExpPortraitError(f"loss became {lv} at step {step + 1}; lower --lr or use --mixed-precision bf16")
            losses.append(lv)
            log_f.write(json.dumps({"step": step + 1, "loss": lv, "lr": lr, "sigma": sigma, "clip": s.clip,
                                    "drop": sorted(drop), "time": round(time.time() - t0, 3)}) + "\n")
            if (step + 1) % args.log_every == 0:
                log.info("step %d/%d loss %.4f", step + 1, args.steps, sum(losses[-args.log_every:]) / min(len(losses), args.log_every))
            if args.save_every and (step + 1) % args.save_every == 0:
                save_train_state(ckpt_dir / f"step-{step + 1:07d}.safetensors", step + 1, params, opt, meta)
    finally:
        log_f.close()
    export = None
    if args.steps > start or not (out / "expportrait_generator.safetensors").exists():
        for m in gen.modules().values():
            m.requires_grad_(False)
        export = save_generator(gen, out / "expportrait_generator.safetensors", include=include,
                                base_name=Path(args.base).name if args.base else "")
        log.info("exported %s", export)
    return TrainResult(losses, max(start, args.steps), export)


def run_train(args: argparse.Namespace) -> int:
    """Entry point of ``python -m expportrait_core train-generator``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = train(args)
    if res.losses:
        k = max(1, min(10, len(res.losses) // 2))
        print(f"trained to step {res.step}: loss first {k} {sum(res.losses[:k]) / k:.4f} → last {k} {sum(res.losses[-k:]) / k:.4f}")
    if res.export:
        print(f"model: {res.export}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Add the ``train-generator`` sub-command."""
    p = subparsers.add_parser("train-generator", help="train the ExpPortrait DiT generator (encoders + LoRA/full)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder (one sub-folder per clip; see the README, 'Generator' → 'Training')")
    p.add_argument("--output", required=True, help="output folder (checkpoints/, train_log.jsonl, expportrait_generator.safetensors)")
    src = p.add_argument_group("model")
    src.add_argument("--init", help="start from an ExpPortrait bundle or diffusers folder")
    src.add_argument("--base", help="Wan 2.1 I2V transformer (file or folder) to fine-tune / that --init was trained on")
    src.add_argument("--vae", help="Wan 2.1 VAE (models/vae/wan_2.1_vae.safetensors)")
    src.add_argument("--clip-vision", help="CLIP ViT-H (models/clip_vision/clip_vision_h.safetensors)")
    src.add_argument("--prompt-embeds", help="cached prompt embeddings used for every clip without its own")
    src.add_argument("--tiny", action="store_true", help="random tiny model (smoke tests; needs no files)")
    tr = p.add_argument_group("training")
    tr.add_argument("--mode", choices=("lora", "full", "encoders"), default="lora",
                    help="what to train besides the encoders: LoRA on the transformer, all of it, or nothing (default lora)")
    tr.add_argument("--lora-rank", type=int, default=32)
    tr.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default = rank)")
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--lr", type=float, default=1e-4, help="learning rate (paper: 1e-4)")
    tr.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    tr.add_argument("--weight-decay", type=float, default=0.0)
    tr.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    tr.add_argument("--frames", type=int, default=81, help="frames per clip, 4k+1 (default 81)")
    tr.add_argument("--height", type=int, default=512)
    tr.add_argument("--width", type=int, default=512)
    tr.add_argument("--shift", type=float, default=3.0, help="timestep shift for sampling σ during training")
    tr.add_argument("--drop-control", type=float, default=0.1, help="probability of dropping the normal-map control")
    tr.add_argument("--drop-reference", type=float, default=0.05, help="probability of dropping the reference")
    tr.add_argument("--drop-text", type=float, default=0.1, help="probability of using the negative/neutral prompt")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--save-every", type=int, default=500, help="checkpoint interval in steps (0 = only the final export)")
    tr.add_argument("--resume", nargs="?", const="auto", default=None,
                    help="continue from the latest checkpoint in OUTPUT/checkpoints (or from the given file)")
    tr.add_argument("--log-every", type=int, default=10)
    tr.add_argument("--cache-data", action="store_true", help="keep decoded clips in memory (small datasets)")
    tr.add_argument("--cache-latents", action="store_true",
                    help="keep VAE/CLIP encodings of each (clip, window) and reference in memory (small datasets)")
    sysg = p.add_argument_group("system")
    sysg.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sysg.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16", "fp8_e4m3fn"),
                      help="storage dtype of frozen weights (trainable ones stay fp32)")
    sysg.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no", help="autocast dtype for the forward pass")
    sysg.add_argument("--gradient-checkpointing", action="store_true", help="recompute transformer blocks in backward (less memory)")
    p.set_defaults(func=run_train)


# ----------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------
def run_generate(args: argparse.Namespace) -> int:
    """Entry point of ``python -m expportrait_core generate``."""
    import numpy as np

    from .data import read_frames, write_video
    from .loading import load_generator
    from .model import build_generator

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.tiny:
        gen = build_generator(tiny_config(), seed=args.seed, device=args.device)
    else:
        gen = load_generator(args.model, base=args.base, vae=args.vae, clip_vision=args.clip_vision,
                             prompt_embeds=args.prompt_embeds, dtype=args.dtype, device=args.device, offload=args.offload)
    ref = torch.from_numpy(read_frames(Path(args.reference))[:1]).float() / 255.0
    ctrl_np = read_frames(Path(args.control))
    if args.max_frames:
        ctrl_np = ctrl_np[: args.max_frames]
    ctrl = torch.from_numpy(ctrl_np).float() / 255.0
    ref_n = None
    if args.reference_normal:
        ref_n = torch.from_numpy(read_frames(Path(args.reference_normal))[:1]).float() / 255.0
    size = (args.height, args.width) if args.height and args.width else None
    with TqdmProgress("sampling") as bar:
        frames = gen.sample(ref, ctrl, ref_n, steps=args.steps, cfg=args.cfg, seed=args.seed, shift=args.shift,
                            window=args.window, overlap=args.overlap, scheduler=args.scheduler, cfg_on=args.cfg_on,
                            size=size, progress=bar)
    out = write_video(Path(args.output), (frames.numpy() * 255.0 + 0.5).astype(np.uint8), fps=args.fps)
    print(f"wrote {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]} to {out}")
    return 0


def add_generate_cli(subparsers: Any) -> None:
    """Add the ``generate`` sub-command (reference image + normal-map video → portrait video)."""
    p = subparsers.add_parser("generate", help="sample the DiT generator: reference + normal-map video → video")
    p.add_argument("--model", help="ExpPortrait bundle, diffusers folder, or Wan transformer file")
    p.add_argument("--base", help="base Wan transformer when --model is an ExpPortrait bundle without one")
    p.add_argument("--vae", help="Wan 2.1 VAE file or folder")
    p.add_argument("--clip-vision", help="CLIP ViT-H file or folder (optional)")
    p.add_argument("--prompt-embeds", help="cached prompt embeddings (.safetensors; optional)")
    p.add_argument("--tiny", action="store_true", help="random tiny model (smoke test; needs no files)")
    p.add_argument("--reference", required=True, help="reference portrait image")
    p.add_argument("--reference-normal", help="normal map of the reference (ExpPortrait models)")
    p.add_argument("--control", required=True, help="normal-map video (.mp4) or folder of frames")
    p.add_argument("--output", required=True, help="output .mp4 or folder for PNG frames")
    p.add_argument("--max-frames", type=int, default=0, help="use only the first N control frames (0 = all)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--cfg-on", default=None, help="branches dropped for CFG: text, control, reference joined by '+'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift", type=float, default=None)
    p.add_argument("--scheduler", choices=("unipc", "euler"), default="unipc")
    p.add_argument("--window", type=int, default=81, help="temporal window in frames (4k+1)")
    p.add_argument("--overlap", type=int, default=16, help="overlap between windows in frames")
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bf16", choices=("fp32", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2"))
    p.add_argument("--offload", nargs="?", const="model", default=False, choices=("model", "blocks"),
                   help="keep idle modules on the CPU ('model') or also stream transformer blocks ('blocks')")
    p.set_defaults(func=run_generate)


__all__ = ["add_cli", "add_encoders", "add_generate_cli", "load_train_state", "run_generate", "run_train", "save_train_state", "train"]
