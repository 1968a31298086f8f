"""GPU check: pure-PyTorch renderer (CPU and CUDA) vs the nvdiffrast backend.

    python bench/gpu_check.py [--sizes 256,512,1024] [--repeats 20] [--faces 20908] [--big-faces 200000]

Needs a CUDA machine with ``nvdiffrast`` importable (``pip install diffrp-nvdiffrast``; its CUDA
plugin compiles on first use and needs ``nvcc``). Without nvdiffrast it still checks and times
the torch backend on CUDA against the CPU.

Checks, on the same mesh and camera, nvdiffrast vs the CPU torch backend (the reference):
mask IoU > 0.99 and mean normal angle error < 1 degree on pixels covered by both, plus depth
agreement and the cosine similarity of vertex gradients of the same loss. Times, per size:
CPU torch forward, CUDA torch forward, CUDA nvdiffrast forward, and forward+backward on CUDA.
Prints one line per size and exits with status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataclasses  # noqa: E402

from expportrait_core.render import Camera, RenderOutput, available_backends, render_normals  # noqa: E402
from expportrait_core.render.meshes import head_proxy_mesh  # noqa: E402


def _time(fn, repeats: int, cuda: bool):
    cuda = cuda and torch.cuda.is_available()
    fn()
    fn()
    ts = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3), float(np.min(ts) * 1e3)


def _cpu(o: RenderOutput) -> RenderOutput:
    return RenderOutput(**{fl.name: getattr(o, fl.name).cpu() for fl in dataclasses.fields(o)})


def _compare(ref, other):
    ma, mb = ref.mask > 0, other.mask > 0
    iou = float((ma & mb).sum() / (ma | mb).sum().clamp_min(1))
    both = ma & mb
    cosang = (ref.normals.double() * other.normals.double()).sum(-1)[both].clamp(-1, 1)   # float32 acos floor ~0.02 deg
    ang = torch.rad2deg(torch.acos(cosang))
    dz = (ref.depth - other.depth)[both].abs()
    return iou, float(ang.mean()), float(ang.quantile(0.99)) if ang.numel() else 0.0, float(dz.max()) if dz.numel() else 0.0


def _grad(verts, faces, cam, backend, target):
    vv = verts.clone().requires_grad_(True)
    o = render_normals(vv, faces, cam, backend=backend)
    ((o.normals - target).abs() * o.mask[..., None]).sum().backward()
    return vv.grad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--faces", type=int, default=20908)
    ap.add_argument("--big-faces", type=int, default=200_000)
    ap.add_argument("--device", default="cuda", help="'cpu' dry-runs the script without a GPU (torch backend only)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: nothing to check on this machine (use --device cpu for a dry run).")
        return 1
    backs = available_backends()
    have_nvdr = "nvdiffrast" in backs and dev.type == "cuda"
    name_dev = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU dry run"
    print(f"# torch {torch.__version__}, {name_dev}, backends {backs}")
    if not have_nvdr:
        try:
            import nvdiffrast.torch  # noqa: F401
        except Exception as e:  # noqa: BLE001
            print(f"# nvdiffrast not usable ({type(e).__name__}: {e}); only the torch backend is checked")
    ok = True
    sizes = [int(s) for s in args.sizes.split(",") if s]
    meshes = [("head", args.faces)] + ([("big", args.big_faces)] if args.big_faces else [])
    for name, nf in meshes:
        v, f = head_proxy_mesh(nf)
        for size in sizes:
            cam = Camera.look_at((0.02, 0.01, 0.6), (0.0, 0.0, 0.0), fov_y_deg=25, width=size, height=size)
            vb, camg, vg, fg = v[None], cam.to(dev), v[None].to(dev), f.to(dev)
            with torch.no_grad():
                ref = render_normals(vb, f, cam, backend="torch")
                t_cpu = _time(lambda: render_normals(vb, f, cam, backend="torch"), max(3, args.repeats // 4), False)
                tg = render_normals(vg, fg, camg, backend="torch")
                t_tg = _time(lambda: render_normals(vg, fg, camg, backend="torch"), args.repeats, True)
            line = f"{name:5s} {nf:7d}f {size:5d}²  cpu-torch {t_cpu[0]:7.2f} ({t_cpu[1]:6.2f}) ms  " \
                   f"cuda-torch {t_tg[0]:6.2f} ({t_tg[1]:6.2f}) ms"
            iou_t, ang_t, _, dz_t = _compare(ref, _cpu(tg))
            line += f"  [cuda-torch vs cpu: IoU {iou_t:.5f}, angle {ang_t:.3f} deg]"
            target = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0)).to(dev)
            t_fb_t = _time(lambda: _grad(vg, fg, camg, "torch", target), max(3, args.repeats // 2), True)
            line += f"  fwd+bwd cuda-torch {t_fb_t[0]:6.2f} ms"
            if have_nvdr:
                with torch.no_grad():
                    nd = render_normals(vg, fg, camg, backend="nvdiffrast")
                    t_nd = _time(lambda: render_normals(vg, fg, camg, backend="nvdiffrast"), args.repeats, True)
                iou, ang, ang99, dz = _compare(ref, _cpu(nd))
                t_fb_n = _time(lambda: _grad(vg, fg, camg, "nvdiffrast", target), max(3, args.repeats // 2), True)
                g_t = _grad(vg, fg, camg, "torch", target).flatten()
                g_n = _grad(vg, fg, camg, "nvdiffrast", target).flatten()
                gcos = float(torch.nn.functional.cosine_similarity(g_t, g_n, dim=0))
                passed = iou > 0.99 and ang < 1.0
                ok &= passed
                line += (f"  nvdiffrast {t_nd[0]:6.2f} ({t_nd[1]:6.2f}) ms, fwd+bwd {t_fb_n[0]:6.2f} ms"
                         f"  [vs cpu: IoU {iou:.5f}, angle mean {ang:.3f} p99 {ang99:.3f} deg, depth max {dz * 1e3:.3f} mm,"
                         f" grad cosine {gcos:.4f}] {'PASS' if passed else 'FAIL'}")
            ok &= iou_t > 0.99 and ang_t < 1.0
            print(line, flush=True)
    print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
