"""Training data for the generator and small video I/O helpers (PyAV, Pillow).

Data layout (one folder per clip under the dataset root)::

    dataset/
      clip_0001/
        video.mp4        or  video/000000.png, 000001.png, …   the real portrait video (RGB)
        normals.mp4      or  normals/000000.png, …             normal maps, same frame count and size
        reference.png         (optional) reference portrait; default: a random frame of this clip
        reference_normal.png  (optional) its normal map; default: the normal map of that frame
        prompt_embeds.safetensors (optional) cached text embeddings for this clip
      clip_0002/ …

Normal maps follow CONTRIBUTING.md (``rgb = 0.5 * n + 0.5``, OpenGL axes, black background).
Every sample is drawn from a ``torch.Generator`` seeded by ``(seed, step)``, so a resumed run sees
exactly the samples an uninterrupted run would have seen.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import ExpPortraitError
from .model import fit_cover
from .video_rules import is_valid_frame_count

log = logging.getLogger("expportrait.generator")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def _frame_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def count_frames(path: Path) -> int:
    """Number of frames of a video file or an image folder."""
    if path.is_dir():
        return len(_frame_files(path))
    from ..io.video import probe_video

    return probe_video(path).num_frames


def read_frames(path: Path, start: int = 0, count: Optional[int] = None) -> np.ndarray:
    """Frames ``[start, start + count)`` of a video file, image folder or single image → uint8 ``[F, H, W, 3]``."""
    from ..io.video import iter_video_frames, read_image

    path = Path(path)
    if path.is_dir():
        files = _frame_files(path)[start : None if count is None else start + count]
        out = [read_image(f) for f in files]
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        out = [read_image(path)]
    else:
        out = list(iter_video_frames(path, max_frames=count or 0, start=start))
    if not out:
        raise ExpPortraitError(f"no frames read from '{path}' (start {start})")
    return np.stack(out)


def write_video(path: Path, frames: np.ndarray, fps: float = 16.0) -> Path:
    """uint8 or float 0..1 ``[F, H, W, 3]`` → a video file (H.264 MP4) or, for a path without a video
    suffix, a folder of PNG frames."""
    from ..io.video import write_image
    from ..io.video import write_video as _write_video

    path = Path(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return _write_video(path, frames, fps)
    path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        write_image(path / f"{i:06d}.png", f)
    return path


def _find(folder: Path, stem: str) -> Optional[Path]:
    if (folder / stem).is_dir():
        return folder / stem
    for suf in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        if (folder / (stem + suf)).is_file():
            return folder / (stem + suf)
    return None


@dataclass
class Clip:
    name: str
    video: Path
    normals: Path
    frames: int
    reference: Optional[Path] = None
    reference_normal: Optional[Path] = None
    prompt_embeds: Optional[Path] = None


@dataclass
class Sample:
    """One training triple, resized and cropped to the training size.

    video ``[1, 3, F, H, W]``, normals ``[1, 3, F, H, W]``, reference ``[1, 3, H, W]``,
    reference_normal ``[1, 3, H, W]`` or None — all float 0..1; prompt_embeds ``[L, D]`` or None.
    """

    video: torch.Tensor
    normals: torch.Tensor
    reference: torch.Tensor
    reference_normal: Optional[torch.Tensor]
    prompt_embeds: Optional[torch.Tensor]
    clip: str
    start: int
    ref_index: int  # frame of the clip used as reference; -1 for reference.png


class TripletDataset:
    """(video, normal-map video, reference) triples from a folder (layout in the module docstring)."""

    def __init__(self, root: Path, num_frames: int, height: int, width: int, cache: bool = False) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ExpPortraitError(f"training data folder '{root}' does not exist")
        if not is_valid_frame_count(num_frames):
            raise ExpPortraitError(f"--frames must be 4k+1 (Wan rule), got {num_frames}")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.cache = cache
        self._cache: Dict[Tuple[str, str], np.ndarray] = {}
        self.clips: List[Clip] = []
        skipped = []
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            v, n = _find(d, "video"), _find(d, "normals")
            if v is None or n is None:
                skipped.append(f"{d.name} (needs video and normals)")
                continue
            fv, fn = count_frames(v), count_frames(n)
            if fv != fn:
                skipped.append(f"{d.name} (video has {fv} frames, normals {fn})")
                continue
            if fv < num_frames:
                skipped.append(f"{d.name} ({fv} frames < {num_frames})")
                continue
            self.clips.append(Clip(
                d.name, v, n, fv,
                _find(d, "reference"), _find(d, "reference_normal"),
                d / "prompt_embeds.safetensors" if (d / "prompt_embeds.safetensors").is_file() else None,
            ))
        if skipped:
            log.warning("skipped %d clip folder(s): %s", len(skipped), "; ".join(skipped[:5]))
        if not self.clips:
            raise ExpPortraitError(
                f"no usable clips in '{root}': each clip folder needs video(.mp4|/) and normals(.mp4|/) with at "
                f"least {num_frames} frames (see the README, section 'Generator' → 'Training')"
            )

    def __len__(self) -> int:
        return len(self.clips)

    def _frames(self, clip: Clip, which: str, start: int, count: int) -> np.ndarray:
        path = clip.video if which == "video" else clip.normals
        if self.cache:
            key = (clip.name, which)
            if key not in self._cache:
                self._cache[key] = read_frames(path)
            return self._cache[key][start : start + count]
        return read_frames(path, start, count)

    def _to_tensor(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[F, H, W, 3]`` → float ``[1, 3, F, h, w]`` at the training size (cover + centre crop)."""
        x = torch.from_numpy(frames).float().div(255.0).permute(0, 3, 1, 2)
        x = fit_cover(x, self.height, self.width).clamp(0, 1)
        return x.permute(1, 0, 2, 3)[None]

    def sample(self, g: torch.Generator) -> Sample:
        """Draw one triple with generator ``g`` (clip, window start, reference frame)."""
        clip = self.clips[int(torch.randint(len(self.clips), (1,), generator=g))]
        start = int(torch.randint(clip.frames - self.num_frames + 1, (1,), generator=g))
        ref_idx = int(torch.randint(clip.frames, (1,), generator=g))
        video = self._to_tensor(self._frames(clip, "video", start, self.num_frames))
        normals = self._to_tensor(self._frames(clip, "normals", start, self.num_frames))
        if clip.reference is not None:
            ref_idx = -1
            ref = self._to_tensor(read_frames(clip.reference))[:, :, 0]
            ref_n = self._to_tensor(read_frames(clip.reference_normal))[:, :, 0] if clip.reference_normal else None
        else:
            ref = self._to_tensor(self._frames(clip, "video", ref_idx, 1))[:, :, 0]
            ref_n = self._to_tensor(self._frames(clip, "normals", ref_idx, 1))[:, :, 0]
        pe = None
        if clip.prompt_embeds is not None:
            from .loading import read_prompt_embeds

            pe = read_prompt_embeds(clip.prompt_embeds)[0]
        return Sample(video, normals, ref, ref_n, pe, clip.name, start, ref_idx)


__all__ = ["Clip", "Sample", "TripletDataset", "count_frames", "read_frames", "write_video"]
