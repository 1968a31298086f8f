"""ExpPortrait conditioning encoders (paper §5): normal maps → features on the transformer's token grid.

* :class:`NormalVideoEncoder` — 3-D convolutions over the driving normal-map sequence.
* :class:`ReferenceNormalEncoder` — 2-D convolutions over the reference normal map.

Their outputs have the shape of the transformer's patch-embedding output ``[B, D, L, H/16, W/16]``
and are added to it (see :func:`expportrait_core.generator.model.Generator`), like a pose encoder in
UniAnimate-DiT. The temporal grouping matches the causal Wan VAE: latent frame 0 stands for pixel
frame 0, latent frame ``j >= 1`` for pixel frames ``4j-3 .. 4j`` (:func:`group_window_frames`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ControlEncoderConfig
from .video_rules import TEMPORAL_STRIDE, latent_frame_span, pixel_frames


def group_window_frames(frames: torch.Tensor, start: int, n_latent: int) -> torch.Tensor:
    """Pixel frames behind latent frames ``[start, start + n_latent)``, 4 per latent frame.

    frames: ``[B, C, F, H, W]`` with ``F = 4k + 1`` covering at least ``start + n_latent`` latent
    frames. Returns ``[B, C, 4 * n_latent, H, W]``; latent frame 0 (a single pixel frame) is
    front-padded by repeating that frame, as the causal VAE's first chunk effectively is.
    """
    if start == 0:
        stop = pixel_frames(n_latent)
        first = frames[:, :, :1].expand(-1, -1, TEMPORAL_STRIDE - 1, -1, -1)
        return torch.cat([first, frames[:, :, :stop]], dim=2)
    a = latent_frame_span(start)[0]
    b = latent_frame_span(start + n_latent - 1)[1]
    return frames[:, :, a:b]


def _init_body(body: nn.Module) -> None:
    # He init keeps the signal's variance through the SiLU stack; PyTorch's default init shrinks it
    # ~0.6× per layer, so a fresh encoder would map every input to nearly the same features.
    for m in body.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class NormalVideoEncoder(nn.Module):
    """3-D convolution encoder over the driving normal-map sequence.

    forward(frames): ``frames [B, 3, 4L, H, W]`` in ``[-1, 1]`` (from :func:`group_window_frames`)
    → features ``[B, out_dim, L, H/16, W/16]``. The 4 frames of each latent step are stacked on the
    channel axis (``12`` channels), then 3-D convolutions with kernel 3 mix neighbouring latent
    frames while four stride-(1,2,2) stages bring the image to the token grid.
    """

    def __init__(self, cfg: ControlEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.stem_channels
        layers = [nn.Conv3d(3 * TEMPORAL_STRIDE, c, 3, padding=1), nn.SiLU()]
        for ch in cfg.channels:
            layers += [nn.Conv3d(c, ch, 3, stride=(1, 2, 2), padding=1), nn.SiLU()]
            c = ch
        self.body = nn.Sequential(*layers)
        _init_body(self.body)
        self.proj = nn.Conv3d(c, cfg.out_dim, 1)
        if cfg.zero_init:
            _zero(self.proj)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = frames.shape
        if t % TEMPORAL_STRIDE:
            raise ValueError(f"NormalVideoEncoder expects 4·L grouped frames, got {t}")
        x = frames.reshape(b, c, t // TEMPORAL_STRIDE, TEMPORAL_STRIDE, h, w)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, c * TEMPORAL_STRIDE, t // TEMPORAL_STRIDE, h, w)
        return self.proj(self.body(x))


class ReferenceNormalEncoder(nn.Module):
    """2-D convolution encoder over the reference normal map.

    forward(image): ``image [B, 3, H, W]`` in ``[-1, 1]`` → ``[B, out_dim, 1, H/16, W/16]``
    (a single time step, broadcast over all latent frames when added to the tokens).
    """

    def __init__(self, cfg: ControlEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.stem_channels
        layers = [nn.Conv2d(3, c, 3, padding=1), nn.SiLU()]
        for ch in cfg.channels:
            layers += [nn.Conv2d(c, ch, 3, stride=2, padding=1), nn.SiLU()]
            c = ch
        self.body = nn.Sequential(*layers)
        _init_body(self.body)
        self.proj = nn.Conv2d(c, cfg.out_dim, 1)
        if cfg.zero_init:
            _zero(self.proj)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(image)).unsqueeze(2)


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of ``[B, C, F, H, W]`` (or ``[B, C, H, W]``) to ``height × width``."""
    if frames.shape[-2:] == (height, width):
        return frames
    if frames.ndim == 4:
        return F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    b, c, f, h, w = frames.shape
    x = frames.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.reshape(b, f, c, height, width).permute(0, 2, 1, 3, 4)


__all__ = ["NormalVideoEncoder", "ReferenceNormalEncoder", "group_window_frames", "resize_frames"]
