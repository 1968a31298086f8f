"""Differentiable normal-map rendering (the ExpPortrait control signal).

nvdiffrast-style split: a raster pass that finds the visible triangle per pixel (numba kernels on
CPU when numba is installed, pure PyTorch on any device, or nvdiffrast on CUDA), then
barycentrics, depth and normals recomputed from that triangle so gradients reach vertex
positions. ``EXPP_RENDER_KERNEL=torch`` (or ``RasterConfig(kernel="torch")``) forces the
pure-PyTorch path. Conventions: OpenCV cameras, GL-axes normal maps encoded as
``0.5 * n + 0.5`` (see CONTRIBUTING.md).

    cam = Camera.look_at(eye=(0, 0, 0.6), target=(0, 0, 0), fov_y_deg=20, width=512, height=512)
    out = render_normals(verts, faces, cam)      # out.normal_rgb: [B, 512, 512, 3] in 0..1
"""
from .api import (Fragments, RenderOutput, available_backends, interpolate, rasterize, render_normals,
                  vertex_normals)
from .camera import Camera
from .raster_torch import RasterConfig

__all__ = [
    "Camera",
    "Fragments",
    "RasterConfig",
    "RenderOutput",
    "available_backends",
    "interpolate",
    "rasterize",
    "render_normals",
    "vertex_normals",
]
