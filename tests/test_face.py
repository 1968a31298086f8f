"""Face analysis: layouts, dlib on real photos and video, insightface ONNX path on generated graphs,
framing and smoothing, nodes.

Real inputs: the photos shipped in the insightface wheel (``insightface/data/images``: a 112 px
portrait ``Tom_Hanks_54745.png`` and the group photo ``t1.jpg``) and ``/work/shared/testdata``
(LivePortrait example assets, MIT). Tests needing one of them skip when it is absent.
"""
from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import pytest

from expportrait_core.errors import ExpPortraitError, MissingModelError
from expportrait_core.face import (
    IBUG68_FLIP,
    IBUG68_TABLE,
    IBUG68_TO_SMPLX,
    IBUG68_TO_SMPLX_JOINT,
    INSIGHTFACE106_TO_IBUG68,
    LANDMARK_WEIGHTS_68,
    BoxSmoothing,
    CropTransform,
    Face,
    box_iou,
    cosine_similarity,
    crop_portrait,
    crop_square_for_box,
    crop_video,
    crop_with_square,
    face_square_box,
    load_face_analyzer,
    mirror_landmarks,
    parse_box,
    smooth_boxes,
    split_for_smplx,
    to_rgb_uint8,
    track_faces_in_video,
)

cv2 = pytest.importorskip("cv2")

_IF_SPEC = importlib.util.find_spec("insightface")
IF_IMAGES = Path(list(_IF_SPEC.submodule_search_locations)[0]) / "data" / "images" if _IF_SPEC else Path("/nonexistent")
TESTDATA = Path(os.environ.get("EXPPORTRAIT_TESTDATA", "/work/shared/testdata"))
HAS_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None
needs_dlib = pytest.mark.skipif(not HAS_DLIB, reason="dlib-bin / face_recognition_models not installed")

# Centres of the six clearly visible faces in t1.jpg (1280x886), annotated by eye: Rachel, Monica,
# Ross, Chandler, Joey, Phoebe.
T1_FACE_CENTRES = [(117, 336), (318, 222), (515, 362), (786, 417), (935, 141), (1166, 336)]


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        pytest.skip(f"test image {path} not available")
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def dlib_an():
    if not HAS_DLIB:
        pytest.skip("dlib not installed")
    return load_face_analyzer("dlib")


@pytest.fixture(scope="module")
def group():
    return _read(IF_IMAGES / "t1.jpg")


@pytest.fixture(scope="module")
def portrait():
    return _read(IF_IMAGES / "Tom_Hanks_54745.png")


@pytest.fixture(scope="module")
def reference():
    return _read(TESTDATA / "reference_glasses_512x480.png")


@pytest.fixture(scope="module")
def clip():
    av = pytest.importorskip("av")
    path = TESTDATA / "driving_expressions_480.mp4"
    if not path.is_file():
        pytest.skip("driving clip not available")
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(24), c.decode(video=0))]
    return frames


@pytest.fixture(scope="module")
def group_faces(dlib_an, group):
    return dlib_an.detect(group, with_embedding=True)


def assert_anatomical(face: Face, margin: float = 0.25) -> None:
    """Landmarks in anatomical order and on the face box."""
    l, b = face.landmarks, face.box
    assert l.shape == (68, 2) and l.dtype == np.float32 and np.all(np.isfinite(l))
    side = max(b[2] - b[0], b[3] - b[1])
    # the inner face (nose, eyes, mouth) lies inside the detector box; brows and jaw line may
    # extend past dlib's tight box, but not by more than `margin` of its size
    inner = l[27:]
    assert np.all((inner[:, 0] >= b[0]) & (inner[:, 0] <= b[2]) & (inner[:, 1] >= b[1]) & (inner[:, 1] <= b[3]))
    assert np.all(l >= b[:2] - margin * side) and np.all(l <= b[2:] + margin * side)
    eyes_y = l[36:48, 1].mean()
    assert l[17:27, 1].mean() < eyes_y < l[30, 1] < l[48:68, 1].mean() < l[8, 1]  # brows > eyes > nose > mouth > chin
    assert l[36:42, 0].mean() < l[42:48, 0].mean()  # subject's right eye on the image left
    assert l[0, 0] < l[8, 0] < l[16, 0] and l[48, 0] < l[54, 0] and l[17, 0] < l[26, 0]
    assert l[51, 1] < l[57, 1] and l[50:53, 1].mean() < l[61:64, 1].mean()  # upper lip above lower lip
    assert l[61:64, 1].mean() < l[65:68, 1].mean() + 0.02 * side  # inner lips may touch, not cross
    np.testing.assert_allclose(face.landmark_weights, LANDMARK_WEIGHTS_68 * face.score, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# layout tables
# ---------------------------------------------------------------------------------------------
def test_layout_tables_are_consistent():
    assert [r.index for r in IBUG68_TABLE] == list(range(68))
    assert all(IBUG68_TO_SMPLX[i] == ("dynamic", i) for i in range(17))
    assert all(IBUG68_TO_SMPLX[i] == ("static", i - 17) for i in range(17, 68))
    assert sorted(IBUG68_TO_SMPLX_JOINT.tolist()) == list(range(76, 144))
    static, dynamic = split_for_smplx(np.arange(68 * 2).reshape(68, 2))
    assert static.shape == (51, 2) and dynamic.shape == (17, 2) and static[0, 0] == 34
    w = {r.region: [] for r in IBUG68_TABLE}
    for r in IBUG68_TABLE:
        w[r.region].append(r.weight)
    assert max(w["contour"]) < min(min(w["eye"]), min(w["nose"]), min(w["mouth_outer"]))
    assert LANDMARK_WEIGHTS_68[[48, 54]].min() == LANDMARK_WEIGHTS_68.max()  # mouth corners weigh most
    # flip permutation: an involution that swaps left/right halves and keeps the midline
    assert sorted(IBUG68_FLIP.tolist()) == list(range(68))
    np.testing.assert_array_equal(IBUG68_FLIP[IBUG68_FLIP], np.arange(68))
    assert IBUG68_FLIP[36] == 45 and IBUG68_FLIP[48] == 54 and IBUG68_FLIP[8] == 8 and IBUG68_FLIP[30] == 30
    # insightface 106 → 68: 68 distinct indices, with the groups insightface users rely on
    m = INSIGHTFACE106_TO_IBUG68
    assert len(set(m.tolist())) == 68 and m.min() >= 0 and m.max() < 106
    assert set(m[0:17]) <= set(range(33)) and set(m[36:42]) <= set(range(33, 43)) and set(m[42:48]) <= set(range(87, 97))
    assert (m[48], m[54]) == (52, 61) and set(m[48:68]) <= set(range(52, 72))


def test_image_normalisation():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    assert to_rgb_uint8(rgb) is not None and to_rgb_uint8(rgb).shape == (9, 7, 3)
    np.testing.assert_array_equal(to_rgb_uint8(rgb.astype(np.float32) / 255.0), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(np.dstack([rgb, np.zeros((9, 7), np.uint8)])), rgb)
    g = to_rgb_uint8(rgb[..., 0])
    assert g.shape == (9, 7, 3) and np.array_equal(g[..., 1], rgb[..., 0])
    np.testing.assert_array_equal(to_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    nan = np.full((4, 4, 3), np.nan, np.float32)
    assert to_rgb_uint8(nan).max() == 0
    for bad in (np.zeros((2, 3, 4, 3)), np.zeros((0, 5, 3)), np.zeros((5, 5, 2)), np.array(["a"])):
        with pytest.raises(ExpPortraitError):
            to_rgb_uint8(bad)
    assert cosine_similarity([1, 0], [0, 2]) == 0.0 and abs(cosine_similarity([1, 1], [2, 2]) - 1) < 1e-12
    with pytest.raises(ExpPortraitError, match="different sizes"):
        cosine_similarity(np.ones(128), np.ones(512))


# ---------------------------------------------------------------------------------------------
# dlib backend on real photos
# ---------------------------------------------------------------------------------------------
@needs_dlib
def test_dlib_portrait_has_exactly_one_face(dlib_an, portrait):
    faces = dlib_an.detect(portrait)
    assert len(faces) == 1
    assert faces[0].backend == "dlib-hog" and 0.5 <= faces[0].score <= 1.0
    assert_anatomical(faces[0])


@needs_dlib
def test_dlib_group_photo_finds_every_visible_face(group_faces, dlib_an, group):
    assert len(group_faces) == len(T1_FACE_CENTRES)
    for cx, cy in T1_FACE_CENTRES:  # each annotated face is covered by exactly one detection
        hits = [f for f in group_faces if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
        assert len(hits) == 1, (cx, cy)
    areas = [f.area for f in group_faces]
    assert areas == sorted(areas, reverse=True)
    for i, f in enumerate(group_faces):
        assert_anatomical(f)
        assert all(box_iou(f.box, g.box) < 0.1 for g in group_faces[i + 1:])
    two = dlib_an.detect(group, max_faces=2)
    assert len(two) == 2 and np.allclose(two[0].box, group_faces[0].box) and np.allclose(two[1].box, group_faces[1].box)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _variants(img: np.ndarray):
    h, w = img.shape[:2]
    small = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return {
        "flip": np.ascontiguousarray(img[:, ::-1]),
        "resize": cv2.resize(small, (int(w * 1.3), int(h * 1.3)), interpolation=cv2.INTER_LINEAR),
        "jpeg": _jpeg(img, 30),
    }


@needs_dlib
def test_dlib_identity_similarity(dlib_an, group, group_faces, portrait):
    emb = np.stack([f.embedding for f in group_faces])
    assert emb.shape == (6, 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    for i, f in enumerate(group_faces):
        others = max(sims[i, j] for j in range(len(group_faces)) if j != i)
        crop, _ = crop_portrait(group, f, scale=2.0, offset=(0.0, 0.0), size=256)
        for name, v in _variants(crop).items():
            got = dlib_an.detect(v, max_faces=1, with_embedding=True)
            assert len(got) == 1, (i, name)
            assert cosine_similarity(got[0].embedding, f.embedding) > others, (i, name)
    # the single portrait: itself after each change beats every face of the group photo
    p = dlib_an.detect(portrait, with_embedding=True)[0]
    worst_self = min(cosine_similarity(dlib_an.detect(v, max_faces=1, with_embedding=True)[0].embedding, p.embedding)
                     for v in _variants(portrait).values())
    assert worst_self > max(cosine_similarity(p.embedding, e) for e in emb)
    # embed() on a given face equals the detect(with_embedding) result
    np.testing.assert_allclose(dlib_an.embed(group, group_faces[0]), group_faces[0].embedding, atol=1e-5)


@needs_dlib
def test_dlib_flip_consistency_validates_flip_table(dlib_an, reference):
    a = dlib_an.detect(reference)[0]
    b = dlib_an.detect(np.ascontiguousarray(reference[:, ::-1]))[0]
    back = mirror_landmarks(b.landmarks, reference.shape[1])
    side = a.box[2] - a.box[0]
    err = np.linalg.norm(back - a.landmarks, axis=1)
    assert np.median(err) < 0.02 * side and err[27:].max() < 0.06 * side


@needs_dlib
def test_dlib_odd_inputs(dlib_an, reference):
    base = dlib_an.detect(reference)
    assert len(base) == 1
    ref = base[0].landmarks
    side = base[0].box[2] - base[0].box[0]
    # gray, RGBA, float 0..1 give the same face
    gray = cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([reference, np.full(reference.shape[:2], 128, np.uint8)])
    for img in (gray, rgba, reference.astype(np.float32) / 255.0):
        f = dlib_an.detect(img)
        assert len(f) == 1 and np.median(np.linalg.norm(f[0].landmarks - ref, axis=1)) < 0.03 * side
    # odd size: an off-centre 317x251 window
    win = reference[101:352, 77:394]
    f = dlib_an.detect(win)
    assert len(f) == 1 and np.median(np.linalg.norm(f[0].landmarks + [77, 101] - ref, axis=1)) < 0.03 * side
    # huge (3072x2880): detection runs downscaled, landmarks come back in full-size pixels
    big = cv2.resize(reference, (reference.shape[1] * 6, reference.shape[0] * 6), interpolation=cv2.INTER_LINEAR)
    f = dlib_an.detect(big)
    assert len(f) == 1 and np.median(np.linalg.norm(f[0].landmarks / 6 - ref, axis=1)) < 0.03 * side
    # tiny face (~55 px in a 128x120 image): found by the upscaled / padded pass
    tiny = cv2.resize(reference, (128, 120), interpolation=cv2.INTER_AREA)
    f = dlib_an.detect(tiny)
    assert len(f) == 1
    assert np.median(np.linalg.norm(f[0].landmarks * (512 / 128) - ref, axis=1)) < 0.06 * side
    # no face / degenerate images: empty lists, not crashes
    rng = np.random.default_rng(1)
    assert dlib_an.detect(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) == []
    assert dlib_an.detect(np.zeros((4, 4, 3), np.uint8)) == []
    assert dlib_an.detect(np.zeros((1, 3000, 3), np.uint8)) == []
    with pytest.raises(ExpPortraitError):
        dlib_an.detect(np.zeros((0, 0, 3), np.uint8))


# ---------------------------------------------------------------------------------------------
# video: tracking, missing frames, face selection
# ---------------------------------------------------------------------------------------------
@needs_dlib
def test_track_real_clip_and_redetect(dlib_an, clip):
    calls = []
    vf = track_faces_in_video(dlib_an, clip, progress=lambda i, n, p: calls.append((i, n)))
    t = len(clip)
    assert calls[-1] == (t, t) and len(calls) == t
    assert vf.landmarks.shape == (t, 68, 2) and vf.found.all() and vf.missing == [] and vf.image_size == (480, 480)
    for i in range(t):
        assert_anatomical(vf.face(i))
    # re-detecting every 6 frames and following the landmarks in between stays on the face
    tr = track_faces_in_video(dlib_an, clip, redetect_every=6)
    assert tr.found.all() and tr.tracked.sum() >= t // 2
    side = float(np.median(vf.boxes[:, 2] - vf.boxes[:, 0]))
    err = np.linalg.norm(tr.landmarks - vf.landmarks, axis=2)
    assert np.median(err) < 0.02 * side and err.max() < 0.12 * side


@needs_dlib
def test_missing_frames_error_or_interpolate(dlib_an, reference):
    small = cv2.resize(reference, (256, 240), interpolation=cv2.INTER_AREA)  # keeps the no-face retries quick
    blank = np.full_like(small, 90)
    shifted = np.roll(small, 6, axis=1)
    reference = small
    frames = [reference, reference, blank, blank, shifted, blank]
    with pytest.raises(ExpPortraitError, match=r"3 of 6 frames: 2-3, 5"):
        track_faces_in_video(dlib_an, frames)
    vf = track_faces_in_video(dlib_an, frames, on_missing="interpolate")
    assert vf.missing == [2, 3, 5] and vf.found.tolist() == [True, True, False, False, True, False]
    a, b = vf.landmarks[1], vf.landmarks[4]
    np.testing.assert_allclose(vf.landmarks[2], a + (b - a) / 3, atol=1e-3)
    np.testing.assert_allclose(vf.landmarks[5], b, atol=1e-4)  # held at the end
    assert vf.scores[2] == 0 and vf.landmark_weights[2].max() < vf.landmark_weights[1].max()
    with pytest.raises(ExpPortraitError, match="No frame"):
        track_faces_in_video(dlib_an, [blank, blank], on_missing="interpolate")


def _two_face_clip(reference, portrait, n=6):
    """Two faces moving apart; face B grows until it is larger than face A."""
    a_img = cv2.resize(reference[60:440, 70:410], (220, 246))
    frames, centres = [], []
    for t in range(n):
        s = int(150 + 30 * t)  # B: 150 → 300 px, larger than A (220) from t = 3
        b_img = cv2.resize(portrait, (s, s), interpolation=cv2.INTER_CUBIC)
        canvas = np.full((420, 760, 3), 200, np.uint8)
        ax, bx = 20 + 4 * t, 420 + 2 * t
        canvas[60:306, ax:ax + 220] = a_img
        canvas[40:40 + s, bx:bx + s] = b_img
        frames.append(canvas)
        centres.append(((ax + 110, 183), (bx + s / 2, 40 + s / 2)))
    return frames, centres


@needs_dlib
def test_face_selection_is_stable_across_frames(dlib_an, reference, portrait):
    frames, centres = _two_face_clip(reference, portrait)
    assert dlib_an.detect(frames[-1])[0].box[0] > 380  # the largest face flips to B late in the clip
    for sel, k in (("largest", 0), (1, 1)):
        vf = track_faces_in_video(dlib_an, frames, face_selection=sel)
        assert vf.found.all()
        for t, c in enumerate(centres):
            x0, y0, x1, y1 = vf.boxes[t]
            assert x0 <= c[k][0] <= x1 and y0 <= c[k][1] <= y1, (sel, t)
    with pytest.raises(ExpPortraitError):
        track_faces_in_video(dlib_an, frames, face_selection=2)


# ---------------------------------------------------------------------------------------------
# framing
# ---------------------------------------------------------------------------------------------
def _marker_image(h=300, w=400):
    img = np.zeros((h, w, 3), np.uint8)
    pts = np.array([[100.5, 80.5], [250.5, 200.5], [180.5, 140.5]])
    for i, (x, y) in enumerate(pts):
        img[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2, i] = 255  # 3x3 blob centred on pixel centre
    return img, pts


def _centroid(chan: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(chan > 20)
    w = chan[ys, xs].astype(np.float64)
    return np.array([(xs * w).sum() / w.sum() + 0.5, (ys * w).sum() / w.sum() + 0.5])


@pytest.mark.parametrize("side,size", [(120.0, 240), (173.3, 128), (250.0, 64)])
def test_crop_transform_maps_pixels_exactly(side, size):
    img, pts = _marker_image()
    sq = np.array([60.3, 40.7, 60.3 + side, 40.7 + side])
    crop, tf = crop_with_square(img, sq, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    assert isinstance(tf, CropTransform) and abs(tf.scale - size / side) < 1e-9 * tf.scale
    for i, p in enumerate(pts):
        want = tf.to_crop(p)
        if 3 <= want[0] < size - 3 and 3 <= want[1] < size - 3:
            got = _centroid(crop[..., i])
            assert np.abs(got - want).max() < 0.35, (got, want)
    q = np.array([[3.2, 7.9], [500.0, -20.0]])
    np.testing.assert_allclose(tf.to_original(tf.to_crop(q)), q, atol=1e-3)
    m = tf.matrix()
    np.testing.assert_allclose(q @ m[:, :2].T + m[:, 2], tf.to_crop(q), atol=1e-3)
    assert CropTransform.from_dict(tf.to_dict()) == tf


def test_crop_padding_and_framing():
    img = np.full((100, 100, 3), 200, np.uint8)
    crop, tf = crop_portrait(img, np.array([-40, -40, 20, 20]), scale=2.0, offset=(0.0, 0.0), size=60)
    assert crop[0, 0].max() == 0 and crop[-1, -1].min() == 200  # outside → black, inside → image
    crop_e, _ = crop_portrait(img, np.array([-40, -40, 20, 20]), scale=2.0, offset=(0.0, 0.0), size=60, pad_mode="edge")
    assert crop_e.min() == 200
    sq = crop_square_for_box(np.array([100, 100, 200, 160]), scale=2.0, offset=(0.0, -0.1))
    np.testing.assert_allclose(sq, [50, 10, 250, 210])  # side 200 around (150, 130) - 20 px up
    face = Face(np.array([0, 0, 1, 1], np.float32), 1.0, np.array([[10, 20], [50, 80]] * 34, np.float32),
                LANDMARK_WEIGHTS_68.copy(), None, "test")
    np.testing.assert_allclose(face_square_box(face), [10, 20, 50, 80])
    np.testing.assert_allclose(parse_box("1, 2 30,40"), [1, 2, 30, 40])
    for bad in ("1,2,3", "a,b,c,d", "5,5,1,1"):
        with pytest.raises(ExpPortraitError):
            parse_box(bad)


def _jitter_sequence(seed=0):
    """Still (60) → moving right at 4 px/frame (40) → still (100), box 200 px, jitter σ = 1.5 px."""
    rng = np.random.default_rng(seed)
    t = 200
    x = np.zeros(t)
    x[60:100] = np.arange(1, 41) * 4.0
    x[100:] = 160.0
    cx = 300 + x
    boxes = np.stack([cx - 100, np.full(t, 100.0), cx + 100, np.full(t, 300.0)], 1)
    noisy = boxes + rng.normal(0, 1.5, boxes.shape)
    return boxes, noisy


def test_smoothing_removes_jitter_and_follows_motion():
    true, noisy = _jitter_sequence()
    sm = smooth_boxes(noisy)
    c_true, c_raw, c_sm = [(b[:, :2] + b[:, 2:]) / 2 for b in (true, noisy, sm)]
    still = np.r_[10:60, 130:200]
    rms = lambda c: np.sqrt(np.mean(np.sum(np.diff(c, axis=0)[still[:-1]] ** 2, axis=1)))
    ratio = rms(c_raw) / rms(c_sm)
    assert ratio >= 5.0, ratio
    # lag on the motion (after its onset): how many frames of motion the smoothed centre trails by
    lag = np.mean(c_true[70:100, 0] - c_sm[70:100, 0]) / 4.0
    assert lag < 2.0, lag
    # no zoom pumping: the size jitter drops too
    size = lambda b: b[:, 2] - b[:, 0]
    assert np.std(np.diff(size(sm))[still[:-1]]) * 5 < np.std(np.diff(size(noisy))[still[:-1]])
    # causal: changing the future does not change the past
    noisy2 = noisy.copy()
    noisy2[120:] += 50
    noisy2[150:, 2:] += 80  # and a change of size
    np.testing.assert_array_equal(smooth_boxes(noisy2)[:120], sm[:120])
    # the crop of a smoothed video jitters less than the raw one
    frames = [np.zeros((400, 700, 3), np.uint8)] * 3
    crops, tfs = crop_video(frames, noisy[:3], size=64, smoothing=BoxSmoothing())
    assert crops.shape == (3, 64, 64, 3) and len(tfs) == 3


# ---------------------------------------------------------------------------------------------
# insightface backend on generated ONNX graphs with the real pack's input/output signatures
# ---------------------------------------------------------------------------------------------
try:  # only the graph generator needs the onnx package; the backend itself does not
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover - depends on the environment
    onnx = None
HAS_ORT = onnx is not None and importlib.util.find_spec("onnxruntime") is not None
needs_onnx = pytest.mark.skipif(not HAS_ORT, reason="onnx / onnxruntime not installed")

KPS_D = np.array([-0.25, -0.2, 0.25, -0.2, 0.0, 0.05, -0.2, 0.25, 0.2, 0.25], np.float32)


def _save(path: Path, nodes, inputs, outputs, inits, first_node_name=None):
    if first_node_name:  # insightface picks (mean, std) from the names of the first nodes
        nodes = [helper.make_node("Identity", [inputs[0].name], ["_norm_in"], name=first_node_name)] + [
            helper.make_node(n.op_type, [("_norm_in" if i == inputs[0].name else i) for i in n.input], list(n.output),
                             name=n.name, **{a.name: helper.get_attribute_value(a) for a in n.attribute})
            for n in nodes
        ]
    g = helper.make_graph(nodes, path.stem, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def make_scrfd(path: Path, analytic: bool) -> None:
    """SCRFD-like detector, det_10g signature: input 'input.1' [1,3,?,?]; 9 outputs (score, bbox,
    kps for strides 8/16/32; 2 anchors per cell). Score = sigmoid(20 (p - 0.5)) with p the mean
    normalised red value of the cell; analytic=True keeps only stride 32 (a single clean hit)."""
    nodes, inits, outs = [], {}, []
    inits["starts"], inits["ends"], inits["axes"] = np.array([0]), np.array([1]), np.array([1])
    nodes.append(helper.make_node("Slice", ["input.1", "starts", "ends", "axes"], ["red"]))
    inits["shape1"], inits["shape4"], inits["shape10"] = np.array([-1, 1]), np.array([-1, 4]), np.array([-1, 10])
    names = {"score": ["448", "471", "494"], "bbox": ["451", "474", "497"], "kps": ["454", "477", "500"]}
    per = {"score": [], "bbox": [], "kps": []}
    for k, s in enumerate((8, 16, 32)):
        nodes.append(helper.make_node("AveragePool", ["red"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]))
        nodes.append(helper.make_node("Transpose", [f"p{s}"], [f"t{s}"], perm=[0, 2, 3, 1]))
        on = (s == 32) or not analytic
        inits[f"a{s}"] = np.array(20.0 if on else 0.0, np.float32)
        inits[f"b{s}"] = np.array(-10.0, np.float32)
        nodes += [helper.make_node("Mul", [f"t{s}", f"a{s}"], [f"m{s}"]), helper.make_node("Add", [f"m{s}", f"b{s}"], [f"z{s}"]),
                  helper.make_node("Sigmoid", [f"z{s}"], [f"sg{s}"]),
                  helper.make_node("Concat", [f"sg{s}", f"sg{s}"], [f"sc{s}"], axis=3),
                  helper.make_node("Reshape", [f"sc{s}", "shape1"], [names["score"][k]])]
        kb = 0.0 if analytic else 0.25
        inits[f"kb{s}"] = np.array(kb, np.float32)
        inits[f"cb{s}"] = (np.full(8, 0.5, np.float32) if analytic else np.array([0.9, 1.0, 1.1, 1.2, 1.0, 0.9, 1.3, 1.1], np.float32))
        inits[f"ck{s}"] = np.tile(KPS_D, 2)
        nodes += [helper.make_node("Mul", [f"t{s}", f"kb{s}"], [f"bm{s}"]), helper.make_node("Add", [f"bm{s}", f"cb{s}"], [f"ba{s}"]),
                  helper.make_node("Reshape", [f"ba{s}", "shape4"], [names["bbox"][k]]),
                  helper.make_node("Mul", [f"t{s}", f"kb{s}"], [f"km{s}"]), helper.make_node("Add", [f"km{s}", f"ck{s}"], [f"ka{s}"]),
                  helper.make_node("Reshape", [f"ka{s}", "shape10"], [names["kps"][k]])]
        for key, d in (("score", 1), ("bbox", 4), ("kps", 10)):
            per[key].append(helper.make_tensor_value_info(names[key][k], TensorProto.FLOAT, [f"n{s}", d]))
    outs = per["score"] + per["bbox"] + per["kps"]
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
    _save(path, nodes, [inp], outs, inits)


def _linear_head(path: Path, in_name, size, pool, n_out, bias, weight_scale, out_name, first_node_name=None, seed=0):
    """Tiny regressor: average-pool the input to a 4x4x3 grid → linear → [1, n_out]."""
    rng = np.random.default_rng(seed)
    feat = 3 * (size // pool) ** 2
    inits = {"W": (rng.normal(0, 1, (feat, n_out)) * weight_scale).astype(np.float32), "B": bias.astype(np.float32).reshape(n_out)}
    nodes = [helper.make_node("AveragePool", [in_name], ["pooled"], name="pool0", kernel_shape=[pool, pool], strides=[pool, pool]),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten1"),
             helper.make_node("MatMul", ["flat", "W"], ["mm"], name="fc_matmul"),
             helper.make_node("Add", ["mm", "B"], [out_name], name="fc_bias")]
    inp = helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, n_out])
    _save(path, nodes, [inp], [out], inits, first_node_name)


def template_106(seed=0) -> np.ndarray:
    """A 106-point set (in [-1, 1] crop units) whose iBUG-68 selection is an anatomical face."""
    # mean iBUG-68 face, roughly (x right, y down, units of half the crop)
    u = np.linspace(-1, 1, 17)
    jaw = np.stack([0.42 * u, -0.15 + 0.6 * np.sqrt(1 - u ** 2)], 1)  # ear (eye level) → chin → ear
    brows = np.stack([np.r_[np.linspace(-0.36, -0.08, 5), np.linspace(0.08, 0.36, 5)], np.full(10, -0.28)], 1)
    nose = np.r_[np.stack([np.zeros(4), np.linspace(-0.18, 0.02, 4)], 1), np.stack([np.linspace(-0.08, 0.08, 5), np.full(5, 0.07)], 1)]
    eye = lambda cx: np.stack([cx + np.array([-0.08, -0.04, 0.04, 0.08, 0.04, -0.04]), -0.17 + np.array([0, -0.02, -0.02, 0, 0.02, 0.02])], 1)
    mouth_o = np.stack([0.16 * np.cos(np.linspace(np.pi, -np.pi, 13)[:12]), 0.22 - 0.05 * np.sin(np.linspace(np.pi, -np.pi, 13)[:12])], 1)
    mouth_i = np.stack([0.1 * np.cos(np.linspace(np.pi, -np.pi, 9)[:8]), 0.22 - 0.015 * np.sin(np.linspace(np.pi, -np.pi, 9)[:8])], 1)
    l68 = np.concatenate([jaw, brows, nose, eye(-0.2), eye(0.2), mouth_o, mouth_i]).astype(np.float32)
    p106 = np.random.default_rng(seed).uniform(-0.3, 0.3, (106, 2)).astype(np.float32)
    p106[INSIGHTFACE106_TO_IBUG68] = l68
    return p106


def make_pack(folder: Path, analytic: bool = True, first_node_name=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_scrfd(folder / "det_10g.onnx", analytic)
    # random weights for the reference comparison (smaller when the graph sees raw 0..255 input)
    ws = 0.0 if analytic else (0.05 if first_node_name is None else 0.05 / 128)
    _linear_head(folder / "2d106det.onnx", "data", 192, 48, 212, template_106().ravel(), ws, "fc1", first_node_name, seed=1)
    t3 = np.zeros((1103, 3), np.float32)
    t3[-68:, :2] = template_106()[INSIGHTFACE106_TO_IBUG68]
    t3[-68:, 2] = np.linspace(-0.1, 0.1, 68)
    _linear_head(folder / "1k3d68.onnx", "data", 192, 48, 3309, t3.ravel(), ws, "fc1", first_node_name, seed=2)
    _linear_head(folder / "w600k_r50.onnx", "input.1", 112, 28, 512, np.zeros(512), 1.0, "683", seed=3)
    _linear_head(folder / "genderage.onnx", "data", 96, 24, 3, np.zeros(3), 1.0, "fc1", seed=4)
    return folder


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    if not HAS_ORT:
        pytest.skip("onnx / onnxruntime not installed")
    root = tmp_path_factory.mktemp("insightface")
    make_pack(root / "models" / "buffalo_l", analytic=True)
    return root


def test_insightface_missing_pack_names_folder_and_files(tmp_path):
    with pytest.raises(MissingModelError) as e:
        load_face_analyzer("insightface", model_pack="buffalo_l", models_dir=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "models" / "buffalo_l") in msg and "det_10g.onnx" in msg and "w600k_r50.onnx" in msg
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created
    (tmp_path / "models" / "antelopev2").mkdir(parents=True)
    with pytest.raises(MissingModelError, match="glintr100.onnx"):
        load_face_analyzer("insightface", model_pack="antelopev2", models_dir=str(tmp_path))
    if HAS_DLIB:  # auto falls back to dlib when no pack is installed
        assert load_face_analyzer("auto", models_dir=str(tmp_path)).name.startswith("dlib")


@needs_onnx
def test_insightface_tiny_pack_decodes_into_contract(tiny_root):
    an = load_face_analyzer("auto", model_pack="buffalo_l", models_dir=str(tiny_root), providers=["cpu"])
    assert an.name == "insightface:buffalo_l" and "genderage.onnx" in an.ignored
    img = np.zeros((240, 320, 3), np.uint8)
    img[48:64, 80:96] = 255  # one stride-32 cell (row 3, col 5) of the 2x letterboxed input
    faces = an.detect(img, with_embedding=True)
    assert len(faces) == 1
    f = faces[0]
    # anchor (160, 96) in the 640x480 letterbox ± 0.5 * 32, back to the image: (raw + 0.5) / 2
    np.testing.assert_allclose(f.box, (np.array([144, 80, 176, 112]) + 0.5) / 2, atol=1e-4)
    assert f.score > 0.99
    np.testing.assert_allclose(f.keypoints5, (np.array([160, 96]) + KPS_D.reshape(5, 2) * 32 + 0.5) / 2, atol=1e-4)
    # landmarks: the regressor's [-1, 1] output spans 1.5 x the box around its centre
    centre = (f.box[:2] + f.box[2:]) / 2
    side = max(f.box[2] - f.box[0], f.box[3] - f.box[1])
    want = centre + template_106()[INSIGHTFACE106_TO_IBUG68] * 0.75 * side
    np.testing.assert_allclose(f.landmarks, want, atol=2e-3)
    np.testing.assert_allclose(f.extra["landmarks_106"], centre + template_106() * 0.75 * side, atol=2e-3)
    assert_anatomical(f, margin=0.5)
    assert f.embedding.shape == (512,) and abs(np.linalg.norm(f.embedding) - 1) < 1e-5
    # alignment: the same face moved by whole pixels gives the same embedding, other content does not
    moved = np.roll(np.roll(img, 32, axis=1), 16, axis=0)
    g = an.detect(moved, with_embedding=True)[0]
    np.testing.assert_allclose(g.box, f.box + [32, 16, 32, 16], atol=1e-4)
    assert cosine_similarity(f.embedding, g.embedding) > 0.999
    noisy = img.copy()
    noisy[30:90, 60:120, 1] = np.random.default_rng(0).integers(0, 255, (60, 60))
    assert cosine_similarity(an.embed(noisy, f), f.embedding) < 0.99
    # a face without detector keypoints is aligned from its 68 landmarks
    f2 = Face(f.box, f.score, f.landmarks, f.landmark_weights, None, "x")
    assert an.embed(img, f2).shape == (512,)
    # the 3D 68-point model path
    from expportrait_core.face.insightface_backend import InsightFaceAnalyzer, InsightFaceConfig

    an3 = InsightFaceAnalyzer(str(tiny_root / "models" / "buffalo_l"), ["cpu"], InsightFaceConfig(landmark_model="3d68"))
    f3 = an3.detect(img)[0]
    np.testing.assert_allclose(f3.landmarks, want, atol=2e-3)
    assert f3.extra["landmarks_3d_68"].shape == (68, 3)
    # gray / RGBA / float / odd / tiny inputs go through the same path without errors
    for im in (img[..., 0], np.dstack([img, img[..., :1]]), img / 255.0, img[:237, :311]):
        assert len(an.detect(im)) == 1
    assert an.detect(np.zeros((5, 5, 3), np.uint8)) == []
    assert an.detect(np.zeros((3000, 20, 3), np.uint8)) == []


@needs_onnx
def test_insightface_corrupt_file_is_a_clear_error(tmp_path):
    pack = make_pack(tmp_path / "models" / "buffalo_l")
    data = (pack / "2d106det.onnx").read_bytes()
    (pack / "2d106det.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ExpPortraitError, match="2d106det.onnx"):
        load_face_analyzer("insightface", models_dir=str(tmp_path))
    (pack / "2d106det.onnx").unlink()
    (pack / "1k3d68.onnx").unlink()
    with pytest.raises(MissingModelError, match="landmark model"):
        load_face_analyzer("insightface", models_dir=str(tmp_path))


@needs_onnx
@pytest.mark.parametrize("first_node_name", [None, "bn_data"])
def test_insightface_matches_reference_implementation(tmp_path, reference, first_node_name):
    """Our onnxruntime code vs insightface's own SCRFD / Landmark / ArcFaceONNX classes on the same
    graphs (the reference works on BGR, pixel-index coordinates: ours are RGB, index + 0.5)."""
    pytest.importorskip("insightface")
    pytest.importorskip("skimage")
    from insightface.app.common import Face as IFace
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.landmark import Landmark
    from insightface.model_zoo.scrfd import SCRFD

    from expportrait_core.face.insightface_backend import onnx_first_node_names

    pack = make_pack(tmp_path / "buffalo_l", analytic=False, first_node_name=first_node_name)
    for f in ("2d106det.onnx", "det_10g.onnx"):  # our protobuf reader vs the onnx package
        assert onnx_first_node_names(str(pack / f), 8) == [n.name for n in onnx.load(str(pack / f)).graph.node[:8]]
    an = load_face_analyzer("insightface", model_pack=str(pack), providers=["cpu"])
    assert an.lmk106.mean == (0.0 if first_node_name else 127.5)
    bgr = np.ascontiguousarray(reference[:, :, ::-1])
    det = SCRFD(model_file=str(pack / "det_10g.onnx"))
    det.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    ref_dets, ref_kps = det.detect(bgr, input_size=(640, 640))
    dets, kps = an.detect_raw(reference)
    assert 3 <= len(dets) == len(ref_dets)
    s = 600 / 480  # letterbox scale of the 512x480 image into 640x640
    np.testing.assert_allclose(dets[:, :4], ref_dets[:, :4] + 0.5 / s, atol=2e-3)
    np.testing.assert_allclose(dets[:, 4], ref_dets[:, 4], atol=1e-6)
    np.testing.assert_allclose(kps, ref_kps + 0.5 / s, atol=2e-3)
    lm = Landmark(model_file=str(pack / "2d106det.onnx"))
    rec = ArcFaceONNX(model_file=str(pack / "w600k_r50.onnx"))
    for i in range(min(3, len(dets))):
        iface = IFace(bbox=ref_dets[i, :4], kps=ref_kps[i], det_score=ref_dets[i, 4])
        ref_106 = lm.get(bgr, iface)
        ours = an._landmark_net(an.lmk106, reference, ref_dets[i, :4] + 0.5)
        np.testing.assert_allclose(ours, ref_106 + 0.5, atol=2e-3)
        ref_emb = rec.get(bgr, iface)
        face = Face(ref_dets[i, :4] + 0.5, 1.0, np.zeros((68, 2), np.float32), LANDMARK_WEIGHTS_68, None, "x",
                    keypoints5=ref_kps[i] + 0.5)
        assert cosine_similarity(an.embed(reference, face), ref_emb) > 0.99999


# ---------------------------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------------------------
@needs_dlib
def test_nodes(reference, dlib_an):
    torch = pytest.importorskip("torch")
    from nodes.face import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    assert set(NODE_CLASS_MAPPINGS) == {"ExpPortraitFaceAnalyzer", "ExpPortraitDetectLandmarks", "ExpPortraitCropPortrait"}
    for key, cls in NODE_CLASS_MAPPINGS.items():
        assert NODE_DISPLAY_NAME_MAPPINGS[key] == "ExpPortrait " + " ".join(
            {"ExpPortraitFaceAnalyzer": ["Face", "Analyzer"], "ExpPortraitDetectLandmarks": ["Detect", "Landmarks"],
             "ExpPortraitCropPortrait": ["Crop", "Portrait"]}[key])
        assert cls.CATEGORY == "ExpPortrait/Face"
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for name, (typ, *opts) in group.items():
                assert opts and opts[0].get("tooltip"), f"{key}.{name} has no tooltip"
        assert all(t.startswith("EXPP_") or t == "IMAGE" for t in cls.RETURN_TYPES)

    (an,) = NODE_CLASS_MAPPINGS["ExpPortraitFaceAnalyzer"]().load("dlib", "buffalo_l", "auto", "hog")
    assert an.name == "dlib-hog"
    shifted = np.roll(reference, 8, axis=1)
    images = torch.from_numpy(np.stack([reference, shifted, reference]).astype(np.float32) / 255.0)
    lmk, preview = NODE_CLASS_MAPPINGS["ExpPortraitDetectLandmarks"]().detect(an, images, 0, "error", 0)
    assert lmk.landmarks.shape == (3, 68, 2) and lmk.found.all()
    assert np.allclose(np.median(lmk.landmarks[1] - lmk.landmarks[0], axis=0), [8, 0], atol=2.0)
    assert preview.shape == images.shape and preview.dtype == torch.float32
    assert (preview - images).abs().sum() > 0  # something was drawn

    node = NODE_CLASS_MAPPINGS["ExpPortraitCropPortrait"]()
    crops, info, crop_lmk = node.crop(images, 2.0, 0.0, -0.1, 256, True, 0, "error", "constant", face_analyzer=an)
    assert crops.shape == (3, 256, 256, 3) and 0 <= float(crops.min()) and float(crops.max()) <= 1
    assert len(info) == 3 and all(isinstance(t, CropTransform) for t in info)
    np.testing.assert_allclose(info[1].to_original(crop_lmk.landmarks[1]), lmk.landmarks[1], atol=1e-3)
    assert crop_lmk.landmarks.min() > 0 and crop_lmk.landmarks.max() < 256
    # reuse landmarks instead of an analyzer; a manual box without analyzer gives no landmarks
    crops2, _, _ = node.crop(images, 2.0, 0.0, -0.1, 256, True, 0, "error", "edge", landmarks=lmk)
    assert torch.allclose(crops2[:, 64:192, 64:192], crops[:, 64:192, 64:192], atol=1 / 255)
    crops3, info3, none = node.crop(images[:1], 1.0, 0.0, 0.0, 128, False, 0, "error", "constant", manual_box="100,120,380,400")
    assert crops3.shape == (1, 128, 128, 3) and none is None and abs(info3[0].side - 280) < 1e-4
    with pytest.raises(ExpPortraitError, match="face analyzer"):
        node.crop(images[:1], 2.0, 0.0, 0.0, 128, False, 0, "error", "constant")
