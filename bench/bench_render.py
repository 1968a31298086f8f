"""Benchmark the pure-PyTorch normal-map renderer against a real OpenGL rasterizer (llvmpipe).

    python bench/bench_render.py [--sizes 256,512,1024] [--repeats 20] [--threads 0]
                                 [--mesh auto|synthetic|procedural] [--big-faces 200000]
                                 [--kernels numba,torch] [--methods spans,buckets]
                                 [--backward] [--no-gl] [--jit-cost]

For each mesh and image size it prints the median and best time per frame of

* ``render_normals`` forward (world vertices in; vertex normals, raster, barycentrics, normals,
  depth, dense outputs), float32, no autograd, with each kernel (``--kernels``: the numba
  kernels and the pure-PyTorch path; ``--methods`` are the PyTorch raster methods);
* the raster pass alone (visibility only: ``numba_kernels.rasterize_ids``, or
  ``rasterize_face_ids`` with the geometry precomputed);
* forward + backward of a normal-map L1 loss w.r.t. the vertices (``--backward``);
* OpenGL (moderngl + headless EGL; Mesa llvmpipe on a CPU-only machine) drawing the same mesh
  with per-vertex normals, uploading the vertices every frame and reading the image back to
  numpy, plus the mask IoU between the two renderers.

``--jit-cost`` first times, in fresh processes with an empty numba cache folder, the first
float32 forward + backward (JIT compile and cache write), then the same with the cache filled
(cache load and numba's start-up). ``--threads 0`` keeps torch's default thread count. Timings
on a shared machine vary a lot: the closures run interleaved (each repeat times every variant
once), and the script reports median and best wall time, median process CPU time, and the load
average.
Meshes: "synthetic" = the project's synthetic SMPL-X-format template (20,908 faces) when
``expportrait_core.head.synthetic`` can build it, "procedural" = :func:`head_proxy_mesh`;
the large mesh is always the procedural head with ``--big-faces`` faces.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from expportrait_core.render import Camera, RasterConfig, render_normals, vertex_normals  # noqa: E402
from expportrait_core.render.meshes import head_proxy_mesh  # noqa: E402
from expportrait_core.render.api import _numba_kernels  # noqa: E402
from expportrait_core.render.raster_torch import face_geometry, rasterize_face_ids  # noqa: E402


def _measure(fns: dict, repeats: int) -> dict:
    """Time several closures interleaved (so all see the same machine load): per name,
    (median wall ms, best wall ms, median process-CPU ms). Process CPU time counts every thread
    of this process (torch's and llvmpipe's workers), not other jobs on the machine."""
    for fn in fns.values():
        fn()
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (float(np.median(wall[k]) * 1e3), float(np.min(wall[k]) * 1e3), float(np.median(cpu[k]) * 1e3))
            for k in fns}


def _synthetic_mesh():
    """The project's synthetic SMPL-X-format template, recentred on the head, or None."""
    try:
        from expportrait_core.head.synthetic import ensure_synthetic_smplx  # type: ignore
        a = np.load(ensure_synthetic_smplx(), allow_pickle=False)
        v = torch.tensor(a["v_template"], dtype=torch.float32)
        f = torch.tensor(a["f"].astype(np.int64))
        return v, f
    except Exception as e:  # noqa: BLE001 - the bench falls back to the procedural head
        print(f"# synthetic SMPL-X template unavailable ({type(e).__name__}: {e}); using the procedural head")
        return None


def _portrait_camera(v: torch.Tensor, size: int) -> Camera:
    """Frame the top 0.3 m of the mesh (head and neck) from the front, like a portrait."""
    top = float(v[:, 1].max())
    sel = v[v[:, 1] > top - 0.3]
    c = sel.mean(0)
    c[2] = float(v[:, 2].mean())
    return Camera.look_at((float(c[0]), float(c[1]), float(c[2]) + 0.75), tuple(c.tolist()), fov_y_deg=24,
                          width=size, height=size)


def bench_mesh(name: str, v: torch.Tensor, f: torch.Tensor, sizes, args) -> list:
    rows = []
    vn = vertex_normals(v[None], f)[0].numpy()
    for size in sizes:
        cam = _portrait_camera(v, size)
        vb = v[None]
        row = {"mesh": name, "faces": int(f.shape[0]), "size": size}
        fns = {}
        fx, fy, cx, cy, R, t = cam.params(1)
        vc, xyz = cam.world_to_camera_xyz(vb)
        geo = face_geometry(vc, f)
        target = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))

        def fwd_bwd(cfg):
            vv = vb.clone().requires_grad_(True)
            o = render_normals(vv, f, cam, config=cfg)
            ((o.normals - target).abs().sum(-1) * o.mask).sum().backward()

        for variant in _variants(args):
            kernel, _, method = variant.partition("/")
            cfg = RasterConfig(method=method or "spans", kernel=kernel)
            fns[f"fwd_{variant}"] = (lambda cfg=cfg: render_normals(vb, f, cam, config=cfg))
            if variant == "numba":
                nk = _numba_kernels()
                fns[f"raster_{variant}"] = (lambda nk=nk: nk.rasterize_ids(xyz, f, v.shape[0], fx, fy, cx, cy,
                                                                           size, size, True, 1e-4))
            else:
                fns[f"raster_{variant}"] = (lambda cfg=cfg: rasterize_face_ids(vc, f, fx, fy, cx, cy, size, size,
                                                                               config=cfg, geometry=geo))
            if args.backward:
                fns[f"fwd_bwd_{variant}"] = (lambda cfg=cfg: fwd_bwd(cfg))
        out = render_normals(vb, f, cam)
        row["coverage"] = float(out.mask.mean())
        gl = None
        if not args.no_gl:
            try:
                from expportrait_core.render.gl_reference import GLNormalRenderer
                gl = GLNormalRenderer(f.numpy(), size, size, v.shape[0])
                vnp, a = v.numpy(), [x.numpy() for x in (fx, fy, cx, cy, R, t)]
                fns["gl"] = lambda: gl.render(vnp, vn, a[0][0], a[1][0], a[2][0], a[3][0], a[4][0], a[5][0])
                img = fns["gl"]()
                row["gl_renderer"] = gl.renderer
                m_gl, m_ours = img.sum(-1) > 0, out.mask[0].numpy() > 0
                row["iou_vs_gl"] = float((m_gl & m_ours).sum() / max(1, (m_gl | m_ours).sum()))
            except Exception as e:  # noqa: BLE001
                row["gl_error"] = f"{type(e).__name__}: {e}"
        row.update(_measure(fns, args.repeats))      # (inputs need no grad: forwards build no graph)
        if gl is not None:
            gl.release()
        rows.append(row)
        _print_row(row, args)
    return rows


def _variants(args) -> list:
    """Timed renderer variants: "numba", and "torch/<method>" per PyTorch raster method."""
    out = []
    for k in args.kernels:
        if k == "numba":
            out.append("numba")
        else:
            out += [f"torch/{m}" for m in args.methods]
    return out


def _fmt(t) -> str:
    return f"{t[0]:7.2f} / {t[1]:6.2f} / {t[2]:6.2f}"


def _print_row(r: dict, args) -> None:
    print(f"{r['mesh']:>10s} {r['faces']:>7d}f {r['size']:>5d}²  cov {r['coverage']:.2f}", flush=True)
    for v in _variants(args):
        parts = [f"    {v:14s} fwd {_fmt(r[f'fwd_{v}'])}  raster {_fmt(r[f'raster_{v}'])}"]
        if f"fwd_bwd_{v}" in r:
            parts.append(f"fwd+bwd {_fmt(r[f'fwd_bwd_{v}'])}")
        if "gl" in r:
            ours = r[f"fwd_{v}"]
            parts.append(f"ours/GL median {ours[0] / r['gl'][0]:.2f} best {ours[1] / r['gl'][1]:.2f} "
                         f"CPU {ours[2] / r['gl'][2]:.2f}")
        print("  ".join(parts), flush=True)
    if "gl" in r:
        print(f"    {'llvmpipe GL':14s} fwd {_fmt(r['gl'])}  mask IoU vs ours {r['iou_vs_gl']:.5f}  "
              f"({r['gl_renderer']})", flush=True)
    elif "gl_error" in r:
        print(f"    GL unavailable: {r['gl_error']}", flush=True)


_JIT_PROBE = """
import time, torch
torch.set_num_threads(1)
t0 = time.perf_counter()
from expportrait_core.render import Camera, RasterConfig, render_normals
from expportrait_core.render.meshes import head_proxy_mesh
v, f = head_proxy_mesh(2000)
cam = Camera.look_at((0.0, 0.0, 0.6), (0.0, 0.0, 0.0), fov_y_deg=25, width=64, height=64)
t1 = time.perf_counter()
vv = v[None].clone().requires_grad_(True)
render_normals(vv, f, cam, config=RasterConfig(kernel="numba")).normals.sum().backward()
t2 = time.perf_counter()
render_normals(vv, f, cam, config=RasterConfig(kernel="numba")).normals.sum().backward()
t3 = time.perf_counter()
print(f"{t2 - t1:.2f} {t3 - t2:.4f}")
"""


def jit_cost() -> None:
    """One-time cost of the numba kernels (float32 forward + backward), cold and cached."""
    root = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d, PYTHONPATH=root)
        for what in ("compile + cache write", "cache load"):
            c0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", _JIT_PROBE], env=env, capture_output=True, text=True, cwd=root)
            if res.returncode != 0:
                print(f"# jit cost: probe failed: {res.stderr.strip().splitlines()[-1:]}")
                return
            first, again = res.stdout.split()
            print(f"# numba {what}: first render_normals fwd+bwd {float(first):.2f} s "
                  f"(then {float(again) * 1e3:.1f} ms); whole process {time.perf_counter() - c0:.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--mesh", default="auto", choices=["auto", "synthetic", "procedural"])
    ap.add_argument("--big-faces", type=int, default=200_000, help="faces of the large mesh (0 = skip)")
    ap.add_argument("--kernels", default="numba,torch", help="comma list of renderer kernels: numba,torch")
    ap.add_argument("--methods", default="spans", help="comma list of PyTorch raster methods: spans,buckets")
    ap.add_argument("--backward", action="store_true", help="also time forward + backward")
    ap.add_argument("--no-gl", action="store_true", help="skip the OpenGL baseline")
    ap.add_argument("--jit-cost", action="store_true", help="also time the numba JIT compile and cache load")
    args = ap.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    args.kernels = [k for k in args.kernels.split(",") if k]
    if "numba" in args.kernels and _numba_kernels() is None:
        print("# numba is not importable: timing the PyTorch kernel only")
        args.kernels = [k for k in args.kernels if k != "numba"] or ["torch"]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    nk = _numba_kernels() if "numba" in args.kernels else None
    nb = f", numba {nk.numba.__version__}" if nk is not None else ""
    print(f"# torch {torch.__version__}{nb}, {torch.get_num_threads()} threads, cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.jit_cost and nk is not None:
        jit_cost()
    print("# ms per frame as  median wall / best wall / median process-CPU  over interleaved repeats")
    meshes = []
    syn = _synthetic_mesh() if args.mesh in ("auto", "synthetic") else None
    if syn is not None:
        meshes.append(("synthetic", *syn))
    else:
        meshes.append(("procedural", *head_proxy_mesh(20908)))
    if args.big_faces > 0:
        meshes.append(("proc-big", *head_proxy_mesh(args.big_faces)))
    for name, v, f in meshes:
        bench_mesh(name, v, f, sizes, args)
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
