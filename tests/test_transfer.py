"""Expression transfer (deformation transfer, learned module, parameter copy), pose transfer, the
training CLI and the expression editor — on the synthetic head with known ground truth."""
import json

import numpy as np
import pytest
import torch

from expportrait_core.errors import ExpPortraitError, MissingModelError
from expportrait_core.head.params import HeadParams
from expportrait_core.transfer import (ExpressionEdit, SyntheticDetail, TransferConfig, TransferModel,
                                       TransferModelConfig, apply_edit, available_controls, build_edit, clear_caches,
                                       edit_motion, load_preset, load_transfer_model, parse_keyframes, random_identity,
                                       save_preset, synthetic_motion, transfer_motion, transfer_pose)
from expportrait_core.transfer.geometry import face_region_ids
from expportrait_core.transfer.rotations import aa_to_matrix, matrix_to_aa


@pytest.fixture(scope="module")
def proxy(synthetic_model_path):
    """The synthetic head without subdivision (9.8k vertices, face region 5.3k): the properties
    tested here do not depend on the resolution and the tests run ~4× faster. The benchmark
    measures the full-resolution proxy."""
    from expportrait_core.head import ProxyConfig, load_head_proxy

    return load_head_proxy(synthetic_model_path, ProxyConfig(subdivision=0))


@pytest.fixture(scope="module")
def detail(proxy):
    return SyntheticDetail(proxy)


@pytest.fixture(scope="module")
def subjects(proxy, detail):
    """Two synthetic identities and a 4-frame motion of A with ground-truth dynamic offsets."""
    a = random_identity(proxy, 11)
    b = random_identity(proxy, 12)
    motion = synthetic_motion(proxy, a, 4, 5, detail=detail)
    return a, b, motion


def _verts(proxy, motion, identity):
    dense = motion.dense_dynamic_offsets(proxy.num_vertices)
    with torch.no_grad():
        return proxy(motion.params, identity.static_offsets, dense).vertices


def _tiny_model(num_expression):
    torch.manual_seed(0)
    m = TransferModel(TransferModelConfig(num_expression=num_expression, hidden=16, layers=1, code_dim=8,
                                          template_frequencies=8, encoder_hidden=16, vertex_embedding=0))
    with torch.no_grad():  # random (untrained) weights that do produce detail
        m.basis.weight.normal_(0, 0.2)
    return m


def test_rotation_helpers_round_trip():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 3, generator=g, dtype=torch.float64)
    a = a / a.norm(dim=-1, keepdim=True) * torch.rand(200, 1, generator=g, dtype=torch.float64) * 3.1
    R = aa_to_matrix(a)
    assert torch.allclose(matrix_to_aa(R), a, atol=1e-9)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=1e-12)


def test_self_transfer_reproduces_the_motion(proxy, subjects):
    """Driving identity = reference identity: every method returns the input meshes (≈ 0 error);
    the default (full-scope deformation transfer) also returns the input coefficients."""
    a, _, motion = subjects
    truth = _verts(proxy, motion, a)
    for method, cfg in (("deformation", None), ("deformation", TransferConfig(scope="full")),
                        ("deformation", TransferConfig(scope="detail")), ("deformation", TransferConfig(scope="classic")),
                        ("copy", TransferConfig(copy_dynamic_offsets=True))):
        out = transfer_motion(proxy, a, motion, method=method, pose_mode="absolute", neutral_frame=None, config=cfg)
        err = (_verts(proxy, out, a) - truth).norm(dim=-1).max().item()
        label = f"{method}/{'default' if cfg is None else cfg.scope if method == 'deformation' else 'offsets'}"
        print(f"self-transfer {label}: max vertex error {err * 1e3:.6f} mm")
        assert err < 2e-6, f"{label}: self-transfer vertex error {err * 1e3:.5f} mm"
        if cfg is None:
            assert torch.allclose(out.params.expression, motion.params.expression, atol=1e-6)


def test_detail_transfer_is_exact_for_a_similar_reference(proxy, subjects):
    """transfer_detail on a reference that is the driver rotated, scaled and moved: the driver's
    detail arrives rotated and scaled by the same similarity (the system is consistent) — on the
    neutral meshes, and on perturbed base meshes with a degenerate triangle; zero detail gives
    exactly zero."""
    from expportrait_core.transfer.deformation import DeformationTransfer

    a, _, motion = subjects
    with torch.no_grad():
        src = proxy.neutral(a.betas, a.static_offsets)[0].double()
    R0 = aa_to_matrix(torch.tensor([[0.2, -0.4, 0.1]], dtype=torch.float64))[0]
    s = 1.15
    tgt = s * src @ R0.T + torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64)
    dense = motion.dense_dynamic_offsets(proxy.num_vertices).double() * proxy.face_weight.double()[None, :, None]
    dt = DeformationTransfer(src, tgt, proxy.faces, proxy.face_weight)
    want = (s * dense @ R0.T).numpy()
    scale = np.abs(want).max()
    assert np.abs(dt.transfer_detail(dense) - want).max() < 1e-9 * scale / 1e-3
    P = torch.randn(1, proxy.num_vertices, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1e-4
    base = src[None] + P
    # a degenerate triangle in the face region (a vertex on its opposite edge): no gradient there,
    # the pushed-forward detail's edges are used instead — still exact
    f = proxy.faces[(proxy.face_weight[proxy.faces] > 0.5).all(1)][0]
    base[0, f[0]] = 0.5 * (base[0, f[1]] + base[0, f[2]])
    got = dt.transfer_detail(dense, base, s * base @ R0.T + torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64))
    assert np.isfinite(got).all() and np.abs(got - want).max() < 1e-9 * scale / 1e-3
    assert np.abs(dt.transfer_detail(torch.zeros_like(dense), src[None] + P, tgt[None] + P)).max() == 0


def test_deformation_transfer_beats_parameter_copy_on_held_out_pairs(proxy, detail):
    """Held-out synthetic pairs with known truth (two identities, the same expression coefficients,
    identity-dependent dynamic offsets): the default deformation transfer (full scope) has a clearly
    lower vertex error than parameter copy, and than copying the driver's offsets vertex for vertex."""
    from expportrait_core.transfer.evaluate import evaluate_methods, format_table, make_pairs

    pairs = make_pairs(proxy, 3, frames=6, detail=detail)  # the benchmark's pair seeds, fewer frames
    res = evaluate_methods(proxy, pairs, {
        "parameter copy": {"method": "copy"},
        "parameter copy + driver offsets": {"method": "copy", "config": TransferConfig(copy_dynamic_offsets=True)},
        "deformation transfer (default)": {"method": "deformation"},
        "deformation transfer (full)": {"method": "deformation", "config": TransferConfig(scope="full")},
    })
    print("\n" + format_table(res))
    copy, offs = res["parameter copy"], res["parameter copy + driver offsets"]
    for label in ("deformation transfer (default)", "deformation transfer (full)"):
        dt = res[label]
        for k in ("face_mm", "face_rms_mm"):
            # measured (mm, mean / RMS): 0.0243 / 0.0793 vs copy 0.0387 / 0.1141, offsets 0.0322 / 0.0966
            assert dt[k] < 0.8 * copy[k], f"{label} {k}: {dt[k]:.4f} vs parameter copy {copy[k]:.4f}"
            assert dt[k] < 0.95 * offs[k], f"{label} {k}: {dt[k]:.4f} vs driver offsets {offs[k]:.4f}"


def test_neutral_driving_frame_maps_to_reference_neutral(proxy, subjects):
    a, b, motion = subjects
    k = 3
    assert motion.num_frames > k
    drv = motion.params.detach()
    drv.expression[k] = 0
    drv.jaw_pose[k] = 0
    offs = motion.dynamic_offsets.clone()
    offs[k] = 0
    from expportrait_core.io.files import Motion

    neutral_at_k = Motion(params=drv, camera=motion.camera, fps=30.0, model=motion.model, image_size=motion.image_size,
                          dynamic_offsets=offs, dynamic_offsets_index=motion.dynamic_offsets_index, identity=a)
    with torch.no_grad():
        ref_neutral = proxy.neutral(b.betas, b.static_offsets)[0]
    zero_pose = {f: torch.zeros(1, 3) for f in ("global_orient", "neck_pose", "head_pose", "leye_pose", "reye_pose", "transl")}
    model = _tiny_model(proxy.num_expression)
    # (1) a truly neutral frame, no calibration; (2) any frame declared neutral by calibration
    for mot, frame, nf in ((neutral_at_k, k, None), (motion, 2, 2)):
        for method in ("deformation", "copy", "learned"):
            out = transfer_motion(proxy, b, mot, method=method, model=model, neutral_frame=nf,
                                  config=TransferConfig(copy_dynamic_offsets=True))
            p = out.params.index(frame).replace(**zero_pose)
            assert out.params.expression[frame].abs().max() == 0 and out.params.jaw_pose[frame].abs().max() == 0
            with torch.no_grad():
                v = proxy(p, b.static_offsets, out.dense_dynamic_offsets(proxy.num_vertices, [frame])).vertices[0]
            assert (v - ref_neutral).abs().max() < 1e-6, f"{method}, neutral_frame={nf}"
            if nf is not None:  # relative pose: the calibration frame has the reference's own head pose
                for f in ("neck_pose", "head_pose", "global_orient", "transl"):
                    assert torch.allclose(getattr(out.params, f)[frame], getattr(b.params, f)[0], atol=1e-5), f


def test_transfer_output_contract_and_file_round_trip(proxy, subjects, tmp_path):
    from expportrait_core.io.files import load_motion, save_motion

    a, b, motion = subjects
    motion.lost_frames = [2]
    out = transfer_motion(proxy, b, motion, method="copy")
    ids = face_region_ids(proxy)
    assert out.identity is b and out.num_frames == motion.num_frames and out.lost_frames == [2]
    assert out.fps == motion.fps and tuple(out.image_size) == tuple(b.image_size)
    assert torch.equal(out.params.betas, b.betas.expand(motion.num_frames, -1))
    assert all(torch.equal(out.camera[k], b.camera[k]) for k in b.camera)
    assert torch.equal(out.dynamic_offsets_index, ids) and out.dynamic_offsets.shape == (motion.num_frames, len(ids), 3)
    back = load_motion(save_motion(out, tmp_path / "t.safetensors"), proxy.describe())
    assert torch.equal(back.params.expression, out.params.expression)
    assert torch.equal(back.identity.static_offsets, b.static_offsets)


def test_transfer_cli_on_files(proxy, subjects, tmp_path, monkeypatch):
    from expportrait_core import cli
    from expportrait_core.io.files import load_motion, save_identity, save_motion
    from expportrait_core.transfer import cli as tcli

    monkeypatch.setattr(tcli, "_proxy", lambda path: proxy)
    a, b, motion = subjects
    save_identity(b, tmp_path / "ref.safetensors")
    save_motion(motion, tmp_path / "drv.safetensors")
    rc = cli.main(["transfer", "--identity", str(tmp_path / "ref.safetensors"), "--motion", str(tmp_path / "drv.safetensors"),
                   "--out", str(tmp_path / "out.safetensors"), "--method", "copy", "--jaw", "0.5", "--neutral-frame", "-1"])
    out = load_motion(tmp_path / "out.safetensors", proxy.describe())
    assert rc == 0 and out.num_frames == motion.num_frames
    assert torch.allclose(out.params.jaw_pose, 0.5 * motion.params.jaw_pose, atol=1e-6)
    assert torch.equal(out.identity.static_offsets, b.static_offsets)


def test_factorization_is_computed_once_per_identity_pair(proxy, subjects, detail, monkeypatch):
    import scipy.sparse.linalg as sla

    a, b, _ = subjects
    calls = []
    real = sla.splu
    monkeypatch.setattr(sla, "splu", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    clear_caches()
    long_motion = synthetic_motion(proxy, a, 7, 9, detail=detail)
    cfg = TransferConfig(chunk=3)
    transfer_motion(proxy, b, long_motion, method="deformation", config=cfg)
    assert len(calls) == 1, "one factorization for all frames"
    transfer_motion(proxy, b, long_motion, method="deformation", config=cfg, strengths={"expression": 0.5})
    assert len(calls) == 1, "re-running the same pair reuses the factorization"
    transfer_motion(proxy, a, long_motion, method="deformation", config=cfg, neutral_frame=None)
    assert len(calls) == 2, "another pair factorizes once"


def test_pose_transfer_relative_absolute_and_strengths():
    T = 5
    g = torch.Generator().manual_seed(3)
    drv = HeadParams.zeros(T, 10, 10)
    drv = drv.replace(neck_pose=torch.randn(T, 3, generator=g) * 0.2, head_pose=torch.randn(T, 3, generator=g) * 0.2,
                      global_orient=torch.randn(T, 3, generator=g) * 0.1, transl=torch.randn(T, 3, generator=g) * 0.02,
                      jaw_pose=torch.rand(T, 3, generator=g) * 0.2, leye_pose=torch.randn(T, 3, generator=g) * 0.1,
                      reye_pose=torch.randn(T, 3, generator=g) * 0.1)
    ref = HeadParams.zeros(1, 10, 10).replace(neck_pose=torch.tensor([[0.1, -0.2, 0.05]]),
                                              head_pose=torch.tensor([[0.1, -0.2, 0.05]]), transl=torch.tensor([[0.0, 0.01, 0.02]]))
    rel = transfer_pose(ref, drv, mode="relative", anchor_frame=1, neutral_frame=1)
    for f in ("neck_pose", "head_pose", "global_orient", "transl", "leye_pose"):
        assert torch.allclose(rel[f][1], getattr(ref, f)[0], atol=1e-6), f  # anchor frame = reference pose
    # the head's rotation change between frames equals the driver's (parent-frame deltas)
    Rd = aa_to_matrix(drv.head_pose)
    Rt = aa_to_matrix(rel["head_pose"])
    assert torch.allclose(Rt[3] @ Rt[1].T, Rd[3] @ Rd[1].T, atol=1e-5)
    assert (rel["jaw_pose"][:, 0] >= 0).all()
    zero = transfer_pose(ref, drv, mode="relative", anchor_frame=0, neutral_frame=0,
                         strengths={"head_rotation": 0, "translation": 0, "eyes": 0, "jaw": 0})
    assert torch.allclose(zero["neck_pose"], ref.neck_pose.expand(T, 3), atol=1e-6)
    assert torch.allclose(zero["transl"], ref.transl.expand(T, 3)) and zero["jaw_pose"].abs().max() == 0
    ab = transfer_pose(ref, drv, mode="absolute", neutral_frame=None)
    for f in ("neck_pose", "head_pose", "global_orient", "transl", "jaw_pose", "reye_pose"):
        assert torch.allclose(ab[f], getattr(drv, f), atol=1e-5), f
    with pytest.raises(ExpPortraitError, match="Unknown strength"):
        transfer_pose(ref, drv, strengths={"smile": 1.0})


def test_train_cli_learned_and_deformation_beat_parameter_copy(proxy, tmp_path, monkeypatch, capsys):
    """A short CLI training run on synthetic identities; held-out synthetic pairs with known truth."""
    from expportrait_core import cli
    from expportrait_core.transfer import cli as tcli

    monkeypatch.setattr(tcli, "_proxy", lambda path: proxy)  # reuse the module's proxy (no rebuild)
    out = tmp_path / "transfer.safetensors"
    ev = tmp_path / "eval.json"
    rc = cli.main(["train-transfer", "--out", str(out), "--steps", "80", "--synthetic-identities", "6",
                   "--hidden", "32", "--layers", "2", "--frames-per-step", "16", "--faces-per-sample", "500",
                   "--lr", "1e-2", "--checkpoint-every", "40", "--eval-pairs", "2", "--eval-frames", "6",
                   "--eval-json", str(ev)])
    assert rc == 0
    assert out.is_file() and out.with_name("transfer.loss.png").is_file() and out.with_name("transfer.ckpt.safetensors").is_file()
    res = json.loads(ev.read_text())
    printed = capsys.readouterr().out
    copy = res["parameter copy (no offsets)"]
    for label in ("deformation transfer", "learned"):
        assert res[label]["face_rms_mm"] < copy["face_rms_mm"], printed
    assert res["deformation transfer"]["face_mm"] < copy["face_mm"], printed
    model = load_transfer_model(out)
    assert model.meta["steps"] == 80 and model.meta["trained_on"]["synthetic"]
    loss = _losses(out.with_name("transfer.ckpt.safetensors"))
    assert len(loss) == 80 and np.mean(loss[-20:]) < 0.9 * np.mean(loss[:10]), "the loss did not go down"


def _losses(ckpt):
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as fh:
        return [h[1] for h in json.loads(fh.metadata()["history"])]


def test_resume_continues_exactly(proxy, tmp_path):
    from expportrait_core.transfer.train import TrainConfig, TransferTrainer

    mc = TransferModelConfig(num_expression=proxy.num_expression, hidden=16, layers=1, code_dim=8, template_frequencies=8,
                             encoder_hidden=16, vertex_embedding=4)
    tc = TrainConfig(steps=4, frames_per_step=2, faces_per_sample=300, checkpoint_every=2, seed=3)

    data = TransferTrainer(proxy, mc, tc)
    data.add_synthetic(2)

    def trainer():  # same data, fresh model and optimizer
        t = TransferTrainer(proxy, mc, tc)
        t.subjects, t.detail = data.subjects, data.detail
        return t

    straight = trainer()
    straight.train(4)
    first = trainer()
    ckpt = tmp_path / "ck.safetensors"
    first.train(2, checkpoint_path=ckpt)
    resumed = trainer()
    resumed.load_checkpoint(ckpt)
    assert resumed.step == 2
    resumed.train(4)
    for (k, v), (_, w) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k
    assert [h[1] for h in straight.history] == [h[1] for h in resumed.history]


def _regions(proxy):
    with torch.no_grad():
        rest = proxy(proxy.zero_params(1))
    v, lm = rest.vertices[0], rest.landmarks[0]
    near = lambda pts, r: ((v[:, None] - pts[None]).norm(dim=-1) < r).any(1)  # noqa: E731
    head_top = v[:, 1] > v[:, 1].max() - 0.03
    head_joints = torch.isin(proxy.skin_joints, torch.tensor([12, 15, 22, 23, 24]))
    body = proxy.skin_weights[:, head_joints].sum(1) < 1e-6  # not skinned to neck, head, jaw or eyes
    return v, {
        "mouth_chin": near(lm[[8, 48, 54, 57, 66]], 0.012),
        "eyes": near(lm[36:48], 0.008),
        "skull": head_top,
        "body": body,
    }


def test_editor_controls_move_their_region_and_keep_the_skull(proxy):
    v0, reg = _regions(proxy)
    base = proxy.zero_params(1)
    controls = available_controls(proxy)
    assert {"jaw_open", "head_pitch", "head_yaw", "head_roll", "gaze_yaw", "eyelid_close", "smile", "expr_00"} <= set(controls)

    def moved(values):
        p = apply_edit(proxy, base, ExpressionEdit(values=values))
        with torch.no_grad():
            return (proxy(p).vertices[0] - v0).norm(dim=-1)

    d = moved({"jaw_open": 15})
    assert d[reg["mouth_chin"]].mean() > 3e-3 and d[reg["skull"]].max() < 1e-6
    d = moved({"eyelid_close": 1.0})
    assert d[reg["eyes"]].max() > 1.5e-3 and d[reg["skull"]].max() < 1e-6
    assert d[reg["mouth_chin"]].mean() < 0.2 * d[reg["eyes"]].mean()
    for name in ("smile", "brow_raise", "expr_03"):
        d = moved({name: 1.0})
        assert d.max() > 1e-3 and d[reg["skull"]].max() < 1e-6, name
    d = moved({"gaze_yaw": 15})
    assert d.max() > 1e-3 and d[reg["skull"]].max() < 1e-6
    for name in ("head_pitch", "head_yaw", "head_roll"):
        d = moved({name: 10})
        assert reg["body"].sum() > 100 and d[reg["skull"]].mean() > 5e-3 and d[reg["body"]].max() < 1e-6, name
    # sign conventions: yaw > 0 turns the face towards +x, pitch > 0 looks up
    with torch.no_grad():
        nose = lambda vals: proxy(apply_edit(proxy, base, ExpressionEdit(values=vals))).landmarks[0, 30]  # noqa: E731
        n0 = nose({})
        assert nose({"head_yaw": 10})[0] > n0[0] + 3e-3 and nose({"head_pitch": 10})[1] > n0[1] + 2e-3
    # constant mode sets, offset mode adds
    p = base.replace(jaw_pose=torch.tensor([[0.2, 0.0, 0.0]]))
    assert abs(apply_edit(proxy, p, ExpressionEdit({"jaw_open": 10}, mode="constant")).jaw_pose[0, 0] - np.deg2rad(10)) < 1e-6
    assert abs(apply_edit(proxy, p, ExpressionEdit({"jaw_open": 10})).jaw_pose[0, 0] - (0.2 + np.deg2rad(10))) < 1e-6
    with pytest.raises(ExpPortraitError, match="Unknown control"):
        apply_edit(proxy, base, ExpressionEdit({"wink_harder": 1}))


def test_editor_keyframes_identity_and_presets_round_trip(proxy, subjects, tmp_path):
    a, _, motion = subjects
    edit = build_edit({}, "keyframes", keyframes="0: jaw_open=0 smile=0\n10: jaw_open=20 smile=1\n20: jaw_open=0")
    mot, ident = edit_motion(proxy, a, edit)
    assert mot.num_frames == 21 and mot.identity is a
    jaw = np.rad2deg(mot.params.jaw_pose[:, 0].numpy())
    assert abs(jaw[10] - 20) < 1e-4 and jaw[0] < 1e-6 and abs(jaw[20]) < 1e-4 and 0 < jaw[5] < 20
    assert torch.equal(ident.static_offsets, a.static_offsets) and ident.params.batch_size == 1
    edited, _ = edit_motion(proxy, motion, ExpressionEdit({"head_yaw": 5, "smile": 0.5}))
    assert edited.num_frames == motion.num_frames and torch.equal(edited.dynamic_offsets, motion.dynamic_offsets)
    assert torch.allclose(edited.params.expression[:, 0], motion.params.expression[:, 0] + 0.5)
    for suffix in (".json", ".safetensors"):
        path = save_preset(ExpressionEdit({"jaw_open": 12.5, "smile": 0.3}, mode="constant", name="p",
                                          keyframes=parse_keyframes("0: jaw_open=1 | 5: smile=2")), tmp_path / f"p{suffix}")
        back = load_preset(path)
        assert back.values == {"jaw_open": 12.5, "smile": 0.3} and back.mode == "constant" and back.name == "p"
        assert back.keyframes == [(0, {"jaw_open": 1.0}), (5, {"smile": 2.0})]
    (tmp_path / "bad.json").write_text('{"kind": "something.else"}')
    with pytest.raises(ExpPortraitError, match="not an expression preset"):
        load_preset(tmp_path / "bad.json")


def test_user_errors_are_clear(proxy, subjects, tmp_path):
    a, b, motion = subjects
    with pytest.raises(ExpPortraitError, match="needs a transfer model"):
        transfer_motion(proxy, b, motion, method="learned")
    with pytest.raises(ExpPortraitError, match="out of range"):
        transfer_motion(proxy, b, motion, neutral_frame=99)
    with pytest.raises(ExpPortraitError, match="method must be"):
        transfer_motion(proxy, b, motion, method="magic")
    with pytest.raises(MissingModelError, match="train-transfer"):
        load_transfer_model(tmp_path / "nope.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ExpPortraitError, match="truncated|Cannot read"):
        load_transfer_model(tmp_path / "broken.safetensors")
    m = _tiny_model(proxy.num_expression)
    path = m.save(tmp_path / "m.safetensors")
    back = load_transfer_model(path)
    for (k, v), (_, w) in zip(m.state_dict().items(), back.state_dict().items()):
        assert torch.equal(v, w), k


def test_nodes(proxy, subjects, tmp_path, monkeypatch):
    import nodes._comfy as comfy
    from nodes.transfer import ExpPortraitExpressionEditor, ExpPortraitLoadTransferModel, ExpPortraitTransferExpression

    monkeypatch.setenv("EXPPORTRAIT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(comfy, "output_dir", lambda: tmp_path / "out")
    a, b, motion = subjects
    node = ExpPortraitTransferExpression()
    (out,) = node.transfer(proxy, b, motion, method="auto", model_file="missing.safetensors")  # falls back to DT
    assert out.num_frames == motion.num_frames and out.identity is b
    with pytest.raises(MissingModelError):
        node.transfer(proxy, b, motion, method="learned", model_file="missing.safetensors")
    with pytest.raises(MissingModelError):
        ExpPortraitLoadTransferModel().load("missing.safetensors")
    folder = tmp_path / "models" / "expportrait" / "transfer"
    _tiny_model(proxy.num_expression).save(folder / "tiny.safetensors")
    (model,) = ExpPortraitLoadTransferModel().load("tiny.safetensors")
    (learned,) = node.transfer(proxy, b, motion, method="learned", transfer_model=model, neutral_frame=-1)
    assert learned.dynamic_offsets.abs().max() > 0
    res = ExpPortraitExpressionEditor().edit(proxy, mode="offset", jaw_open=20.0, identity=a, preview_size=96,
                                             save_preset_as="open_mouth", expression_1=0.5)
    mot, ident, img = res["result"]
    assert img.shape[-1] == 3 and img.shape[1] == 96 and float(img.max()) > 0.5
    assert abs(float(mot.params.jaw_pose[0, 0]) - np.deg2rad(20)) < 1e-5 and float(mot.params.expression[0, 0]) == 0.5
    shown = res["ui"]["images"][0]
    assert (tmp_path / "out" / shown["subfolder"] / shown["filename"]).is_file()
    assert load_preset(tmp_path / "models" / "expportrait" / "presets" / "open_mouth.json").values["jaw_open"] == 20.0
