"""Control-signal rendering (paper §5 input): the personalized, re-targeted proxy as normal maps.

Combines an :class:`~expportrait_core.io.files.Identity` (shape, static offsets, reference camera)
with a :class:`~expportrait_core.io.files.Motion` (per-frame pose, expression, dynamic offsets) and
renders each frame with the reference camera, so the control video is aligned with the reference
portrait.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .errors import ExpPortraitError
from .progress import ProgressFn, report


def camera_from_dict(camera: dict, width: int, height: int, scale: float = 1.0):
    """A :class:`expportrait_core.render.Camera` from a file-format camera dict.

    ``scale`` resizes the intrinsics (rendering at another resolution than the camera was fitted at)."""
    from .render import Camera

    g = lambda k: float(camera[k].reshape(-1)[0]) * scale  # noqa: E731
    return Camera(fx=g("fx"), fy=g("fy"), cx=g("cx"), cy=g("cy"), R=camera["R"].float(), t=camera["t"].float(),
                  width=int(width), height=int(height))


def render_motion_normals(proxy, params, camera: dict, width: int, height: int, static_offsets=None,
                          dynamic_offsets=None, chunk: int = 8, progress: Optional[ProgressFn] = None,
                          background=(0.0, 0.0, 0.0), camera_scale: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """Render a HeadParams batch as normal maps, ``chunk`` frames at a time (bounded memory).

    camera: dict (fx, fy, cx, cy [1]; R [3, 3]; t [3]); static_offsets: [N_s, 3] or None;
    dynamic_offsets: [T, N_s, 3] or None. Returns (normal_rgb uint8 [T, H, W, 3], mask float32 [T, H, W]).
    """
    from .render import render_normals

    T = params.batch_size
    out = np.zeros((T, height, width, 3), dtype=np.uint8)
    masks = np.zeros((T, height, width), dtype=np.float32)
    cam = camera_from_dict(camera, width, height, camera_scale)
    dev = proxy.device
    with torch.no_grad():
        for s in range(0, T, chunk):
            idx = slice(s, min(T, s + chunk))
            sub = params.index(idx).to(dev)
            dyn = None if dynamic_offsets is None else dynamic_offsets[idx].to(dev)
            so = None if static_offsets is None else static_offsets.to(dev)
            verts = proxy(sub, so, dyn).vertices
            r = render_normals(verts, proxy.faces, cam.batch(verts.shape[0]).to(dev), background=background)
            out[idx] = (r.normal_rgb.clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()
            masks[idx] = r.mask.float().cpu().numpy()
            report(progress, min(T, s + chunk), T)
    return out, masks


def resolve_render_inputs(proxy, identity=None, motion=None):
    """(params [T], static_offsets [N_s, 3] | None, dynamic_offsets [T, N_s, 3] | None, camera dict,
    image_size (H, W)) for rendering an identity, a motion, or both (identity shape + motion pose)."""
    from .head.framing import portrait_camera_params

    subject = identity if identity is not None else (motion.identity if motion is not None else None)
    if motion is not None:
        params = motion.params
        dyn = motion.dense_dynamic_offsets(proxy.num_vertices)
    elif identity is not None:
        params = identity.params
        dyn = None
    else:
        params = proxy.zero_params(1)
        dyn = None
    static = None
    if subject is not None:
        if subject.static_offsets.shape[0] != proxy.num_vertices:
            raise ExpPortraitError(
                f"The identity has {subject.static_offsets.shape[0]} offset vertices but the loaded proxy has "
                f"{proxy.num_vertices}: load the SMPL-X file and subdivision the identity was fitted with."
            )
        static = subject.static_offsets
        params = params.replace(betas=subject.betas.expand(params.batch_size, -1))
    if identity is not None:
        camera, size = identity.camera, identity.image_size
    elif motion is not None:
        camera, size = motion.camera, motion.image_size
    else:
        camera, size = None, (512, 512)
    if camera is None or not camera:
        with torch.no_grad():
            lm = proxy(proxy.zero_params(1)).landmarks[0].cpu()
        camera = portrait_camera_params(lm.mean(0), float((lm[:, 1].max() - lm[:, 1].min()) * 1.9), size[1], size[0])
    return params, static, dyn, camera, tuple(int(s) for s in size)


def render_control(proxy, identity=None, motion=None, width: int = 0, height: int = 0, background=(0.0, 0.0, 0.0),
                   progress: Optional[ProgressFn] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Normal-map control frames of ``identity`` performing ``motion`` (either may be None).

    ``width/height`` 0 = the reference image size; another size rescales the camera to it (the
    aspect ratio must match the camera's). Returns (uint8 [T, H, W, 3], float32 mask [T, H, W])."""
    params, static, dyn, camera, (h0, w0) = resolve_render_inputs(proxy, identity, motion)
    width = int(width or w0)
    height = int(height or h0)
    scale_x, scale_y = width / w0, height / h0
    if abs(scale_x - scale_y) > 0.02:
        raise ExpPortraitError(
            f"Render size {width}x{height} has another aspect ratio than the reference camera ({w0}x{h0}); "
            "keep the aspect ratio (crop the reference first)."
        )
    return render_motion_normals(proxy, params, camera, width, height, static, dyn, progress=progress,
                                 background=background, camera_scale=scale_x)
