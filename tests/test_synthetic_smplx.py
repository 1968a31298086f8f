"""The synthetic SMPL-X-format head model (expportrait_core.head.synthetic).

The model file is generated once per session (conftest ``synthetic_model_path``) and loaded
with ``smplx.SMPLX`` itself; every test checks a property of the geometry, rig or blend shapes.
"""
import time
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch

from expportrait_core.head import synthetic as syn

NAMES = syn.SYNTHETIC_EXPRESSION_NAMES
SMPLX_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
                 20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
                 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53]


@pytest.fixture(scope="module")
def arrays(synthetic_model_path):
    """Every array of the written file except the two pickled name tables."""
    with np.load(synthetic_model_path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files if k not in ("joint2num", "part2num")}


@pytest.fixture(scope="module")
def model(synthetic_model_path):
    smplx = pytest.importorskip("smplx")
    return smplx.SMPLX(str(synthetic_model_path), num_betas=300, num_expression_coeffs=100,
                       use_face_contour=True, batch_size=2)


def run(model, **kw):
    """Batch-2 forward; unspecified parameters are zero. Returns (vertices, iBUG-68 landmarks)."""
    z = {"betas": 300, "expression": 100, "global_orient": 3, "body_pose": 63, "jaw_pose": 3,
         "leye_pose": 3, "reye_pose": 3, "left_hand_pose": 6, "right_hand_pose": 6}
    args = {k: torch.zeros(2, n) for k, n in z.items()}
    for k, v in kw.items():
        args[k] = torch.as_tensor(np.asarray(v), dtype=torch.float32).reshape(2, -1)
    with torch.no_grad():
        out = model(**args)
    j = out.joints.numpy()
    # smplx appends the 51 static landmarks (iBUG 17..67), then the 17 contour points (iBUG 0..16)
    lmk = np.concatenate([j[:, -17:], j[:, -68:-17]], axis=1)
    return out.vertices.numpy().astype(np.float64), lmk.astype(np.float64)


def two(first, second):
    return np.stack([np.asarray(first, float), np.asarray(second, float)])


def skull_top(arrays, n=20):
    return np.argsort(-arrays["v_template"][:, 1])[:n]


# ------------------------------------------------------------------------------------------------
def test_smplx_loads_file_and_runs_batch2(model, arrays):
    assert model.get_num_verts() == 10475 and model.get_num_faces() == 20908
    g = np.random.default_rng(0)
    v, lmk = run(model, betas=g.normal(size=(2, 300)), expression=g.normal(size=(2, 100)) * 0.5,
                 jaw_pose=two([0.2, 0, 0], [0.05, 0.02, 0]), body_pose=g.normal(size=(2, 63)) * 0.05)
    assert v.shape == (2, 10475, 3) and lmk.shape == (2, 68, 3)
    assert np.isfinite(v).all() and np.isfinite(lmk).all()
    assert np.abs(v[0] - v[1]).max() > 1e-3  # the two batch rows really differ
    rest, _ = run(model)
    assert np.abs(rest[0] - arrays["v_template"]).max() < 1e-5  # zero parameters give the template


def test_arrays_match_smplx_layout(arrays, synthetic_model_path):
    a = arrays
    assert a["v_template"].shape == (10475, 3) and a["v_template"].dtype == np.float64
    assert a["f"].shape == (20908, 3) and a["f"].dtype in (np.uint32, np.int64)
    assert a["shapedirs"].shape == (10475, 3, 400) and a["shapedirs"].dtype == np.float64
    assert a["posedirs"].shape == (10475, 3, 486)
    assert a["J_regressor"].shape == (55, 10475) and a["weights"].shape == (10475, 55)
    assert a["lmk_faces_idx"].shape == (51,) and a["lmk_faces_idx"].dtype == np.int64
    assert a["lmk_bary_coords"].shape == (51, 3)
    assert a["dynamic_lmk_faces_idx"].shape == (79, 17) and a["dynamic_lmk_faces_idx"].dtype == np.int64
    assert a["dynamic_lmk_bary_coords"].shape == (79, 17, 3)
    assert a["hands_componentsl"].shape == (45, 45) and a["hands_meanr"].shape == (45,)
    assert a["ft"].shape == (20908, 3) and a["vt"].shape[1] == 2 and a["ft"].max() < len(a["vt"])
    assert a["vt"].min() >= 0.0 and a["vt"].max() <= 1.0
    assert a["kintree_table"].dtype == np.int64 and a["kintree_table"][0, 0] == 4294967295
    assert a["kintree_table"][0, 1:].tolist() == SMPLX_PARENTS[1:]
    assert int(a["expportrait_synthetic"]) == syn.SYNTHETIC_VERSION and int(a["expportrait_seed"]) == 0
    for name in ("J_regressor", "weights"):
        assert a[name].min() >= 0.0
    assert np.allclose(a["J_regressor"].sum(1), 1.0, atol=1e-9)
    assert np.allclose(a["weights"].sum(1), 1.0, atol=1e-9)
    for name in ("lmk_bary_coords", "dynamic_lmk_bary_coords"):
        assert a[name].min() >= 0.0 and np.allclose(a[name].sum(-1), 1.0)
    # the name tables are pickled object arrays, as in the real file: a safe loader must skip them
    with np.load(synthetic_model_path, allow_pickle=False) as d:
        for name in ("joint2num", "part2num"):
            with pytest.raises(ValueError):
                d[name]
    with np.load(synthetic_model_path, allow_pickle=True) as d:
        assert d["joint2num"].item()["jaw"] == 22


def test_joints_are_anatomically_placed(arrays):
    J = arrays["J_regressor"] @ arrays["v_template"]
    v = arrays["v_template"]
    w = arrays["weights"]
    y = J[:, 1]
    # spine chain from the chest bottom up to the skull base
    assert y[0] < y[3] < y[6] < y[9] < y[12] < y[15] < y[22] < y[23]
    assert v[:, 1].min() < y[0] and y[9] < 0.1  # pelvis inside the bust, spine3 in the chest
    top, chin = v[:, 1].max(), 0.235
    assert top - 0.25 < chin < top - 0.2  # head about 22 cm tall
    head = v[w[:, 15] + w[:, 22] > 0.5]
    assert 0.13 < np.ptp(head[:, 0]) < 0.17  # and about 15 cm wide
    # eyes at the eyeball centres (vertices skinned only to the eye joints), left eye at +x
    for j, sgn in ((23, 1), (24, -1)):
        ball = v[w[:, j] > 0.999]
        assert len(ball) > 100
        assert np.linalg.norm(ball.mean(0)[:2] - J[j, :2]) < 1e-3 and sgn * J[j, 0] > 0.02
        r = np.linalg.norm(ball - J[j], axis=1)
        assert 0.010 < r.min() and r.max() < 0.016
    # jaw hinge: in front of the skull-base joint, below the eyes, above the mouth
    assert J[22, 2] > J[15, 2] and J[22, 1] < J[23, 1]
    # collars and shoulders on their own side, shoulders wider than collars
    assert J[13, 0] > 0.02 and J[14, 0] < -0.02 and J[16, 0] > J[13, 0] + 0.05 and J[17, 0] < J[14, 0] - 0.05
    assert np.abs(J[16] * [-1, 1, 1] - J[17]).max() < 1e-9  # mirror-symmetric rig


def test_mesh_is_closed_oriented_and_non_degenerate(arrays):
    v, f = arrays["v_template"], arrays["f"].astype(np.int64)
    directed = Counter()
    for a, b, c in f:
        directed.update([(a, b), (b, c), (c, a)])
    assert max(directed.values()) == 1  # consistent orientation, manifold edges
    boundary = [e for e in directed if (e[1], e[0]) not in directed]
    # the only openings are the two eyelid fissures (17 edges each), behind which the eyeballs sit
    nxt = dict(boundary)
    loops = []
    seen = set()
    for s in nxt:
        if s in seen:
            continue
        loop, cur = [], s
        while cur not in seen:
            seen.add(cur)
            loop.append(cur)
            cur = nxt[cur]
        loops.append(loop)
    assert sorted(len(lp) for lp in loops) == [17, 17]
    eye_y = (arrays["J_regressor"] @ v)[23, 1]
    for lp in loops:
        assert abs(v[lp, 1].mean() - eye_y) < 0.006
    assert len(np.unique(f)) == len(v)  # no loose vertices
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    assert area.min() > 1e-9  # m²
    vol = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert vol > 0.01  # outward-facing, m³ of a bust
    # smplx's "nose" keypoint vertex is our nose tip, and its normal looks forward (+z)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    nose = 9120
    n = fn[(f == nose).any(1)].sum(0)
    n /= np.linalg.norm(n)
    assert n[2] > 0.9 and v[nose, 2] == v[np.abs(v[:, 0]) < 0.03, 2].max()


def test_jaw_opens_mouth_and_leaves_skull(model, arrays):
    v, lmk = run(model, jaw_pose=two([0, 0, 0], [0.25, 0, 0]))
    d = np.linalg.norm(v[1] - v[0], axis=1)
    dl = np.linalg.norm(lmk[1] - lmk[0], axis=1)
    assert dl[8] > 0.015  # chin (contour point 8)
    assert dl[57] > 0.008 and lmk[1, 57, 1] < lmk[0, 57, 1]  # lower lip moves down
    assert dl[51] < 5e-4  # upper lip stays
    assert d[skull_top(arrays)].max() < 1e-6
    # the mouth opens: inner upper/lower lip points separate
    assert np.linalg.norm(lmk[1, 62] - lmk[1, 66]) > 0.01 > np.linalg.norm(lmk[0, 62] - lmk[0, 66])


def test_neck_rotation_moves_head_not_chest(model, arrays):
    pose = np.zeros((2, 63))
    pose[1, 11 * 3] = 0.3  # neck (joint 12) nod
    v, _ = run(model, body_pose=pose)
    d = np.linalg.norm(v[1] - v[0], axis=1)
    assert d[skull_top(arrays)].min() > 0.03
    chest = arrays["v_template"][:, 1] < 0.0
    assert d[chest].max() < 1e-6


def test_named_expressions_move_their_region(model, arrays):
    _, lmk0 = run(model)
    lmk0 = lmk0[0]
    brows, chin, corners = list(range(17, 27)), [7, 8, 9], [48, 54]
    lips = list(range(48, 68))

    def moved(name, coef=1.0):
        e = np.zeros((2, 100))
        e[1, NAMES[name]] = coef
        v, lmk = run(model, expression=e)
        return np.linalg.norm(v[1] - v[0], axis=1), np.linalg.norm(lmk[1] - lmk[0], axis=1), lmk[1]

    _, dl, _ = moved("brow_raise")
    assert dl[brows].min() > 0.003 and dl[chin].max() < 1e-4 and dl[lips].max() < 1e-4
    _, dl, lm = moved("smile")
    assert dl[corners].min() > 0.003 and (lm[corners, 1] > lmk0[corners, 1]).all() and dl[brows].max() < 1e-4
    _, dl, lm = moved("frown")
    assert (lm[corners, 1] < lmk0[corners, 1] - 0.002).all() and dl[brows].max() < 1e-4
    _, dl, lm = moved("lip_pucker")
    assert (lm[lips, 2] - lmk0[lips, 2]).mean() > 0.003 and dl[brows].max() < 1e-4
    _, dl, _ = moved("mouth_stretch")
    assert dl[corners].min() > 0.004
    # blinks close exactly one eye: upper-lid points reach the lower lid
    for name, eye, other in (("blink_left", (43, 44, 47, 46), (37, 38, 41, 40)),
                             ("blink_right", (37, 38, 41, 40), (43, 44, 47, 46))):
        _, dl, lm = moved(name)
        u0, u1, l0, l1 = eye
        assert np.linalg.norm(lmk0[u0] - lmk0[l0]) > 0.006
        assert np.linalg.norm(lm[u0] - lm[l0]) < 0.0015 and np.linalg.norm(lm[u1] - lm[l1]) < 0.0015
        assert dl[list(other)].max() < 1e-6 and dl[chin].max() < 1e-6
    d, _, _ = moved("cheek_puff")
    assert d.max() > 0.004
    # every named direction is a real, local deformation of a few mm to ~1 cm per unit
    E = arrays["shapedirs"][:, :, 300:]
    mags = np.linalg.norm(E, axis=1).max(0)
    assert (mags[: len(NAMES)] > 0.0015).all() and (mags < 0.015).all()


# where each named expression should act (iBUG landmark indices, or midpoints of pairs) and what it
# must leave alone
EXPECTED_REGION = {
    "smile": ([48, 54], "upper"), "mouth_stretch": ([48, 54], "upper"), "lip_pucker": (range(48, 68), "upper"),
    "lip_press": (range(48, 68), "upper"), "brow_raise": (range(17, 27), "lower"), "brow_furrow": ([21, 22], "lower"),
    "blink_left": ([43, 44], "lower"), "blink_right": ([37, 38], "lower"), "cheek_puff": ([(3, 48), (13, 54)], "upper"),
    "frown": ([48, 54, 8], "upper"), "sneer": ([31, 35, 50, 52], "upper"), "lips_part": ([61, 62, 63, 65, 66, 67], "upper"),
    "eye_wide": ([37, 38, 43, 44], "lower"), "squint": ([40, 41, 46, 47], "lower"), "mouth_left": (range(48, 68), "upper"),
    "nose_wrinkle": ([27, 28, 29, 31, 35], "chin"),
}


def test_every_named_expression_is_local_to_its_region(arrays):
    v, f = arrays["v_template"], arrays["f"].astype(np.int64)
    static = (v[f[arrays["lmk_faces_idx"]]] * arrays["lmk_bary_coords"][..., None]).sum(1)
    contour = (v[f[arrays["dynamic_lmk_faces_idx"][0]]] * arrays["dynamic_lmk_bary_coords"][0][..., None]).sum(1)
    L = np.concatenate([contour, static])
    E = arrays["shapedirs"][:, :, 300:]
    assert set(EXPECTED_REGION) == set(NAMES) and sorted(NAMES.values()) == list(range(len(NAMES)))
    for name, (region, spared) in EXPECTED_REGION.items():
        mag = np.linalg.norm(E[:, :, NAMES[name]], axis=1)
        peak = v[np.argmax(mag)]
        pts = np.array([L[list(r)].mean(0) if isinstance(r, tuple) else L[r] for r in region])  # pairs: midpoint
        assert np.linalg.norm(pts - peak, axis=1).min() < 0.025, name
        # mouth expressions leave the brows, eye/brow expressions leave lips and chin, the nose
        # wrinkle (which lifts the upper lip a little) leaves the lower lip and chin
        far = {"upper": L[17:27], "lower": L[[7, 8, 9] + list(range(48, 68))],
               "chin": L[[7, 8, 9, 56, 57, 58, 65, 66, 67]]}[spared]
        near_far = np.linalg.norm(v[None] - far[:, None], axis=2).min(0) < 0.004
        assert mag[near_far].max() < 0.05 * mag.max(), name


def test_expressions_leave_skull_neck_shoulders_and_eyeballs(arrays):
    v, w = arrays["v_template"], arrays["weights"]
    E = arrays["shapedirs"][:, :, 300:]
    still = (v[:, 1] > 0.43) | (v[:, 2] < -0.01) | (v[:, 1] < 0.21) | (w[:, 23] + w[:, 24] > 0.5)
    assert np.abs(E[still]).max() == 0.0
    # and they are local: each moves well under half of the mesh
    moving = (np.linalg.norm(E, axis=1) > 1e-5).mean(0)
    assert moving.max() < 0.2


def test_shape_directions_are_smooth_and_decaying(arrays):
    v, f = arrays["v_template"], arrays["f"].astype(np.int64)
    S = arrays["shapedirs"][:, :, :300]
    mags = np.linalg.norm(S, axis=1).max(0)
    assert mags[:4].min() > 0.008  # head size/width/face length/jaw width: ~1 cm per unit
    assert mags[-50:].max() < 0.3 * mags[:10].mean()  # later directions much smaller
    # global: the leading directions move a large part of the mesh
    assert ((np.linalg.norm(S[:, :, 0], axis=1) > 1e-4).mean()) > 0.3
    # smooth: along every edge the displacement changes far less than the displacement itself
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    length = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
    for k in (0, 5, 20, 150, 299):
        grad = np.linalg.norm(S[e[:, 0], :, k] - S[e[:, 1], :, k], axis=1) / length
        assert np.percentile(grad, 99) < 0.5 and grad.max() < 2.0, k


def test_landmarks_lie_on_the_face_in_anatomical_order(model, arrays):
    _, lmk = run(model)
    L = lmk[0]
    v = arrays["v_template"]
    d = np.linalg.norm(v[None] - L[:, None], axis=2).min(1)
    assert d.max() < 0.006  # on the surface
    assert (L[:, 2] > 0.0).all()  # on the front of the head
    y = L[:, 1]
    brow, eye, nose_tip, mouth, chin = y[17:27].min(), y[36:48], y[30], y[48:68], y[8]
    assert brow > eye.max() and eye.min() > nose_tip > mouth.max() and mouth.min() > chin
    assert y[27] > y[28] > y[29] > y[30]  # nose bridge runs down to the tip
    # iBUG left/right: image-left points are the subject's right side (-x)
    assert L[36, 0] < L[39, 0] < 0 < L[42, 0] < L[45, 0]
    assert L[0, 0] < L[4, 0] < L[8, 0] < L[12, 0] < L[16, 0]
    assert L[17, 0] < L[21, 0] < 0 < L[22, 0] < L[26, 0] and L[31, 0] < L[33, 0] < L[35, 0]
    assert L[48, 0] < L[51, 0] < L[54, 0] and L[60, 0] < L[62, 0] < L[64, 0]
    assert L[51, 1] > L[62, 1] >= L[66, 1] > L[57, 1]  # outer/inner upper lip above the lower
    assert np.abs(L[:17, 0] + L[16::-1, 0]).max() < 1e-6  # symmetric jaw contour


def test_dynamic_contour_tracks_the_visible_silhouette(model, arrays):
    v, f = arrays["v_template"], arrays["f"].astype(np.int64)
    F, B = arrays["dynamic_lmk_faces_idx"], arrays["dynamic_lmk_bary_coords"]
    P = (v[f[F]] * B[..., None]).sum(2)  # [79, 17, 3] in the template
    yaw_bin = {0: 0, -30: 30, 30: 69}  # smplx: bin b <= 39 is yaw -b degrees, b > 39 is b - 39
    for yaw, b in yaw_bin.items():
        if yaw == 0:
            continue
        away = list(range(9, 17)) if yaw > 0 else list(range(0, 8))
        near = list(range(0, 8)) if yaw > 0 else list(range(9, 17))
        assert np.abs(P[b, near] - P[0, near]).max() == 0.0
        # points on the side turning away slide towards the face and stay on the silhouette:
        # in the turned view they are at least as far out as their yaw-0 points
        a = np.radians(yaw)
        xr = lambda p: np.cos(a) * p[..., 0] + np.sin(a) * p[..., 2]  # noqa: E731
        moved = np.linalg.norm(P[b, away] - P[0, away], axis=1) > 1e-4
        assert moved.sum() >= 4
        assert (np.sign(yaw) * (xr(P[b, away]) - xr(P[0, away])) >= -1e-9).all()
        assert (P[b, away, 2] >= P[0, away, 2] - 1e-9).all()
    # mirror symmetry of the table: +30 on the left equals -30 on the right, mirrored
    assert np.abs(P[69, 9:] * [-1, 1, 1] - P[30, 7::-1]).max() < 1e-9
    # smplx picks the bins from the neck chain's yaw
    pose = np.zeros((2, 63))
    pose[1, 11 * 3 + 1] = np.radians(30)
    _, lmk = run(model, body_pose=pose)
    J = arrays["J_regressor"] @ v
    Ry = np.array([[np.cos(np.radians(30)), 0, np.sin(np.radians(30))], [0, 1, 0],
                   [-np.sin(np.radians(30)), 0, np.cos(np.radians(30))]])
    expect = (P[69, 12:16] - J[12]) @ Ry.T + J[12]
    assert np.abs(lmk[1, 12:16] - expect).max() < 1e-4


def test_same_seed_same_arrays_and_cache_regeneration(tmp_path, arrays, capsys):
    """A stale cached file is regenerated; the result equals the session's file exactly."""
    stale = tmp_path / syn.SYNTHETIC_FILENAME
    np.savez(stale, expportrait_synthetic=np.array(syn.SYNTHETIC_VERSION - 1), expportrait_seed=np.array(0),
             v_template=np.zeros((10475, 3)))
    t0 = time.perf_counter()
    path = syn.ensure_synthetic_smplx(tmp_path, seed=0)
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[synthetic SMPL-X] build + write: {dt:.1f} s, file {path.stat().st_size / 1e6:.0f} MB")
    assert path == stale
    with np.load(path, allow_pickle=False) as d:
        for k, a in arrays.items():
            assert np.array_equal(d[k], a), k
    mtime = path.stat().st_mtime_ns
    assert syn.ensure_synthetic_smplx(tmp_path, seed=0) == path and path.stat().st_mtime_ns == mtime  # cached
    assert [p.name for p in tmp_path.iterdir()] == [syn.SYNTHETIC_FILENAME]  # no temp files left
    # same version and seed, but made by other generator code (a stale cache): regenerated too
    with np.load(path, allow_pickle=False) as d:
        fake = {k: d[k] for k in d.files if k not in ("joint2num", "part2num")}  # skip the pickled name tables
    fake["expportrait_source"] = np.array(syn._source_fingerprint() ^ 1, dtype=np.int64)
    fake["v_template"] = fake["v_template"] + 0.01
    np.savez(path, **fake)
    syn.ensure_synthetic_smplx(tmp_path, seed=0)
    with np.load(path, allow_pickle=False) as d:
        assert np.array_equal(d["v_template"], arrays["v_template"])


def test_write_is_atomic(tmp_path, monkeypatch):
    """A failed write leaves neither a partial model nor temp files; a good one is a valid npz."""
    target = tmp_path / "model.npz"
    monkeypatch.setattr(syn, "build_synthetic_smplx", lambda seed=0: {"a": np.arange(10), "b": np.ones(3)})

    def boom(fh, arrays):
        fh.write(b"PK partial")
        raise OSError("disk full")

    real = syn._write_npz
    monkeypatch.setattr(syn, "_write_npz", boom)
    with pytest.raises(OSError):
        syn.write_synthetic_smplx(target)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(syn, "_write_npz", real)
    syn.write_synthetic_smplx(target)
    assert zipfile.is_zipfile(target) and [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    with np.load(target, allow_pickle=False) as d:
        assert d["a"].tolist() == list(range(10))

