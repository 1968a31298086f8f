"""The personalized head proxy on the synthetic SMPL-X-format model."""
import pytest
import torch

from expportrait_core.head import ProxyConfig, load_head_proxy


def test_proxy_matches_smplx_at_base_vertices(proxy, synthetic_model_path):
    """At the original bust vertices the proxy equals smplx.SMPLX's own forward pass."""
    import smplx

    ref = smplx.SMPLX(str(synthetic_model_path), num_betas=300, num_expression_coeffs=100, use_pca=False,
                      flat_hand_mean=True, batch_size=2)
    g = torch.Generator().manual_seed(0)
    p = proxy.zero_params(2)
    p = p.replace(betas=torch.randn(2, 300, generator=g) * 0.5, expression=torch.randn(2, 100, generator=g) * 0.5,
                  jaw_pose=torch.tensor([[0.2, 0, 0], [0.1, 0.02, 0]]), global_orient=torch.randn(2, 3, generator=g) * 0.1,
                  neck_pose=torch.randn(2, 3, generator=g) * 0.1, head_pose=torch.randn(2, 3, generator=g) * 0.1,
                  transl=torch.randn(2, 3, generator=g) * 0.05)
    body = torch.zeros(2, 21, 3)
    body[:, 11] = p.neck_pose
    body[:, 14] = p.head_pose
    with torch.no_grad():
        out = ref(betas=p.betas, expression=p.expression, jaw_pose=p.jaw_pose, global_orient=p.global_orient,
                  body_pose=body.reshape(2, -1), transl=p.transl, leye_pose=p.leye_pose, reye_pose=p.reye_pose)
        mine = proxy(p)
    n = proxy.bust_vertex_ids.numel()  # the first n upsampled vertices are the bust's base vertices
    err = (mine.vertices[:, :n] - out.vertices[:, proxy.bust_vertex_ids]).abs().max()
    assert err < 1e-5, f"max deviation from smplx {err:.2e} m"


def test_jaw_moves_mouth_not_skull_and_offsets_follow_neck(proxy):
    p = proxy.zero_params(2)
    p.jaw_pose[1, 0] = 0.35
    with torch.no_grad():
        v = proxy(p).vertices
    moved = (v[1] - v[0]).norm(dim=-1)
    top = v[0, :, 1].argmax()
    lm = proxy(p).landmarks
    assert moved[top] < 1e-6, "skull top moved with the jaw"
    chin = lm[0, 8]  # iBUG 8 = chin
    near_chin = (v[0] - chin).norm(dim=-1) < 0.01
    assert moved[near_chin].mean() > 0.005, "chin did not move with the jaw"
    # static offsets live in canonical space: rotating the neck carries them along
    bump = torch.zeros(proxy.num_vertices, 3)
    bump[top] = torch.tensor([0.0, 0.01, 0.0])
    q = proxy.zero_params(1)
    q.neck_pose[0, 1] = 0.5
    with torch.no_grad():
        a = proxy(q).vertices[0, top]
        b = proxy(q, bump).vertices[0, top]
        R = proxy(q, return_canonical=True)
    d = b - a
    assert abs(d.norm() - 0.01) < 1e-4  # rigidly carried (the skull top is skinned to the head only)
    assert d[0].abs() + d[2].abs() < 0.003  # a yaw does not tilt 'up'
    q2 = proxy.zero_params(1)
    q2.neck_pose[0, 0] = 0.6  # pitch: 'up' of the head rotates towards +z/-z
    with torch.no_grad():
        d2 = proxy(q2, bump).vertices[0, top] - proxy(q2).vertices[0, top]
    assert d2[2].abs() > 0.004, "static offset did not rotate with the neck"


def test_regions_and_upsampling(proxy):
    assert proxy.num_vertices > 4 * proxy.bust_vertex_ids.numel() * 0.9  # at least one level of subdivision
    fw = proxy.face_weight
    assert 0.05 < (fw > 0.5).float().mean() < 0.6, "face region should be a part of the bust"
    with torch.no_grad():
        out = proxy(proxy.zero_params(1))
    v = out.vertices[0]
    lm = out.landmarks[0]
    nose = lm[30]
    assert fw[(v - nose).norm(dim=-1).argmin()] == 1.0, "nose tip must be in the face region"
    top = v[:, 1].argmax()
    assert fw[top] == 0.0, "skull top must not be in the face region"
    # dynamic offsets are masked to the face
    dyn = torch.full((1, proxy.num_vertices, 3), 0.01)
    with torch.no_grad():
        moved = (proxy(proxy.zero_params(1), None, dyn).vertices[0] - v).norm(dim=-1)
    assert moved[top] < 1e-7 and moved[(v - nose).norm(dim=-1).argmin()] > 0.009


def test_landmark_rig_matches_full_proxy(proxy):
    g = torch.Generator().manual_seed(3)
    p = proxy.zero_params(4).replace(
        betas=torch.randn(1, 300, generator=g) * 0.5,
        expression=torch.randn(4, 100, generator=g) * 0.7,
        jaw_pose=torch.tensor([[0.0, 0, 0], [0.3, 0, 0], [0.1, 0.05, 0], [0.2, 0, 0]]),
        head_pose=torch.randn(4, 3, generator=g) * 0.2,
        neck_pose=torch.randn(4, 3, generator=g) * 0.2,
        transl=torch.randn(4, 3, generator=g) * 0.05,
    )
    so = torch.randn(proxy.num_vertices, 3, generator=g) * 1e-3
    rig = proxy.landmark_rig(p.betas, so)
    with torch.no_grad():
        full = proxy(p, so).landmarks
        fast = rig(p)
    err = (full - fast).norm(dim=-1)
    assert err.max() < 1e-3, f"rig deviates {err.max():.2e} m"


def test_expression_count_and_bad_config(synthetic_model_path):
    from expportrait_core.errors import ExpPortraitError

    pr = load_head_proxy(synthetic_model_path, ProxyConfig(num_expression=50, subdivision=0))
    assert pr.exprdirs.shape[-1] == 50 and pr.num_vertices == pr.bust_vertex_ids.numel()
    with pytest.raises(ExpPortraitError):
        load_head_proxy(synthetic_model_path, ProxyConfig(num_expression=150))
