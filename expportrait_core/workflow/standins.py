"""Small stand-ins for ComfyUI core nodes, for :func:`execute_api_prompt` outside ComfyUI.

``core_stand_ins(input_dir, output_dir)`` returns ``{class_type: node class}`` for the core nodes
the shipped workflows use around ours, behaving like ComfyUI 0.8.0's nodes on the values that
matter to a graph test:

=====================  ======================================================================
LoadImage              file in ``input_dir`` -> IMAGE ``[1, H, W, 3]`` float 0..1, MASK ``[1, H, W]``
                       (1 - alpha, or zeros 64x64 without alpha, as ComfyUI does)
LoadVideo              file in ``input_dir`` -> VIDEO (a :class:`StandInVideo` that decodes lazily)
GetVideoComponents     VIDEO -> IMAGE ``[T, H, W, 3]``, AUDIO (None), FLOAT fps
CreateVideo            IMAGE ``[T, H, W, 3]``, fps (, audio) -> VIDEO
SaveVideo              VIDEO -> ``<output_dir>/<prefix>_00001_.mp4`` (H.264 via PyAV); output node
SaveImage              IMAGE -> PNGs in ``output_dir``; output node
PreviewImage           IMAGE -> kept in ``ui``; output node
=====================  ======================================================================

Heavy libraries (torch, numpy, PIL, av) are imported inside the functions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ExpPortraitError


@dataclass
class StandInVideo:
    """What VIDEO carries between stand-ins: a file to decode, or frames already in memory.

    ``frames``: IMAGE ``[T, H, W, 3]`` float 0..1 (torch); ``fps``: frames per second.
    """

    path: Optional[str] = None
    frames: Any = None
    fps: float = 0.0
    audio: Any = None
    _decoded: bool = field(default=False, repr=False)

    def get_components(self) -> "StandInVideo":
        """Decode ``path`` once (PyAV) into ``frames``/``fps``; returns self."""
        if not self._decoded and self.frames is None and self.path is not None:
            import av
            import numpy as np
            import torch

            try:
                with av.open(self.path) as c:
                    stream = c.streams.video[0]
                    rate = stream.average_rate or stream.base_rate or 0
                    frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
            except (av.error.FFmpegError, IndexError, OSError) as e:
                raise ExpPortraitError(f"cannot decode video '{self.path}': {e}") from e
            if not frames:
                raise ExpPortraitError(f"video '{self.path}' has no frames")
            self.frames = torch.from_numpy(np.stack(frames)).float() / 255.0
            self.fps = float(rate)
        self._decoded = True
        return self


def _input_path(input_dir: Path, name: str) -> str:
    p = Path(name)
    if not p.is_absolute():
        p = input_dir / name
    if not p.is_file():
        raise ExpPortraitError(f"input file '{name}' not found in {input_dir}")
    return str(p)


def _next_path(output_dir: Path, prefix: str, ext: str) -> Path:
    base = output_dir / prefix
    base.parent.mkdir(parents=True, exist_ok=True)
    i = 1
    while True:
        p = base.parent / f"{base.name}_{i:05d}_.{ext}"
        if not p.exists():
            return p
        i += 1


def write_mp4(frames: Any, fps: float, path: Path) -> None:
    """IMAGE ``[T, H, W, 3]`` (0..1) -> H.264 MP4 at ``path`` (atomic; see ``io.video.write_video``)."""
    from ..io.video import write_video

    write_video(path, frames.detach().cpu().float().numpy(), fps)


def core_stand_ins(input_dir: os.PathLike, output_dir: os.PathLike) -> Dict[str, type]:
    """Stand-in classes for common core nodes (see module doc), keyed by class_type."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)

    class LoadImage:
        RETURN_TYPES = ("IMAGE", "MASK")
        FUNCTION = "load"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"image": ([], {"image_upload": True})}}

        def load(self, image):
            import numpy as np
            import torch
            from PIL import Image, ImageOps

            with Image.open(_input_path(input_dir, image)) as im:
                im = ImageOps.exif_transpose(im)
                rgb = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]
                if "A" in im.getbands():
                    mask = 1.0 - torch.from_numpy(np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0)[None]
                else:
                    mask = torch.zeros((1, 64, 64), dtype=torch.float32)
            return (rgb, mask)

    class LoadVideo:
        RETURN_TYPES = ("VIDEO",)
        FUNCTION = "load"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"file": ([], {"video_upload": True})}}

        def load(self, file):
            return (StandInVideo(path=_input_path(input_dir, file)),)

    class GetVideoComponents:
        RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
        FUNCTION = "get"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"video": ("VIDEO", {})}}

        def get(self, video):
            v = video.get_components()
            return (v.frames, v.audio, float(v.fps))

    class CreateVideo:
        RETURN_TYPES = ("VIDEO",)
        FUNCTION = "create"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE", {}), "fps": ("FLOAT", {"default": 30.0})},
                    "optional": {"audio": ("AUDIO", {})}}

        def create(self, images, fps, audio=None):
            return (StandInVideo(frames=images, fps=float(fps), audio=audio, _decoded=True),)

    class SaveVideo:
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "save"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"video": ("VIDEO", {}), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                                 "format": ("COMBO", {"options": ["auto", "mp4"]}),
                                 "codec": ("COMBO", {"options": ["auto", "h264"]})}}

        def save(self, video, filename_prefix, format="auto", codec="auto"):
            v = video.get_components()
            path = _next_path(output_dir, filename_prefix, "mp4")
            write_mp4(v.frames, v.fps, path)
            return {"ui": {"videos": [{"filename": path.name, "subfolder": str(path.parent.relative_to(output_dir)),
                                       "type": "output", "path": str(path)}]}}

    class SaveImage:
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "save"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

        def save(self, images, filename_prefix="ComfyUI"):
            import numpy as np
            from PIL import Image

            out: List[Dict[str, Any]] = []
            for img in images:
                path = _next_path(output_dir, filename_prefix, "png")
                arr = (img.detach().cpu().float().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
                Image.fromarray(arr).save(path)
                out.append({"filename": path.name, "type": "output", "path": str(path)})
            return {"ui": {"images": out}}

    class PreviewImage:
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "preview"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE", {})}}

        def preview(self, images):
            return {"ui": {"images": [images]}}

    return {c.__name__: c for c in (LoadImage, LoadVideo, GetVideoComponents, CreateVideo, SaveVideo,
                                    SaveImage, PreviewImage)}


__all__ = ["StandInVideo", "core_stand_ins", "write_mp4"]
