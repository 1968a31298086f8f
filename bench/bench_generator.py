"""Generator sampler vs a plain diffusers denoising loop: time and peak memory, side by side.

    python bench/bench_generator.py [--device cpu|cuda] [--frames 33] [--size 128] [--steps 8]
                                    [--repeats 5] [--dtype fp32|bf16] [--threads N]

Both run the *same* small random Wan transformer (Fun-Control layout, 4 layers × width 256, image
branch on, CFG on text with distinct prompt/negative embeddings) with the same UniPC flow
scheduler, seed and prepared conditions; only the loop differs:

* ours: ``Generator.denoise`` (windowing bookkeeping, condition dropping, CFG, progress);
* plain: ``for t in timesteps: v_c, v_u = transformer(...); x = scheduler.step(v_u + s·(v_c − v_u))``,
  i.e. diffusers' own pipeline loop without the pipeline.

Prints the wall time of each (median and best of interleaved repeats; on the CPU also the process
CPU time, which other jobs on a shared machine disturb far less), the ratios, whether the outputs
are bit-identical, and the peak memory of each during one run (CPU: the C heap in use — glibc
``mallinfo2`` — sampled after every aten op, minus the level before the run; exact for what the run
allocates, unlike RSS, which allocator caches and pages blur. CUDA: growth of
``torch.cuda.max_memory_allocated``).
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def small_config():
    from expportrait_core.generator.config import ClipVisionConfig, tiny_config

    cfg = tiny_config("fun_control")
    cfg.transformer.update(num_attention_heads=2, attention_head_dim=128, num_layers=4, ffn_dim=1024,
                           text_dim=64, freq_dim=256, image_dim=64, added_kv_proj_dim=256)
    cfg.clip = ClipVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=3,
                                patch_size=8, image_size=32)
    cfg.validate()
    return cfg


def setup(args):
    from expportrait_core.generator.model import build_generator

    torch.manual_seed(0)
    gen = build_generator(small_config(), seed=0, device=args.device, dtype=args.dtype)
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(1, 3, args.size, args.size, generator=g)
    ctrl = torch.rand(1, 3, args.frames, args.size, args.size, generator=g)
    pe = torch.randn(12, gen.config.text_dim, generator=g)
    ne = torch.randn(6, gen.config.text_dim, generator=g)
    cond = gen.prepare(ref, ctrl, None, (10_000, 0), prompt_embeds=pe, negative_prompt_embeds=ne)
    # conditions live on the device for both loops
    for k in ("text", "negative_text", "image_embeds", "ref_concat", "control_latents"):
        setattr(cond, k, getattr(cond, k).to(args.device))
    noise = torch.randn(1, gen.config.z_dim, cond.n_latent, args.size // 8, args.size // 8, generator=g)
    return gen, cond, noise


def ours(gen, cond, noise, args):
    return gen.denoise(noise, cond, steps=args.steps, cfg=args.cfg, cfg_on="text", scheduler="unipc", shift=3.0)


@torch.no_grad()
def plain(gen, cond, noise, args):
    from expportrait_core.generator.sampling import make_scheduler

    tr, dev, dt = gen.transformer, gen.device, gen.dtype
    sched = make_scheduler("unipc", 3.0)
    sched.set_timesteps(args.steps, device=dev)
    x = noise.to(dev, torch.float32)
    cond_in = torch.cat([cond.control_latents, cond.ref_concat], dim=1)
    text, neg, img = cond.text.to(dt), cond.negative_text.to(dt), cond.image_embeds.to(dt)
    for t in sched.timesteps:
        inp = torch.cat([x, cond_in], dim=1).to(dt)
        kw = dict(hidden_states=inp, timestep=t.expand(1), encoder_hidden_states_image=img, return_dict=False)
        vc = tr(encoder_hidden_states=text, **kw)[0].float()
        vu = tr(encoder_hidden_states=neg, **kw)[0].float()
        x = sched.step(vu + args.cfg * (vc - vu), t, x, return_dict=False)[0]
    return x


def _sync(dev):
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


class _MallInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _malloc_in_use() -> int:
    """Bytes the C heap has handed out (glibc ``mallinfo2``: arena blocks in use + mmapped blocks)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


class _PeakAfterEachOp(TorchDispatchMode):
    """Samples the heap after every aten op (the maximum is the run's peak) and counts the ops."""

    def __init__(self, sample_heap: bool = True) -> None:
        super().__init__()
        self.peak = 0
        self.ops = 0
        self.sample_heap = sample_heap

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        if self.sample_heap:
            self.peak = max(self.peak, _malloc_in_use())
        return out


def count_ops(fn, gen, cond, noise, args) -> int:
    """aten ops one run dispatches: a load-independent measure of loop overhead."""
    with _PeakAfterEachOp(sample_heap=False) as p:
        fn(gen, cond, noise, args)
    return p.ops


def measure_peak(fn, gen, cond, noise, args) -> int:
    """Peak memory growth (bytes) of one run of ``fn``, after a warm-up run."""
    fn(gen, cond, noise, args)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(gen, cond, noise, args)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = _malloc_in_use()
    with _PeakAfterEachOp() as p:
        fn(gen, cond, noise, args)
    return p.peak - base


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen, cond, noise = setup(args)
    a, b = ours(gen, cond, noise, args), plain(gen, cond, noise, args)  # warm-up and equality
    identical = torch.equal(a, b)
    times = {"ours": [], "plain": []}
    cpu = {"ours": [], "plain": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("plain", plain)):
            _sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn(gen, cond, noise, args)
            _sync(args.device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    cmed = {k: sorted(v)[len(v) // 2] for k, v in cpu.items()}
    mem = {name: measure_peak(fn, gen, cond, noise, args) for name, fn in (("ours", ours), ("plain", plain))}
    ops = {name: count_ops(fn, gen, cond, noise, args) for name, fn in (("ours", ours), ("plain", plain))}
    n_tok = cond.n_latent * (args.size // 16) ** 2
    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {dev_name}, dtype {args.dtype}: {args.frames} frames {args.size}x{args.size} "
          f"({n_tok} tokens), {args.steps} UniPC steps, cfg {args.cfg} (2 passes/step), repeats {args.repeats}")
    print(f"time  median ours {med['ours']:.3f} s  plain {med['plain']:.3f} s  ratio {med['ours'] / med['plain']:.3f};  "
          f"best ours {best['ours']:.3f} s  plain {best['plain']:.3f} s  ratio {best['ours'] / best['plain']:.3f}")
    print(f"      all ours {[round(t, 3) for t in times['ours']]}, plain {[round(t, 3) for t in times['plain']]}")
    if not args.device.startswith("cuda"):
        # process CPU time is far less disturbed by other jobs on a shared machine than wall time
        print(f"cpu   median ours {cmed['ours']:.3f} s  plain {cmed['plain']:.3f} s  ratio {cmed['ours'] / cmed['plain']:.3f}")
    print(f"peak  ours {mem['ours'] / 2**20:.1f} MiB  plain {mem['plain'] / 2**20:.1f} MiB  "
          f"ratio {mem['ours'] / max(mem['plain'], 1):.3f}")
    print(f"aten ops per run  ours {ops['ours']}  plain {ops['plain']}")
    print(f"outputs bit-identical: {identical}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
