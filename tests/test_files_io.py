"""Identity/motion files, video and mesh I/O, and safe SMPL-X reading."""
import json
import pickle

import numpy as np
import pytest
import torch

from expportrait_core.errors import ExpPortraitError
from expportrait_core.head.params import HeadParams
from expportrait_core.head.subdivide import locate_on_upsampled, subdivide
from expportrait_core.io.files import Identity, Motion, load_identity, load_motion, save_identity, save_motion

MODEL = {"smplx_sha256": "abc", "num_vertices": 50, "num_betas": 10}


def _identity(seed=0):
    g = torch.Generator().manual_seed(seed)
    p = HeadParams.zeros(1, 10, 5)
    p = p.replace(jaw_pose=torch.rand(1, 3, generator=g), expression=torch.randn(1, 5, generator=g))
    cam = {"fx": torch.tensor([500.0]), "fy": torch.tensor([500.0]), "cx": torch.tensor([256.0]),
           "cy": torch.tensor([240.0]), "R": torch.eye(3), "t": torch.randn(3, generator=g)}
    return Identity(betas=torch.randn(1, 10, generator=g), static_offsets=torch.randn(50, 3, generator=g) * 1e-3,
                    params=p, camera=cam, image_size=(480, 512), model=MODEL, name="ref",
                    embedding=torch.randn(128, generator=g))


def test_identity_round_trip_bit_exact(tmp_path):
    ident = _identity()
    path = save_identity(ident, tmp_path / "id.safetensors")
    back = load_identity(path, MODEL)
    assert torch.equal(back.betas, ident.betas) and torch.equal(back.static_offsets, ident.static_offsets)
    for k, v in ident.params.as_dict().items():
        assert torch.equal(getattr(back.params, k), v)
    for k, v in ident.camera.items():
        assert torch.equal(back.camera[k], v)
    assert back.image_size == (480, 512) and back.name == "ref" and torch.equal(back.embedding, ident.embedding)
    assert not list(tmp_path.glob("*.tmp")), "temp file left behind"


def test_motion_round_trip_bit_exact(tmp_path):
    T = 7
    g = torch.Generator().manual_seed(1)
    p = HeadParams.zeros(T, 10, 5).replace(expression=torch.randn(T, 5, generator=g))
    m = Motion(params=p, camera=_identity().camera, fps=29.97, model=MODEL, image_size=(480, 480),
               dynamic_offsets=torch.randn(T, 20, 3, generator=g), dynamic_offsets_index=torch.arange(20) * 2,
               lost_frames=[3, 4], crops=torch.rand(T, 3, generator=g), identity=_identity(2), name="drv")
    path = save_motion(m, tmp_path / "m.safetensors")
    b = load_motion(path, MODEL)
    assert b.fps == 29.97 and b.lost_frames == [3, 4] and b.num_frames == T
    assert torch.equal(b.dynamic_offsets, m.dynamic_offsets) and torch.equal(b.crops, m.crops)
    assert torch.equal(b.params.expression, p.expression)
    assert torch.equal(b.identity.static_offsets, m.identity.static_offsets)
    dense = b.dense_dynamic_offsets(50)
    assert dense.shape == (T, 50, 3) and torch.equal(dense[:, 2], m.dynamic_offsets[:, 1]) and dense[:, 1].abs().sum() == 0


def test_truncated_and_wrong_files_give_clear_errors(tmp_path):
    path = save_identity(_identity(), tmp_path / "id.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExpPortraitError, match="truncated"):
        load_identity(tmp_path / "trunc.safetensors")
    with pytest.raises(ExpPortraitError, match="not an motion file|not a motion|is not an"):
        load_motion(path)
    other = dict(MODEL, smplx_sha256="different")
    with pytest.raises(ExpPortraitError, match="another head model"):
        load_identity(path, other)
    with pytest.raises(ExpPortraitError, match="not found"):
        load_identity(tmp_path / "missing.safetensors")


def test_smplx_npz_pickled_entries_are_never_unpickled(tmp_path, monkeypatch):
    """An .npz whose name tables are pickles must load its numeric arrays without running them."""
    from expportrait_core.head.smplx_file import load_smplx_arrays

    calls = []

    class Evil:
        def __reduce__(self):
            return (calls.append, ("unpickled!",))

    V, F = 12, 20
    arrays = {
        "v_template": np.zeros((V, 3)), "f": np.zeros((F, 3), np.int64), "shapedirs": np.zeros((V, 3, 400)),
        "posedirs": np.zeros((V, 3, 486)), "J_regressor": np.zeros((55, V)), "kintree_table": np.zeros((2, 55), np.int64),
        "weights": np.zeros((V, 55)), "lmk_faces_idx": np.zeros(51, np.int64), "lmk_bary_coords": np.zeros((51, 3)),
        "dynamic_lmk_faces_idx": np.zeros((79, 17), np.int64), "dynamic_lmk_bary_coords": np.zeros((79, 17, 3)),
    }
    obj = np.empty((), dtype=object)
    obj[()] = Evil()
    np.savez(tmp_path / "m.npz", joint2num=obj, **arrays)
    out = load_smplx_arrays(tmp_path / "m.npz")
    assert set(arrays) <= set(out) and "joint2num" not in out
    assert calls == []
    with pytest.raises(ExpPortraitError, match="pickle"):
        load_smplx_arrays(_write(tmp_path / "m.pkl", pickle.dumps(arrays)))
    with pytest.raises(ExpPortraitError, match="truncated"):
        load_smplx_arrays(_write(tmp_path / "t.npz", (tmp_path / "m.npz").read_bytes()[:5000]))


def _write(p, data):
    p.write_bytes(data)
    return p


def test_subdivision_is_barycentric_and_locates_points():
    rng = np.random.default_rng(0)
    V = rng.normal(size=(4, 3))
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    up = subdivide(np.arange(4), faces, 2)
    assert up.num_vertices == 4 + 5 + 16  # 2 levels on 2 triangles sharing an edge: 25 vertices
    assert up.faces.shape[0] == 2 * 16
    Vs = (V[up.idx] * up.weights[..., None]).sum(1)
    np.testing.assert_allclose(up.weights.sum(1), 1.0)
    # every upsampled vertex lies in the plane of its parent triangle
    for fi in range(up.faces.shape[0]):
        parent = faces[up.parent_face[fi]]
        corners = up.corner_bary[fi] @ V[parent]
        np.testing.assert_allclose(corners, Vs[up.faces[fi]], atol=1e-12)
    b = np.array([[0.2, 0.3, 0.5], [0.7, 0.1, 0.2]])
    f_up, b_up = locate_on_upsampled(up, np.array([0, 1]), np.array([0, 1]), b)
    p_base = np.einsum("kc,kcd->kd", b, V[faces[[0, 1]]])
    p_up = np.einsum("kc,kcd->kd", b_up, Vs[up.faces[f_up]])
    np.testing.assert_allclose(p_up, p_base, atol=1e-12)


def test_video_and_mesh_writers(tmp_path):
    from expportrait_core.io.mesh import write_glb, write_obj
    from expportrait_core.io.video import probe_video, read_video, write_video

    frames = np.zeros((9, 64, 48, 3), np.uint8)
    frames[:, 10:30, 10:20] = np.arange(9)[:, None, None, None] * 25
    write_video(tmp_path / "v.mp4", frames, 24.0)
    info = probe_video(tmp_path / "v.mp4")
    assert (info.num_frames, info.width, info.height) == (9, 48, 64) and abs(info.fps - 24) < 1e-6
    back, fps = read_video(tmp_path / "v.mp4")
    assert back.shape == frames.shape and np.abs(back.astype(int) - frames).mean() < 3
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
    f = np.array([[0, 1, 2]])
    glb = write_glb(tmp_path / "m.glb", v, f).read_bytes()
    assert glb[:4] == b"glTF" and int.from_bytes(glb[8:12], "little") == len(glb)
    js = json.loads(glb[20 : 20 + int.from_bytes(glb[12:16], "little")])
    assert js["accessors"][0]["count"] == 3
    obj = write_obj(tmp_path / "m.obj", v, f).read_text()
    assert "f 1//1 2//2 3//3" in obj


def test_prefetch_keeps_order_bounds_lead_propagates_errors_and_stops_early():
    import threading
    import time

    from expportrait_core.io.video import prefetch

    produced = []

    def items(n, fail_at=-1):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"bad frame {i}")
            produced.append(i)
            yield i

    assert list(prefetch(items(50), depth=3)) == list(range(50))
    assert list(prefetch(items(5), depth=0)) == list(range(5))

    produced.clear()
    it = prefetch(items(100), depth=3)
    assert next(it) == 0
    time.sleep(0.3)
    # the producer runs at most `depth` items (+1 in hand) ahead of the consumer
    assert len(produced) <= 1 + 3 + 1
    it.close()
    time.sleep(0.2)
    assert not any(t.name == "expportrait-prefetch" and t.is_alive() for t in threading.enumerate())

    with pytest.raises(ValueError, match="bad frame 7"):
        list(prefetch(items(20, fail_at=7), depth=4))


def test_atomic_write_gives_normal_permissions_and_leaves_nothing_on_failure(tmp_path):
    import os

    from expportrait_core.io.atomic import atomic_path, write_text_atomic

    mask = os.umask(0o022)
    try:
        p = write_text_atomic(tmp_path / "a.txt", "x")
        assert (p.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600
    finally:
        os.umask(mask)
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer failed")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.txt"]
