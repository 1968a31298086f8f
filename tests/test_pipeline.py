"""The README's main job, ``animate --demo``: outputs, alignment, mouth motion, and bad CLI input."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from expportrait_core.pipeline import DEMO_DRIVING, DEMO_REFERENCE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The full demo (all 216 driving frames, no generator), run once for the module."""
    from expportrait_core.pipeline import animate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops: one thread is faster on a busy 2-core machine
    try:
        out = tmp_path_factory.mktemp("animate") / "demo.mp4"
        res = animate(DEMO_REFERENCE, DEMO_DRIVING, out)
    finally:
        torch.set_num_threads(threads)
    return res, out


def _decode_all(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_demo_writes_playable_videos_with_the_driving_clips_frames_and_rate(demo):
    from expportrait_core.io.video import probe_video, read_image

    res, out = demo
    drv = probe_video(DEMO_DRIVING)
    ref_h, ref_w = read_image(DEMO_REFERENCE).shape[:2]
    assert res.generated_video is None and res.num_frames == drv.num_frames
    for path in (out, res.control_video, res.preview_video):
        info = probe_video(path)
        frames = _decode_all(path)  # playable: every frame decodes
        assert len(frames) == info.num_frames == drv.num_frames, path.name
        assert abs(info.fps - drv.fps) < 1e-3, path.name
    for path in (out, res.control_video):  # the control video is in the reference's image frame
        info = probe_video(path)
        assert (info.width, info.height) == (ref_w + ref_w % 2, ref_h + ref_h % 2)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_demo_control_head_is_aligned_with_the_reference_face(demo):
    from expportrait_core.face import load_face_analyzer
    from expportrait_core.io.video import read_image

    res, _ = demo
    ref = read_image(DEMO_REFERENCE)
    (face,) = load_face_analyzer("dlib").detect(ref)
    x0, y0, x1, y1 = face.box
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    # frame 0 of the control video: the reference's own (neutral-anchored) pose
    first = _decode_all(res.control_video)[0].astype(np.float32)
    mask = first.max(-1) > 24  # background is black
    ys, xs = np.nonzero(mask)
    centroid = np.array([xs.mean(), ys.mean()])
    h, w = ref.shape[:2]
    off = np.abs(centroid - centre) / np.array([w, h])
    print(f"mask centroid {centroid.round(1)} vs face box centre {centre.round(1)}: offset {off.round(3)} of the image")
    assert (off < 0.05).all()
    # and the head covers the detected face box
    bx = mask[int(y0):int(y1), int(x0):int(x1)]
    assert bx.mean() > 0.9


def test_demo_mouth_opens_when_the_drivers_does(demo):
    from expportrait_core.head import synthetic_head_proxy
    from expportrait_core.track import mouth_gap, pearson

    res, _ = demo
    proxy = synthetic_head_proxy()
    T = res.motion.params.expression.shape[0]
    with torch.no_grad():  # [T, 68, 3], in chunks (the full mesh is evaluated)
        lm = np.concatenate([proxy(res.motion.params.index(slice(s, min(T, s + 32))), res.identity.static_offsets)
                             .landmarks.numpy() for s in range(0, T, 32)])
    eye = np.linalg.norm(lm[:, 36] - lm[:, 45], axis=-1)
    gap = sum(np.linalg.norm(lm[:, a] - lm[:, b], axis=-1) for a, b in ((61, 67), (62, 66), (63, 65))) / 3 / eye
    driver = mouth_gap(res.driving_landmarks)
    ok = np.isfinite(driver)
    r = pearson(gap[ok], driver[ok])
    print(f"reference mouth opening vs driver's inner-lip gap: r = {r:.3f}; "
          f"opening range {gap.min():.3f}..{gap.max():.3f} of the eye distance")
    assert r > 0.8
    assert gap.max() - gap.min() > 0.1  # it really opens


# ---------------------------------------------------------------------------------------------
# bad CLI input: exit status 2, one 'error:' line, no traceback, no output file


def _animate_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "expportrait_core", "animate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _assert_clean_failure(proc: subprocess.CompletedProcess, out_dir: Path, *words: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for word in words:
        assert word.lower() in errors[0].lower(), errors[0]
    assert not out_dir.exists() or not any(out_dir.rglob("*")), sorted(out_dir.rglob("*"))


def test_cli_missing_reference(tmp_path):
    out = tmp_path / "out"
    proc = _animate_cli(tmp_path, "--reference", str(tmp_path / "nope.png"), "--driving", str(DEMO_DRIVING),
                        "--out", str(out / "a.mp4"))
    _assert_clean_failure(proc, out, "nope.png", "does not exist")


def test_cli_unreadable_video(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_text("this is not a video")
    out = tmp_path / "out"
    proc = _animate_cli(tmp_path, "--reference", str(DEMO_REFERENCE), "--driving", str(bad), "--out", str(out / "a.mp4"))
    _assert_clean_failure(proc, out, "broken.mp4")


def test_cli_image_without_a_face(tmp_path):
    from PIL import Image

    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(blank)
    out = tmp_path / "out"
    proc = _animate_cli(tmp_path, "--reference", str(blank), "--driving", str(DEMO_DRIVING), "--out", str(out / "a.mp4"),
                        "--max-frames", "4")
    _assert_clean_failure(proc, out, "face")


def test_cli_output_folder_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a file where the output folder should be (as root, permissions would not stop us)
    proc = _animate_cli(tmp_path, "--demo", "--out", str(blocker / "sub" / "a.mp4"))
    _assert_clean_failure(proc, blocker.parent / "none", "output folder")
    assert blocker.read_text() == "x"
