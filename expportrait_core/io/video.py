"""Video and image files (PyAV, Pillow). Outputs are written to a temp file and renamed."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np

from ..errors import ExpPortraitError
from .atomic import atomic_path

T = TypeVar("T")


@dataclass
class VideoInfo:
    fps: float
    num_frames: int
    width: int
    height: int


def probe_video(path: str | Path) -> VideoInfo:
    """Frame rate, frame count and size of a video file (clear error when unreadable)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise ExpPortraitError(f"Video not found: '{path}'.")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ExpPortraitError(f"'{path}' has no video stream.")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 25)
            n = s.frames
            if not n:
                n = sum(1 for _ in c.decode(video=0))
            return VideoInfo(fps=fps, num_frames=int(n), width=s.codec_context.width, height=s.codec_context.height)
    except ExpPortraitError:
        raise
    except Exception as exc:
        raise ExpPortraitError(f"Cannot read video '{path}' ({type(exc).__name__}: {exc}).") from exc


def iter_video_frames(path: str | Path, max_frames: int = 0, start: int = 0) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames ``[H, W, 3]`` one at a time (constant memory)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise ExpPortraitError(f"Video not found: '{path}'.")
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise ExpPortraitError(f"Cannot read video '{path}' ({type(exc).__name__}: {exc}).") from exc
    with container:
        if not container.streams.video:
            raise ExpPortraitError(f"'{path}' has no video stream.")
        k = 0
        for i, frame in enumerate(container.decode(video=0)):
            if i < start:
                continue
            yield frame.to_ndarray(format="rgb24")
            k += 1
            if max_frames and k >= max_frames:
                break


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Iterate ``items`` on a background thread, ``depth`` items ahead of the consumer.

    Video decoding (PyAV/FFmpeg) and resizing release the GIL, so on a multi-core CPU they overlap
    with the consumer's work (landmarks, solving) instead of adding to it. Memory stays bounded by
    ``depth`` items. Exceptions from ``items`` are re-raised in the consumer; when the consumer
    stops early (``break``, an error, ``close()``) the producer thread is told to stop.
    """
    import queue
    import threading

    if depth <= 0:
        yield from items
        return
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((None, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((None, done))
        except BaseException as exc:  # handed to the consumer
            q.put((exc, None))

    worker = threading.Thread(target=produce, name="expportrait-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)


def read_video(path: str | Path, max_frames: int = 0) -> tuple[np.ndarray, float]:
    """All frames as uint8 ``[T, H, W, 3]`` and the frame rate."""
    info = probe_video(path)
    frames = list(iter_video_frames(path, max_frames))
    if not frames:
        raise ExpPortraitError(f"Video '{path}' has no frames.")
    return np.stack(frames), info.fps


def write_video(path: str | Path, frames: Sequence[np.ndarray] | np.ndarray, fps: float, crf: int = 18) -> Path:
    """Write uint8 (or float 0..1) RGB frames ``[T, H, W, 3]`` as H.264 MP4 (yuv420p).

    Odd sizes are padded by one pixel (yuv420p needs even sides).
    """
    import av

    if len(frames) == 0:
        raise ExpPortraitError("No frames to write.")
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as c:
            rate = Fraction(fps).limit_denominator(1001)
            st = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=rate)
            h, w = np.asarray(frames[0]).shape[:2]
            st.width, st.height = w + (w % 2), h + (h % 2)
            st.pix_fmt = "yuv420p"
            if st.codec_context.name == "libx264":
                st.options = {"crf": str(crf)}
            for f in frames:
                f = np.asarray(f)
                if f.dtype != np.uint8:
                    f = (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8)
                if f.shape[0] != st.height or f.shape[1] != st.width:
                    f = np.pad(f, ((0, st.height - f.shape[0]), (0, st.width - f.shape[1]), (0, 0)), mode="edge")
                for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    c.mux(pkt)
            for pkt in st.encode():
                c.mux(pkt)
    return path


def read_image(path: str | Path) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` from an image file (alpha dropped, gray expanded)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ExpPortraitError(f"Image not found: '{path}'.")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise ExpPortraitError(f"Cannot read image '{path}' ({type(exc).__name__}: {exc}).") from exc


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write uint8 (or float 0..1) RGB ``[H, W, 3]`` as PNG/JPEG atomically."""
    from PIL import Image

    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
    return path


def contact_sheet(frames: np.ndarray, columns: int = 8, max_tiles: int = 32, tile: int = 160) -> np.ndarray:
    """A grid of evenly spaced frames, each resized to ``tile`` px wide. frames: [T, H, W, 3] uint8."""
    from PIL import Image

    T = len(frames)
    picks = np.linspace(0, T - 1, min(T, max_tiles)).round().astype(int)
    h, w = frames.shape[1:3]
    th = max(1, int(round(tile * h / w)))
    rows = (len(picks) + columns - 1) // columns
    sheet = np.zeros((rows * th, min(columns, len(picks)) * tile, 3), dtype=np.uint8)
    for k, i in enumerate(picks):
        im = np.asarray(Image.fromarray(frames[i]).resize((tile, th), Image.BILINEAR))
        r, c = divmod(k, columns)
        sheet[r * th : (r + 1) * th, c * tile : (c + 1) * tile] = im
    return sheet
