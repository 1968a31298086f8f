"""Tests for the differentiable normal-map renderer (expportrait_core.render)."""
from __future__ import annotations

import math

import pytest
import torch

from expportrait_core.errors import ExpPortraitError
from expportrait_core.render import (Camera, RasterConfig, available_backends, interpolate, rasterize,
                                     render_normals, vertex_normals)
from expportrait_core.render.meshes import head_proxy_mesh, uv_sphere

F64 = torch.float64
HAS_NVDR = "nvdiffrast" in available_backends()
try:
    import numba  # noqa: F401
    HAS_NUMBA = True
except ImportError:
    HAS_NUMBA = False
NUMBA = RasterConfig(kernel="numba")
TORCH = RasterConfig(kernel="torch")
KERNELS = [pytest.param("numba", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")), "torch"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small renders gain nothing from intra-op threads, and on a shared, oversubscribed CPU the
    OpenMP workers stall each other (seconds per call); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _quad(x0, x1, y0, y1, z, dtype=torch.float32):
    """Camera-facing rectangle at depth z (world = camera for an identity camera), 2 faces, CCW
    seen from the camera (which looks along +z, so the outward normal is -z)."""
    v = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=dtype)
    f = torch.tensor([[0, 2, 1], [0, 3, 2]])
    return v, f


def _ray_sphere_normals(cam: Camera, centre_cam: torch.Tensor, radius: float):
    """Analytic camera-space (OpenCV) unit normals and hit mask of a sphere, per pixel centre."""
    H, W = cam.height, cam.width
    fx, fy, cx, cy, _, _ = cam.params(1, dtype=F64)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64) + 0.5, torch.arange(W, dtype=F64) + 0.5, indexing="ij")
    d = torch.stack([(xs - cx) / fx, (ys - cy) / fy, torch.ones_like(xs)], -1)
    d = d / d.norm(dim=-1, keepdim=True)
    c = centre_cam.to(F64)
    b = (d * c).sum(-1)
    disc = b * b - (c * c).sum() + radius ** 2
    hit = disc > 0
    t = b - disc.clamp_min(0).sqrt()
    n = (t[..., None] * d - c) / radius
    return n, hit, disc


def _gl_to_cv(n_gl):
    return n_gl * torch.tensor([1.0, -1.0, -1.0], dtype=n_gl.dtype)


# ------------------------------------------------------------------------------------- camera
def test_camera_projection_conventions():
    cam = Camera(fx=300.0, fy=320.0, cx=64.3, cy=50.7, R=torch.eye(3), t=torch.zeros(3), width=128, height=100)
    p = cam.project(torch.tensor([[[0.0, 0.0, 2.0], [0.2, -0.1, 1.0]]]))
    assert torch.allclose(p[0, 0], torch.tensor([64.3, 50.7]))                 # optical axis -> (cx, cy)
    assert torch.allclose(p[0, 1], torch.tensor([64.3 + 60.0, 50.7 - 32.0]))   # y down
    # look_at: eye on +z looking at the origin with +y up -> world +x is image right, +y is up
    la = Camera.look_at((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), fov_y_deg=60, width=64, height=64)
    pts = la.project(torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0]]]))[0]
    assert torch.allclose(pts[0], torch.tensor([32.0, 32.0]), atol=1e-5)
    assert pts[1, 0] > 32.0 and pts[2, 1] < 32.0
    assert torch.allclose(la.world_to_camera(torch.zeros(1, 1, 3))[0, 0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    f = 32.0 / math.tan(math.radians(30.0))
    assert abs(float(la.fx) - f) < 1e-4
    with pytest.raises(ExpPortraitError):
        Camera.look_at((0, 0, 1), (0, 0, 1), fov_y_deg=30)
    with pytest.raises(ExpPortraitError):
        Camera.look_at((0, 0, 1), (0, 0, 0), (0, 0, 1), fov_y_deg=30)


def test_camera_batch_index_to():
    R = torch.stack([torch.eye(3), torch.eye(3)])
    cam = Camera(torch.tensor([100.0, 200.0]), 150.0, 32.0, 32.0, R, torch.zeros(2, 3), 64, 64)
    assert cam.batch_size == 2
    fx, fy, cx, cy, Rb, tb = cam.params(2)
    assert fx.tolist() == [100.0, 200.0] and fy.tolist() == [150.0, 150.0] and Rb.shape == (2, 3, 3)
    one = cam.index(1)
    assert float(one.fx[0]) == 200.0 and one.R.shape == (3, 3)
    assert cam.to(dtype=F64).R.dtype == F64
    assert Camera.from_fov(40, 32, 32).batch(3).R.shape == (3, 3, 3)
    with pytest.raises(ExpPortraitError):
        cam.params(3)


def test_pixel_centre_convention_and_mask():
    """A quad spanning x in [10.2, 19.8] px covers columns 10..19; [10.6, 19.4] covers 11..18."""
    cam = Camera(100.0, 100.0, 0.0, 0.0, torch.eye(3), torch.zeros(3), 32, 32)
    z = 2.0
    for (x0, x1), cols in (((10.2, 19.8), range(10, 20)), ((10.6, 19.4), range(11, 19))):
        v, f = _quad(x0 * z / 100, x1 * z / 100, 4.2 * z / 100, 7.8 * z / 100, z)
        out = render_normals(v[None], f, cam)
        m = out.mask[0] > 0
        assert m.sum() == len(cols) * 4                                    # rows 4..7
        assert m[4:8][:, list(cols)].all()
        assert torch.allclose(out.depth[0][m], torch.tensor(z))
        assert (out.depth[0][~m] == 0).all()


# ------------------------------------------------------------------------------------- accuracy
def test_sphere_normals_match_analytic():
    verts, faces = uv_sphere(96, 192, radius=0.1)                       # 36,480 faces
    cam = Camera.look_at((0.03, -0.02, 0.45), (0.0, 0.0, 0.0), fov_y_deg=30, width=256, height=256)
    out = render_normals(verts[None], faces, cam)
    c_cam = cam.world_to_camera(torch.zeros(1, 1, 3))[0, 0]
    n_ref, hit, disc = _ray_sphere_normals(cam, c_cam, 0.1)
    m = out.mask[0] > 0
    inner = hit & (disc > 0.02 * disc.max())                            # away from the silhouette
    assert (m & inner).sum() == inner.sum()                             # no holes inside the disc
    assert (m & ~hit).sum() < 0.01 * hit.sum()                          # nothing far outside it
    n = _gl_to_cv(out.normals[0].double())
    both = m & hit
    ang = torch.rad2deg(torch.acos((n[both] * n_ref[both]).sum(-1).clamp(-1, 1)))
    assert ang.mean() < 1.0, ang.mean()
    # the encoding, at the pixel under the sphere centre: rgb = 0.5 * n_gl + 0.5, near (0.5, 0.5, 1)
    px, py = cam.project(torch.zeros(1, 1, 3))[0, 0].long().tolist()
    rgb = out.normal_rgb[0, py, px]
    expect = 0.5 * _gl_to_cv(n_ref[py, px]).float() + 0.5
    assert torch.allclose(rgb, expect, atol=0.01), (rgb, expect)
    assert rgb[2] > 0.99 and abs(float(rgb[0]) - 0.5) < 0.05 and abs(float(rgb[1]) - 0.5) < 0.05


def test_nearer_triangle_wins_both_orders():
    cam = Camera(60.0, 60.0, 16.0, 16.0, torch.eye(3), torch.zeros(3), 32, 32)
    near_tri = torch.tensor([[-0.3, -0.3, 1.0], [0.3, -0.3, 1.0], [0.0, 0.3, 1.0]])
    far_tri = torch.tensor([[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]])
    for method in ("spans", "buckets"):
        for order in (0, 1):
            v = torch.cat([near_tri, far_tri]) if order == 0 else torch.cat([far_tri, near_tri])
            f = torch.tensor([[0, 2, 1], [3, 5, 4]])
            out = render_normals(v[None], f, cam, config=RasterConfig(method=method))
            fr = rasterize(v[None], f, cam, config=RasterConfig(method=method))
            near_id = 0 if order == 0 else 1
            centre = fr.face_id[0, 16, 16]
            assert centre == near_id and torch.isclose(fr.depth[0, 16, 16], torch.tensor(1.0))
            assert (fr.face_id[0] == near_id).sum() > 20                  # near triangle visible
            assert (fr.face_id[0] == 1 - near_id).sum() > 20              # far one visible around it
            assert torch.equal(out.face_id, fr.face_id)


def test_tiny_quads_project_to_expected_pixels():
    """The covered-pixel centroid of small quads matches Camera.project of their centres."""
    R = torch.tensor([[0.98, -0.17, 0.1], [0.17, 0.98, 0.0], [-0.1, 0.0, 0.99]])
    R = torch.linalg.qr(R)[0]                                            # a proper rotation
    if torch.det(R) < 0:
        R = -R
    cam = Camera(410.0, 395.0, 131.7, 118.2, R, torch.tensor([0.01, -0.02, 0.8]), 256, 240)
    g = torch.Generator().manual_seed(3)
    pts = (torch.rand(6, 3, generator=g) - 0.5) * torch.tensor([0.3, 0.3, 0.2])
    for p in pts:
        pc = cam.world_to_camera(p[None, None])[0, 0]
        s = 5.0 * pc[2] / 400.0                                          # ~5 px half-size, in metres
        v_cam = torch.stack([pc + torch.tensor([dx, dy, 0.0]) for dx, dy in ((-s, -s), (s, -s), (s, s), (-s, s))])
        v_world = (v_cam - cam.t) @ cam.R                                # camera -> world
        f = torch.tensor([[0, 2, 1], [0, 3, 2]])
        out = render_normals(v_world[None], f, cam)
        ys, xs = torch.nonzero(out.mask[0] > 0, as_tuple=True)
        assert len(xs) > 50
        centroid = torch.stack([xs.float().mean() + 0.5, ys.float().mean() + 0.5])
        expected = cam.project(p[None, None])[0, 0]
        assert (centroid - expected).abs().max() < 0.5, (centroid, expected)


def test_depth_of_tilted_plane_matches_ray_intersection():
    cam = Camera(80.0, 90.0, 20.5, 15.0, torch.eye(3), torch.zeros(3), 40, 30)
    # plane z = 1 + 0.5 x - 0.2 y through a big quad
    corners = torch.tensor([[-0.8, -0.6], [0.8, -0.6], [0.8, 0.6], [-0.8, 0.6]], dtype=F64)
    z = 1.0 + 0.5 * corners[:, 0] - 0.2 * corners[:, 1]
    v = torch.cat([corners, z[:, None]], 1)
    f = torch.tensor([[0, 2, 1], [0, 3, 2]])
    fr = rasterize(v[None], f, cam.to(dtype=F64))
    ys, xs = torch.meshgrid(torch.arange(30, dtype=F64) + 0.5, torch.arange(40, dtype=F64) + 0.5, indexing="ij")
    dx, dy = (xs - 20.5) / 80.0, (ys - 15.0) / 90.0
    t = 1.0 / (1.0 - 0.5 * dx + 0.2 * dy)                               # z of the ray hit
    m = fr.mask[0]
    assert m.float().mean() > 0.5
    assert torch.allclose(fr.depth[0][m], t[m], rtol=1e-9, atol=1e-9)
    # barycentrics sum to 1 and reproduce the hit point when interpolating vertex positions
    assert torch.allclose(fr.bary[0][m].sum(-1), torch.ones(int(m.sum()), dtype=F64))
    p = interpolate(v[None], f, fr)[0]
    assert torch.allclose(p[..., 2][m], t[m], atol=1e-9)
    assert torch.allclose(p[..., 0][m], (dx * t)[m], atol=1e-9)


def test_watertight_jittered_grid():
    """Shared edges never leave cracks: a jittered grid plane covers every pixel inside it."""
    g = torch.Generator().manual_seed(0)
    n = 24
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, n + 1), torch.linspace(-1, 1, n + 1), indexing="ij")
    jit = (torch.rand(n + 1, n + 1, 2, generator=g) - 0.5) * (1.2 / n)
    jit[0, :] = 0
    jit[-1, :] = 0
    jit[:, 0] = 0
    jit[:, -1] = 0
    xy = torch.stack([xs, ys], -1) + jit
    zz = 2.0 + 0.3 * torch.sin(3 * xy[..., 0]) * torch.cos(2 * xy[..., 1])
    v = torch.cat([xy, zz[..., None]], -1).reshape(-1, 3)
    idx = torch.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    f = torch.cat([torch.stack([a, c, b], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    cam = Camera(97.3, 97.3, 63.1, 62.7, torch.eye(3), torch.zeros(3), 128, 128)
    for method in ("spans", "buckets"):
        out = render_normals(v[None], f, cam, config=RasterConfig(method=method))
        # every pixel centre inside the (un-jittered) outer square, with margin, is covered
        inner = torch.zeros(128, 128, dtype=torch.bool)
        lo, hi = int(63.1 - 0.95 * 97.3 / 2.3), int(63.1 + 0.95 * 97.3 / 2.3)
        inner[lo:hi, lo:hi] = True
        assert (out.mask[0][inner] > 0).all(), method
    assert torch.equal(render_normals(v[None], f, cam).face_id, out.face_id)
    # the same surface with reversed winding: culled away, or identical coverage without culling
    flipped = f[:, [0, 2, 1]]
    assert render_normals(v[None], flipped, cam).mask.sum() == 0
    back = render_normals(v[None], flipped, cam, cull_backfaces=False)
    assert torch.equal(back.face_id, out.face_id)
    assert torch.allclose(back.normals, -out.normals, atol=1e-6)          # normals follow the winding


def test_spans_and_buckets_agree_on_head_mesh():
    v, f = head_proxy_mesh(4000)
    cam = Camera.look_at((0.05, 0.02, 0.6), (0.0, 0.0, 0.0), fov_y_deg=25, width=160, height=128)
    a = rasterize(cam.world_to_camera(v[None]), f, cam, config=RasterConfig(method="spans"))
    b = rasterize(cam.world_to_camera(v[None]), f, cam,
                  config=RasterConfig(method="buckets", bucket_sizes=(1, 2, 4, 8), max_candidates=4096))
    assert a.mask.sum() > 3000
    assert (a.face_id != b.face_id).sum() <= 2                          # float ties at most
    # chunked spans give the same result
    c = rasterize(cam.world_to_camera(v[None]), f, cam, config=RasterConfig(max_candidates=1000))
    assert torch.equal(a.face_id, c.face_id)


def test_float32_matches_float64():
    v, f = head_proxy_mesh(6000)
    cam = Camera.look_at((0.0, 0.0, 0.6), (0.0, 0.0, 0.0), fov_y_deg=25, width=128, height=128)
    a = render_normals(v[None], f, cam)
    b = render_normals(v[None].double(), f, cam.to(dtype=F64))
    assert torch.equal(a.face_id, b.face_id)
    m = a.mask[0] > 0
    assert (a.depth.double() - b.depth).abs().max() < 1e-5              # metres
    cosang = (a.normals.double() * b.normals).sum(-1)[0][m]
    assert cosang.min() > math.cos(math.radians(0.1))


# ------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kernel", KERNELS)
def test_finite_difference_gradients_float64(kernel):
    cfg = RasterConfig(kernel=kernel)
    torch.manual_seed(0)
    v, f = uv_sphere(6, 8, 0.1, F64)
    v = v + 0.004 * torch.randn_like(v)
    cam = Camera.look_at((0.02, 0.01, 0.5), (0.0, 0.0, 0.0), fov_y_deg=20, width=40, height=40).to(dtype=F64)
    fid = render_normals(v[None], f, cam, config=cfg).face_id[0]
    interior = fid >= 0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            interior &= fid == torch.roll(fid, (dy, dx), (0, 1))
    assert interior.sum() > 300
    w = torch.randn(40, 40, 3, dtype=F64, generator=torch.Generator().manual_seed(1))

    def loss(vv):
        o = render_normals(vv[None], f, cam, config=cfg)
        return ((o.normals[0] * w).sum(-1) * interior).sum() + 3.0 * (o.depth[0] * w[..., 0] * interior).sum()

    vv = v.clone().requires_grad_(True)
    loss(vv).backward()
    eps = 1e-6
    num = torch.zeros_like(v)
    for i in range(v.shape[0]):
        for j in range(3):
            d = torch.zeros_like(v)
            d[i, j] = eps
            num[i, j] = (loss(v + d) - loss(v - d)) / (2 * eps)
    assert vv.grad.abs().max() > 1.0
    assert torch.allclose(vv.grad, num, rtol=1e-5, atol=1e-5 * float(num.abs().max()))


def test_custom_autograd_functions_gradcheck():
    """The hand-written backward passes of the pixel-level ops match numerical derivatives, and
    the forward matches its formula: n = normalize(M d / N.d), depth = det / N.d."""
    from expportrait_core.render.api import _Densify, _ShadePixels

    g = torch.Generator().manual_seed(0)
    Q = torch.randn(13, 5, dtype=F64, generator=g)
    Q[9:12] = torch.tensor([0.1, -0.2, -1.0], dtype=F64)[:, None] + 0.05 * Q[9:12]   # N . d away from 0
    face = torch.tensor([0, 1, 1, 3, 4, 4, 2])
    r0 = torch.randn(7, dtype=F64, generator=g) * 0.3
    r1 = torch.randn(7, dtype=F64, generator=g) * 0.3
    inputs = (Q.requires_grad_(True), face, r0.requires_grad_(True), r1.requires_grad_(True))
    assert torch.autograd.gradcheck(lambda *a: _ShadePixels.apply(*a), inputs, fast_mode=True)
    n, depth = _ShadePixels.apply(Q.detach(), face, r0, r1)
    d = torch.stack([r0, r1, torch.ones_like(r0)])                       # [3, P]
    q = Q.detach()[:, face]
    m = (q[:9].view(3, 3, -1) * d[None]).sum(1)
    s = (q[9:12] * d).sum(0)
    ref = m / s
    assert torch.allclose(n, ref / ref.norm(dim=0), atol=1e-12) and torch.allclose(depth, q[12] / s, atol=1e-12)
    cols = torch.randn(3, 4, dtype=F64, generator=g, requires_grad=True)
    pix = torch.tensor([1, 4, 5, 9])
    assert torch.autograd.gradcheck(lambda c: _Densify.apply(c, pix, 12, torch.tensor([0.1, 0.2, 0.3], dtype=F64)), (cols,), fast_mode=True)


# ------------------------------------------------------------------------------------- numba kernels
def _kernel_case(dtype, B=2):
    """A head mesh seen by B different cameras with tensor parameters (for camera gradients)."""
    v, f = head_proxy_mesh(8000)
    cams = [Camera.look_at((0.08 * i - 0.04, 0.02, 0.6 + 0.05 * i), (0.0, 0.0, 0.0), focal=190.0 + 30 * i,
                           width=112, height=96) for i in range(B)]
    fx = torch.tensor([float(c.fx) for c in cams], dtype=dtype)
    cx, cy = torch.tensor([55.3, 57.1][:B], dtype=dtype), torch.tensor([47.9, 45.2][:B], dtype=dtype)
    cam = Camera(fx, fx * 1.02, cx, cy, torch.stack([c.R for c in cams]).to(dtype),
                 torch.stack([c.t for c in cams]).to(dtype), 112, 96)
    verts = torch.stack([v * (1.0 + 0.03 * i) for i in range(B)]).to(dtype)
    return verts, f, cam


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("cull", [True, False])
def test_numba_and_torch_kernels_agree(cull):
    """Same face ids (the numba raster repeats the float32 arithmetic), same outputs, same
    gradients w.r.t. vertices and camera parameters."""
    for dtype in (torch.float32, F64):
        verts, f, cam = _kernel_case(dtype)
        w = torch.randn(2, 96, 112, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
        outs, grads = {}, {}
        for name, cfg in (("numba", NUMBA), ("torch", TORCH)):
            vv = verts.clone().requires_grad_(True)
            fx = cam.fx.clone().requires_grad_(True)
            R = cam.R.clone().requires_grad_(True)
            c = Camera(fx, cam.fy, cam.cx, cam.cy, R, cam.t, cam.width, cam.height)
            o = render_normals(vv, f, c, background=(0.1, 0.2, 0.3), cull_backfaces=cull, config=cfg)
            loss = ((o.normals * w).sum() + 3.0 * (o.depth * w[..., 0]).sum() + (o.normal_rgb * w.flip(-1)).sum()
                    + ((o.normals - w).abs().sum(-1) * o.mask).sum())
            loss.backward()
            outs[name], grads[name] = o, (vv.grad, fx.grad, R.grad)
        a, b = outs["numba"], outs["torch"]
        assert a.face_id.dtype == torch.int64 and (a.face_id >= 0).sum() > 5000
        assert torch.equal(a.face_id, b.face_id) and torch.equal(a.mask, b.mask)
        for k in ("normal_rgb", "normals", "depth"):
            x, y = getattr(a, k), getattr(b, k)
            assert x.dtype == y.dtype == dtype and x.shape == y.shape and x.is_contiguous()
            assert (x - y).abs().max() < 1e-5, k
        rtol = 1e-9 if dtype == F64 else 2e-3              # float32: the torch path accumulates in float32
        for ga, gb in zip(grads["numba"], grads["torch"]):
            assert ga.abs().max() > 0
            assert (ga - gb).abs().max() <= rtol * gb.abs().max(), (ga - gb).abs().max() / gb.abs().max()


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_numba_kernels_given_normals_supersampling_and_rasterize():
    verts, f, cam = _kernel_case(torch.float32, B=1)
    vn = -vertex_normals(verts, f)                                       # any field; flipped on purpose
    for kw in (dict(vertex_normals=vn), dict(supersample=2)):
        a = render_normals(verts, f, cam, config=NUMBA, **kw)
        b = render_normals(verts, f, cam, config=TORCH, **kw)
        assert torch.equal(a.face_id, b.face_id)
        assert (a.normals - b.normals).abs().max() < 1e-5 and (a.depth - b.depth).abs().max() < 1e-5
    a = rasterize(cam.world_to_camera(verts), f, cam, config=NUMBA)
    b = rasterize(cam.world_to_camera(verts), f, cam, config=TORCH)
    assert torch.equal(a.face_id, b.face_id) and torch.equal(a.bary, b.bary) and torch.equal(a.depth, b.depth)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_numba_autograd_functions_gradcheck():
    """The fused numba backward passes match numerical derivatives (visibility held fixed)."""
    from expportrait_core.render.api import _NumbaShade, _NumbaVertexNormals

    torch.manual_seed(0)
    v, f = uv_sphere(6, 8, 0.1, F64)
    v = v + 0.004 * torch.randn_like(v)
    cam = Camera.look_at((0.02, 0.01, 0.5), (0.0, 0.0, 0.0), fov_y_deg=20, width=12, height=10).to(dtype=F64)
    ids = render_normals(v[None], f, cam).face_id
    assert (ids >= 0).sum() > 40
    xyz = cam.world_to_camera(v[None])[0].t().contiguous().requires_grad_(True)
    V = v.shape[0]
    assert torch.autograd.gradcheck(lambda x: _NumbaVertexNormals.apply(x, f, V), (xyz,), fast_mode=True)
    vn = vertex_normals(v[None], f)[0].t().contiguous().requires_grad_(True)
    r0 = ((torch.arange(12, dtype=F64) + 0.5 - 6.0) / 30.0)[None].requires_grad_(True)
    r1 = ((torch.arange(10, dtype=F64) + 0.5 - 5.0) / 30.0)[None].requires_grad_(True)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=F64)

    def shade(x, n, a, b):
        rgb, nrm, depth, _ = _NumbaShade.apply(x, n, a, b, f, ids, bg, V)
        return rgb, nrm, depth

    assert torch.autograd.gradcheck(shade, (xyz, vn, r0, r1), fast_mode=True)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_numba_kernels_interleaved_renders_and_threads():
    """Several renders alive before one backward (fitting renders every view first), and renders
    from two threads at once (the kernels release the GIL and reuse per-thread scratch)."""
    import threading

    verts, f, cam = _kernel_case(F64)
    grads = {}
    for name, cfg in (("numba", NUMBA), ("torch", TORCH)):
        vv = verts.clone().requires_grad_(True)
        a = render_normals(vv[:1], f, cam.index(0), config=cfg)
        b = render_normals(vv[1:] * 1.1, f, cam.index(1), config=cfg)
        (a.normals.sum() + (b.depth * b.mask).sum() - a.normal_rgb[..., 0].sum()).backward()
        grads[name] = vv.grad
    assert torch.allclose(grads["numba"], grads["torch"], rtol=1e-9, atol=1e-9 * float(grads["torch"].abs().max()))

    v2, f2 = head_proxy_mesh(3000)
    c32 = cam.to(dtype=torch.float32)
    jobs = [(verts[:1].float(), f, c32.index(0)), (v2[None], f2, c32.index(1))]
    ref = [render_normals(v, ff, c, config=NUMBA) for v, ff, c in jobs]
    errors = []

    def work(k):
        try:
            for _ in range(5):
                o = render_normals(*jobs[k], config=NUMBA)
                assert torch.equal(o.face_id, ref[k].face_id) and torch.equal(o.normal_rgb, ref[k].normal_rgb)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_kernel_selection_and_fallback(monkeypatch):
    """EXPP_RENDER_KERNEL picks the path; without numba, "auto" falls back to PyTorch and an
    explicit "numba" request says how to fix it."""
    from expportrait_core.render import api

    v, f = _quad(-0.2, 0.2, -0.2, 0.2, 1.0)
    cam = Camera(40.0, 40.0, 16.0, 16.0, torch.eye(3), torch.zeros(3), 32, 32)
    ref = render_normals(v[None], f, cam, config=TORCH)

    def numba_used(*args):
        raise AssertionError("the numba path ran")

    monkeypatch.setattr(api._NumbaShade, "apply", numba_used)
    monkeypatch.setenv("EXPP_RENDER_KERNEL", "torch")
    assert torch.equal(render_normals(v[None], f, cam).normal_rgb, ref.normal_rgb)
    monkeypatch.setenv("EXPP_RENDER_KERNEL", "opengl")
    with pytest.raises(ExpPortraitError, match="EXPP_RENDER_KERNEL"):
        render_normals(v[None], f, cam)
    monkeypatch.setenv("EXPP_RENDER_KERNEL", "numba")
    monkeypatch.setattr(api, "_nb_state", [None, ImportError("No module named 'numba'")])
    with pytest.raises(ExpPortraitError, match="pip install numba"):
        render_normals(v[None], f, cam)
    monkeypatch.delenv("EXPP_RENDER_KERNEL")
    out = render_normals(v[None], f, cam)                               # auto: PyTorch fallback
    assert torch.equal(out.normal_rgb, ref.normal_rgb) and torch.equal(out.face_id, ref.face_id)


def test_gradients_reach_vertices_through_rasterize_and_camera():
    v, f = uv_sphere(8, 12, 0.1)
    fx = torch.tensor([60.0], requires_grad=True)
    cam = Camera(fx, 60.0, 16.0, 16.0, torch.eye(3), torch.tensor([0.0, 0.0, 0.5]), 32, 32)
    vv = v[None].clone().requires_grad_(True)
    fr = rasterize(cam.world_to_camera(vv), f, cam)
    (fr.bary[..., 0].sum() + fr.depth.sum()).backward()
    assert vv.grad.abs().sum() > 0 and torch.isfinite(vv.grad).all()
    assert fx.grad is not None and torch.isfinite(fx.grad).all()


# ------------------------------------------------------------------------------------- batching etc.
def test_batch_with_different_cameras_per_item():
    v, f = head_proxy_mesh(3000)
    cams = [Camera.look_at((0.1 * i - 0.05, 0.02, 0.6 + 0.1 * i), (0.0, 0.0, 0.0), focal=150.0 + 40 * i,
                           width=96, height=80) for i in range(2)]
    batched = Camera(torch.tensor([float(c.fx) for c in cams]), torch.tensor([float(c.fy) for c in cams]),
                     torch.tensor([40.0, 52.0]), torch.tensor([40.0, 35.0]),
                     torch.stack([c.R for c in cams]), torch.stack([c.t for c in cams]), 96, 80)
    verts = torch.stack([v, v * 1.05])
    out = render_normals(verts, f, batched, background=(0.2, 0.3, 0.4))
    for i in range(2):
        single = render_normals(verts[i:i + 1], f, batched.index(i), background=(0.2, 0.3, 0.4))
        assert torch.equal(out.face_id[i], single.face_id[0])
        assert torch.allclose(out.normal_rgb[i], single.normal_rgb[0], atol=1e-6)
        assert torch.allclose(out.depth[i], single.depth[0], atol=1e-6)
    assert (out.face_id[0] != out.face_id[1]).float().mean() > 0.1       # the views really differ


def test_background_colour_and_encoding():
    v, f = _quad(-0.2, 0.2, -0.2, 0.2, 1.0)
    cam = Camera(40.0, 40.0, 16.0, 16.0, torch.eye(3), torch.zeros(3), 32, 32)
    for bg in ((0.0, 0.0, 0.0), (0.25, 0.5, 0.75), (1.0, 1.0, 1.0)):
        out = render_normals(v[None], f, cam, background=bg)
        m = out.mask[0] > 0
        assert torch.allclose(out.normal_rgb[0][~m], torch.tensor(bg))
        # the quad faces the camera: GL normal (0, 0, 1) -> rgb (0.5, 0.5, 1.0)
        assert torch.allclose(out.normal_rgb[0][m], torch.tensor([0.5, 0.5, 1.0]), atol=1e-6)
        assert torch.allclose(out.normals[0][m], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
        assert (out.normals[0][~m] == 0).all() and out.normal_rgb.is_contiguous()


def test_gl_axes_of_tilted_quad():
    """A plane whose right and bottom recede faces image-right and image-down: GL x > 0, y < 0."""
    cam = Camera(40.0, 40.0, 16.0, 16.0, torch.eye(3), torch.zeros(3), 32, 32)
    c = torch.tensor([[-0.3, -0.3], [0.3, -0.3], [0.3, 0.3], [-0.3, 0.3]])
    z = 1.0 + 0.4 * c[:, 0] + 0.4 * c[:, 1]     # further away to the right and to the bottom
    v = torch.cat([c, z[:, None]], 1)
    f = torch.tensor([[0, 2, 1], [0, 3, 2]])
    out = render_normals(v[None], f, cam)
    n = out.normals[0][out.mask[0] > 0]
    assert (n[:, 0] > 0).all() and (n[:, 1] < 0).all() and (n[:, 2] > 0).all()
    # exact: CV normal of z = 1 + 0.4 x + 0.4 y is (0.4, 0.4, -1)/|.| -> GL (0.4, -0.4, 1)/|.|
    expected = torch.tensor([0.4, -0.4, 1.0]) / math.sqrt(1.32)
    assert torch.allclose(n, expected.expand_as(n), atol=1e-5)


def test_vertex_normals_and_interpolate():
    v, f = uv_sphere(16, 32, 0.5)
    n = vertex_normals(v[None], f)[0]
    assert torch.allclose(n.norm(dim=-1), torch.ones(len(v)), atol=1e-5)
    assert (n * v / 0.5).sum(-1).min() > 0.99                            # radial, outward
    cam = Camera.look_at((0.0, 0.0, 2.0), (0.0, 0.0, 0.0), fov_y_deg=40, width=48, height=48)
    vc = cam.world_to_camera(v[None])
    fr = rasterize(vc, f, cam)
    attr = torch.randn(len(v), 4, generator=torch.Generator().manual_seed(0))
    out = interpolate(attr, f, fr)
    m = fr.mask[0]
    fid, bary = fr.face_id[0][m], fr.bary[0][m]
    ref = (attr[f[fid]] * bary[..., None]).sum(1)
    assert torch.allclose(out[0][m], ref, atol=1e-6) and (out[0][~m] == 0).all()
    z = interpolate(vc[..., 2:], f, fr)[0, ..., 0]
    assert torch.allclose(z[m], fr.depth[0][m], atol=1e-5)


def test_culling_near_plane_and_supersampling():
    # back faces: the inside of a sphere seen from its centre is invisible with culling
    v, f = uv_sphere(12, 24, 1.0)
    cam = Camera.from_fov(60, 32, 32)
    assert rasterize(v[None], f, cam).mask.sum() == 0
    inside = rasterize(v[None], f, cam, cull_backfaces=False)
    assert inside.mask.all()
    assert 0.95 < float(inside.depth[0, 16, 16]) <= 1.0                 # the wall straight ahead
    # a triangle crossing z = 0 is dropped, one in front is kept
    tri = torch.tensor([[[-0.5, -0.5, -0.1], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0]]])
    assert rasterize(tri, torch.tensor([[0, 2, 1]]), cam).mask.sum() == 0
    # supersampling: fractional coverage on silhouettes, same mean colour
    s, fs = uv_sphere(24, 48, 0.1)
    cam2 = Camera.look_at((0.0, 0.0, 0.5), (0.0, 0.0, 0.0), fov_y_deg=30, width=64, height=64)
    a = render_normals(s[None], fs, cam2)
    b = render_normals(s[None], fs, cam2, supersample=3)
    frac = (b.mask > 0) & (b.mask < 1)
    assert frac.sum() > 20 and abs(float(a.mask.sum() - b.mask.sum())) < 0.05 * float(a.mask.sum())
    assert b.normal_rgb.shape == a.normal_rgb.shape and b.face_id.shape == a.face_id.shape


def test_input_validation_messages():
    cam = Camera.from_fov(40, 16, 16)
    v, f = _quad(-0.1, 0.1, -0.1, 0.1, 1.0)
    with pytest.raises(ExpPortraitError, match="verts_world"):
        render_normals(v, f, cam)                                       # missing batch dim
    with pytest.raises(ExpPortraitError, match="faces"):
        render_normals(v[None], f.float(), cam)
    with pytest.raises(ExpPortraitError, match="index vertices"):
        render_normals(v[None], f + 10, cam)
    with pytest.raises(ExpPortraitError, match="backend"):
        render_normals(v[None], f, cam, backend="opengl")
    if not torch.cuda.is_available():
        with pytest.raises(ExpPortraitError, match="CUDA"):
            render_normals(v[None], f, cam, backend="nvdiffrast")
    assert available_backends()[0] == "torch"


# ------------------------------------------------------------------------------------- nvdiffrast
class _FakeNvdiffrast:
    """Stands in for ``nvdiffrast.torch`` on CPU with its documented conventions: clip-space input,
    pixel (i, j) at NDC (2 (i + 0.5) / W - 1, 2 (j + 0.5) / H - 1), row 0 first in memory,
    output (u, v, z/w, triangle index + 1) with u, v the weights of the triangle's vertices 0, 1.
    Implemented with the torch rasterizer, so it checks the adapter's plumbing, not nvdiffrast."""

    calls = 0

    @staticmethod
    def rasterize(ctx, pos, tri, resolution, ranges=None, grad_db=True):
        _FakeNvdiffrast.calls += 1
        H, W = resolution
        cam = Camera(W / 2.0, H / 2.0, W / 2.0, H / 2.0, torch.eye(3), torch.zeros(3), W, H)
        xyw = pos[..., [0, 1, 3]]                       # x_pix = W/2 * x_clip / w + W/2, etc.
        fr = rasterize(xyw, tri.long(), cam, backend="torch", cull_backfaces=False, near=1e-9)
        zw = interpolate((pos[..., 2] / pos[..., 3])[..., None], tri.long(), fr)[..., 0]
        out = torch.stack([fr.bary[..., 0], fr.bary[..., 1], zw, (fr.face_id + 1).float()], -1)
        return out, torch.zeros(0)


def test_nvdiffrast_adapter_conventions_with_fake_module():
    from expportrait_core.render import nvdiffrast_backend

    v, f = head_proxy_mesh(3000)
    cams = [Camera.look_at((0.1 * i - 0.05, 0.01, 0.6), (0.0, 0.0, 0.0), focal=150.0 + 30 * i, width=72, height=56)
            for i in range(2)]
    cam = Camera(torch.tensor([float(c.fx) for c in cams]), torch.tensor([float(c.fy) for c in cams]),
                 torch.tensor([36.0, 33.0]), torch.tensor([28.0, 30.0]),
                 torch.stack([c.R for c in cams]), torch.stack([c.t for c in cams]), 72, 56)
    vc = cam.world_to_camera(torch.stack([v, v]))
    ref = rasterize(vc, f, cam, backend="torch")
    _FakeNvdiffrast.calls = 0
    ids, bary = nvdiffrast_backend.rasterize_with(_FakeNvdiffrast, None, vc, f, cam)
    assert _FakeNvdiffrast.calls == 2                                    # per-item back-face culling
    agree = (ids == ref.face_id).float().mean()
    assert agree > 0.995, agree                                          # clip matrix, y convention, ids
    same = (ids == ref.face_id) & ref.mask
    # (u, v, 1 - u - v) order: a permutation would be off by ~0.3; float32 noise is < 1e-3
    assert (bary[same] - ref.bary[same]).abs().max() < 1e-3


@pytest.mark.skipif(not HAS_NVDR, reason="nvdiffrast + CUDA not available")
def test_nvdiffrast_matches_torch_backend():
    v, f = head_proxy_mesh()
    cam = Camera.look_at((0.02, 0.01, 0.6), (0.0, 0.0, 0.0), fov_y_deg=25, width=256, height=256).to("cuda")
    vv = v[None].cuda()
    a = render_normals(vv, f.cuda(), cam, backend="torch")
    b = render_normals(vv, f.cuda(), cam, backend="nvdiffrast")
    ma, mb = a.mask > 0, b.mask > 0
    assert (ma & mb).sum() / (ma | mb).sum() > 0.99
    both = ma & mb
    ang = torch.rad2deg(torch.acos((a.normals * b.normals).sum(-1)[both].clamp(-1, 1)))
    assert ang.mean() < 1.0
    vg = vv.clone().requires_grad_(True)
    render_normals(vg, f.cuda(), cam, backend="nvdiffrast").normals.sum().backward()
    assert torch.isfinite(vg.grad).all() and vg.grad.abs().sum() > 0


def _gl_renderer_or_skip(faces, w, h, n):
    try:
        from expportrait_core.render.gl_reference import GLNormalRenderer
        return GLNormalRenderer(faces, w, h, n)
    except ExpPortraitError as e:
        pytest.skip(str(e))


def test_matches_independent_opengl_rasterizer():
    """Mesa/driver OpenGL renders the same normal map (mask, pixel centres, y axis, GL colours)."""
    v, f = head_proxy_mesh(8000)
    R = torch.tensor([[0.96, 0.0, -0.28], [0.0, 1.0, 0.0], [0.28, 0.0, 0.96]])       # 16 deg yaw
    cam = Camera(210.0, 200.0, 61.3, 66.6, R, torch.tensor([0.01, 0.0, 0.6]), 128, 120)
    gl = _gl_renderer_or_skip(f.numpy(), 128, 120, len(v))
    try:
        fx, fy, cx, cy, Rb, tb = cam.params(1)
        img = gl.render(v.numpy(), vertex_normals(v[None], f)[0].numpy(), float(fx), float(fy), float(cx), float(cy),
                        Rb[0].numpy(), tb[0].numpy())
    finally:
        gl.release()
    out = render_normals(v[None], f, cam)
    ours = (out.normal_rgb[0] * 255 + 0.5).to(torch.uint8)
    ref = torch.from_numpy(img.copy())
    m_gl, m_ours = ref.sum(-1) > 0, out.mask[0] > 0
    assert m_ours.sum() > 3000
    assert (m_gl ^ m_ours).sum() <= 3                                   # edge ties only
    both = m_gl & m_ours
    assert (ours[both].int() - ref[both].int()).abs().max() <= 2
