"""GPU check of the DiT generator (run on a CUDA machine; every section skips what it cannot load).

    python bench/gpu_generator_check.py [--steps 10] [--frames 81] [--height 480] [--width 832]
        [--long-frames 161] [--skip-pipeline] [--json OUT.json]
        [--model BUNDLE_OR_FOLDER --base WAN.safetensors --vae VAE --clip-vision CLIP]

Sections:
1. tiny model on CUDA: fp32 CUDA vs CPU agreement; bf16, fp8 weight storage, ``offload="model"``
   (must equal no offload) and ``offload="blocks"`` run and give finite frames.
2. our minimal CLIP ViT vs ``transformers.CLIPVisionModel`` (ViT-H/14 shapes, random weights).
3. a 1.3B-class Wan 2.1 transformer (30 layers, width 1536, I2V layout, random weights — timing
   does not depend on the values) with the real-size Wan VAE: seconds per clip of
   ``Generator.sample`` vs diffusers' ``WanImageToVideoPipeline`` on the same modules, scheduler,
   steps and CFG; peak GPU memory of each; the ExpPortrait encoders' overhead.
4. a long clip (``--long-frames``) in 81-frame windows: frame count, time, peak memory vs one window.
5. optional real checkpoints (``--model/--base/--vae/--clip-vision``): load time and seconds per clip.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS: dict = {}
DEV = "cuda"  # --device; "cpu" only for a dry run of this script's logic at small sizes


def section(name):
    def deco(fn):
        def run(*a, **k):
            print(f"\n== {name}", flush=True)
            t0 = time.perf_counter()
            try:
                fn(*a, **k)
                RESULTS.setdefault(name, {})["status"] = "ok"
            except _Skip as e:
                print(f"SKIPPED: {e}")
                RESULTS.setdefault(name, {})["status"] = f"skipped: {e}"
            except Exception as e:  # report and go on with the other sections
                traceback.print_exc()
                print(f"FAILED: {type(e).__name__}: {e}")
                RESULTS.setdefault(name, {})["status"] = f"failed: {type(e).__name__}: {e}"
            print(f"({time.perf_counter() - t0:.1f} s)", flush=True)
        return run
    return deco


class _Skip(Exception):
    pass


def _rec(sec, **kv):
    RESULTS.setdefault(sec, {}).update(kv)
    print("  " + ", ".join(f"{k}={v}" for k, v in kv.items()), flush=True)


def _timed(fn):
    """(result, seconds, peak GPU memory growth in GiB; 0 on the CPU)."""
    cuda = DEV.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return out, dt, ((torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else 0.0)


@section("tiny")
def tiny_checks():
    from expportrait_core.generator import build_generator, tiny_config

    sec = "tiny"
    g = torch.Generator().manual_seed(0)
    ref, ctrl, rn = torch.rand(1, 32, 32, 3, generator=g), torch.rand(9, 32, 32, 3, generator=g), torch.rand(1, 32, 32, 3, generator=g)
    kw = dict(steps=3, cfg=2.0, seed=1)
    cpu = build_generator(tiny_config(), seed=0).sample(ref, ctrl, rn, **kw)
    cuda = build_generator(tiny_config(), seed=0, device=DEV).sample(ref, ctrl, rn, **kw)
    _rec(sec, cuda_vs_cpu_fp32_max_abs=float((cpu - cuda).abs().max()))
    for dt in ("bf16", "fp8_e4m3fn"):
        out = build_generator(tiny_config(), seed=0, device=DEV, dtype=dt).sample(ref, ctrl, rn, **kw)
        _rec(sec, **{f"{dt}_finite": bool(torch.isfinite(out).all()), f"{dt}_vs_fp32_mean_abs": float((out - cuda).abs().mean())})
    off = build_generator(tiny_config(), seed=0, device=DEV, offload="model").sample(ref, ctrl, rn, **kw)
    _rec(sec, offload_model_equal=bool(torch.equal(off, cuda)))
    blk = build_generator(tiny_config(), seed=0, device=DEV, offload="blocks").sample(ref, ctrl, rn, **kw)
    _rec(sec, offload_blocks_max_abs=float((blk - cuda).abs().max()))


@section("clip")
def clip_check():
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModel
    except Exception as e:
        raise _Skip(f"transformers not importable ({e})")
    from expportrait_core.generator.clip_vision import ClipVisionEncoder, normalise_clip_keys
    from expportrait_core.generator.config import ClipVisionConfig

    torch.manual_seed(0)
    hf = CLIPVisionModel(CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=16,
                                          num_hidden_layers=32, patch_size=14, image_size=224, hidden_act="gelu",
                                          layer_norm_eps=1e-5)).to(DEV).eval()
    ours = ClipVisionEncoder(ClipVisionConfig()).to(DEV).eval()
    ours.load_state_dict(normalise_clip_keys(hf.state_dict()), strict=True)
    img = torch.rand(1, 3, 480, 832, device=DEV)
    with torch.no_grad():
        a = ours(img)
        b = hf(pixel_values=ours.preprocess(img), output_hidden_states=True).hidden_states[-2]
    _rec("clip", shape=tuple(a.shape), max_abs=float((a - b).abs().max()), ref_abs_mean=float(b.abs().mean()))


def _wan13b(layout="i2v", with_clip=True, small=False):
    from expportrait_core.generator.config import ClipVisionConfig, GeneratorConfig

    tr = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=36 if layout != "fun_control" else 48,
              out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
              qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280 if with_clip else None,
              added_kv_proj_dim=1536 if with_clip else None, rope_max_seq_len=1024)
    if small:  # dry run of the script's logic on a CPU
        tr.update(num_layers=2, ffn_dim=512)
    return GeneratorConfig(layout=layout, transformer=tr, vae={}, clip=ClipVisionConfig() if with_clip else None,
                           flow_shift=3.0, cfg_on="text")


def _random_generator(cfg, dtype="bf16"):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from expportrait_core.generator.clip_vision import ClipVisionEncoder
    from expportrait_core.generator.model import Generator

    torch.manual_seed(0)
    with torch.device(DEV):
        tr = WanTransformer3DModel(**cfg.transformer)
        vae = AutoencoderKLWan(**cfg.vae)
        clip = ClipVisionEncoder(cfg.clip) if cfg.clip else None
    return Generator(cfg, tr, vae, clip, device=DEV, dtype=dtype)


def _inputs(args, frames):
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, args.height, args.width, 3, generator=g)
    ctrl = torch.rand(frames, args.height // 4, args.width // 4, 3, generator=g)
    ctrl = torch.nn.functional.interpolate(ctrl.permute(0, 3, 1, 2), size=(args.height, args.width)).permute(0, 2, 3, 1)
    pe, ne = torch.randn(24, 4096, generator=g), torch.randn(12, 4096, generator=g)
    return ref, ctrl, pe, ne


@section("wan1.3b")
def timing_13b(args):
    sec = "wan1.3b"
    gen = _random_generator(_wan13b("i2v", small=DEV == "cpu"), dtype=args.dtype)
    n_params = sum(p.numel() for p in gen.transformer.parameters()) / 1e9
    ref, ctrl, pe, ne = _inputs(args, args.frames)
    kw = dict(steps=args.steps, cfg=5.0, seed=0, cfg_on="text", prompt_embeds=pe, negative_prompt_embeds=ne, scheduler="unipc")
    gen.sample(ref, ctrl[:5], steps=1, cfg=5.0, cfg_on="text", prompt_embeds=pe, negative_prompt_embeds=ne)  # warm-up
    out, t_ours, m_ours = _timed(lambda: gen.sample(ref, ctrl, **kw))
    _rec(sec, transformer_params_B=round(n_params, 3), frames=out.shape[0], size=f"{out.shape[2]}x{out.shape[1]}",
         steps=args.steps, ours_s=round(t_ours, 2), ours_peak_GiB=round(m_ours, 2), ours_finite=bool(torch.isfinite(out).all()))
    pipe = None
    if not args.skip_pipeline:
        try:
            from diffusers import WanImageToVideoPipeline

            from expportrait_core.generator.sampling import make_scheduler

            from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

            # the pipeline takes either an image encoder or precomputed embeddings without the image,
            # but it needs the image for the first-frame latent: give it the same CLIP as ours
            c = gen.config.clip
            hf_clip = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_attention_heads=c.num_attention_heads,
                num_hidden_layers=c.num_hidden_layers, patch_size=c.patch_size, image_size=c.image_size,
                hidden_act=c.hidden_act, layer_norm_eps=c.layer_norm_eps))
            sd = gen.clip.state_dict()
            if not any(k.startswith("vision_model.") for k in hf_clip.state_dict()):  # transformers >= 5
                sd = {k[len("vision_model."):]: v for k, v in sd.items()}
            hf_clip.load_state_dict(sd, strict=False)
            hf_clip.to(DEV, gen.dtype).eval()
            pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=gen.vae, scheduler=make_scheduler("unipc", 3.0),
                                           image_processor=CLIPImageProcessor(), image_encoder=hf_clip, transformer=gen.transformer)
        except Exception as e:
            _rec(sec, pipeline=f"skipped ({type(e).__name__}: {str(e).strip().splitlines()[0]})")
        if pipe is not None:
            from PIL import Image

            from expportrait_core.generator.model import pad_text

            img = Image.fromarray((ref[0].numpy() * 255).astype("uint8"))
            p = pad_text(pe, 4096).to(DEV, gen.dtype)
            n = pad_text(ne, 4096).to(DEV, gen.dtype)

            def run(steps):
                return pipe(image=img, prompt_embeds=p, negative_prompt_embeds=n, height=args.height,
                            width=args.width, num_frames=args.frames, num_inference_steps=steps, guidance_scale=5.0,
                            generator=torch.Generator("cpu").manual_seed(0), output_type="pt").frames

            run(1)  # warm-up
            _, t_pipe, m_pipe = _timed(lambda: run(args.steps))
            _rec(sec, diffusers_pipeline_s=round(t_pipe, 2), diffusers_peak_GiB=round(m_pipe, 2),
                 time_ratio_ours_over_pipeline=round(t_ours / t_pipe, 3), mem_ratio=round(m_ours / max(m_pipe, 1e-9), 3))
            del pipe, hf_clip
    # ExpPortrait encoders on the same transformer
    from expportrait_core.generator.config import ControlEncoderConfig
    from expportrait_core.generator.train import add_encoders

    add_encoders(gen, ControlEncoderConfig(out_dim=gen.config.inner_dim, zero_init=False))
    gen.pose_encoder.to(gen.dtype)
    gen.ref_encoder.to(gen.dtype)
    out, t_exp, m_exp = _timed(lambda: gen.sample(ref, ctrl, ref[:1], **{**kw, "cfg_on": "control+reference"}))
    _rec(sec, expportrait_s=round(t_exp, 2), expportrait_peak_GiB=round(m_exp, 2), expportrait_overhead=round(t_exp / t_ours, 3))
    RESULTS["_gen"] = gen  # reused by the long-clip section


@section("long")
def long_clip(args):
    gen = RESULTS.pop("_gen", None)
    if gen is None:
        raise _Skip("needs the model of the wan1.3b section")
    ref, ctrl, pe, ne = _inputs(args, args.long_frames)
    kw = dict(steps=args.long_steps, cfg=5.0, seed=0, prompt_embeds=pe, negative_prompt_embeds=ne, window=81, overlap=16)
    _, t1, m1 = _timed(lambda: gen.sample(ref, ctrl[:81], ref[:1], **kw))
    out, t2, m2 = _timed(lambda: gen.sample(ref, ctrl, ref[:1], **kw))
    _rec("long", frames=out.shape[0], steps=args.long_steps, one_window_s=round(t1, 2), long_s=round(t2, 2),
         one_window_peak_GiB=round(m1, 2), long_peak_GiB=round(m2, 2), finite=bool(torch.isfinite(out).all()))


@section("real")
def real_checkpoint(args):
    if not (args.model or args.base):
        raise _Skip("no --model/--base given (no real checkpoints on this machine)")
    from expportrait_core.generator import load_generator

    t0 = time.perf_counter()
    gen = load_generator(args.model or args.base, base=args.base if args.model else None, vae=args.vae,
                         clip_vision=args.clip_vision, dtype=args.dtype, device=DEV)
    _rec("real", load_s=round(time.perf_counter() - t0, 1), layout=gen.config.layout)
    ref, ctrl, _, _ = _inputs(args, args.frames)
    out, t, m = _timed(lambda: gen.sample(ref, ctrl, ref[:1], steps=args.steps, cfg=5.0, seed=0))
    _rec("real", seconds_per_clip=round(t, 1), peak_GiB=round(m, 2), frames=out.shape[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--long-frames", type=int, default=161)
    ap.add_argument("--long-steps", type=int, default=4)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--sections", default="tiny,clip,wan1.3b,long,real")
    ap.add_argument("--model")
    ap.add_argument("--base")
    ap.add_argument("--vae")
    ap.add_argument("--clip-vision")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda", help="cuda; 'cpu' only dry-runs the logic (use tiny sizes)")
    args = ap.parse_args()
    global DEV
    DEV = args.device
    if DEV.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    import diffusers

    name = torch.cuda.get_device_name() if DEV.startswith("cuda") else "CPU (dry run)"
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {name}")
    todo = args.sections.split(",")
    if "tiny" in todo:
        tiny_checks()
    if "clip" in todo:
        clip_check()
    if "wan1.3b" in todo:
        timing_13b(args)
    if "long" in todo:
        long_clip(args)
    RESULTS.pop("_gen", None)
    if "real" in todo:
        real_checkpoint(args)
    if args.json:
        Path(args.json).write_text(json.dumps(RESULTS, indent=2, default=str))
    print("\n" + json.dumps(RESULTS, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
