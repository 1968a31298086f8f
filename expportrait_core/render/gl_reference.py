"""Independent OpenGL reference renderer (moderngl, headless EGL) for benchmarks and tests.

Not differentiable and not used by the pipeline: it renders the same camera-space normal map as
:func:`expportrait_core.render.render_normals` with the graphics pipeline (Mesa llvmpipe on a
CPU-only machine: system packages ``libegl1`` and ``libgl1-mesa-dri``; a GPU driver elsewhere),
so the pure-PyTorch rasterizer can be checked against, and timed against, a real rasterizer.

The OpenCV intrinsics map to NDC as ``2 * pixel / size - 1`` (like the nvdiffrast backend); with
``glReadPixels`` returning the bottom GL row first, the rows come back in image order (row 0 =
top) and front faces are clockwise in window space.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..errors import ExpPortraitError

_VS = """
#version 330
uniform mat3 R; uniform vec3 t; uniform vec4 K; uniform vec2 size; uniform vec2 nf;
in vec3 in_pos; in vec3 in_nrm;
out vec3 v_n;
void main() {
    vec3 p = R * in_pos + t;                      // world -> OpenCV camera
    v_n = R * in_nrm;
    float n = nf.x, f = nf.y;
    gl_Position = vec4((2.0 * K.x / size.x) * p.x + (2.0 * K.z / size.x - 1.0) * p.z,
                       (2.0 * K.y / size.y) * p.y + (2.0 * K.w / size.y - 1.0) * p.z,
                       (f + n) / (f - n) * p.z - 2.0 * f * n / (f - n),
                       p.z);
}
"""
_FS = """
#version 330
in vec3 v_n;
out vec4 color;
void main() {
    vec3 n = normalize(v_n);
    color = vec4(0.5 * vec3(n.x, -n.y, -n.z) + 0.5, 1.0);   // OpenCV -> GL axes, 0..1
}
"""


class GLNormalRenderer:
    """Renders normal maps of one mesh topology with OpenGL. ``faces: [F, 3]`` int."""

    def __init__(self, faces: np.ndarray, width: int, height: int, n_verts: int) -> None:
        try:
            import moderngl
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ExpPortraitError("moderngl is not installed ('pip install moderngl').") from e
        try:
            self.ctx = moderngl.create_context(standalone=True, backend="egl")
        except Exception as e:  # pragma: no cover - depends on the machine
            raise ExpPortraitError("No headless OpenGL (EGL) context: install the system packages "
                                   "libegl1 and libgl1-mesa-dri.") from e
        self.width, self.height = int(width), int(height)
        self.prog = self.ctx.program(vertex_shader=_VS, fragment_shader=_FS)
        self.vbo_p = self.ctx.buffer(reserve=n_verts * 12)
        self.vbo_n = self.ctx.buffer(reserve=n_verts * 12)
        self.ibo = self.ctx.buffer(np.ascontiguousarray(faces, dtype=np.int32).tobytes())
        self.vao = self.ctx.vertex_array(self.prog, [(self.vbo_p, "3f", "in_pos"), (self.vbo_n, "3f", "in_nrm")],
                                         index_buffer=self.ibo, index_element_size=4)
        self.fbo = self.ctx.simple_framebuffer((self.width, self.height), components=4)
        self.renderer = self.ctx.info.get("GL_RENDERER", "?")

    def render(self, verts_world: np.ndarray, normals_world: np.ndarray, fx: float, fy: float, cx: float, cy: float,
               R: np.ndarray, t: np.ndarray, background: Tuple[float, float, float] = (0.0, 0.0, 0.0),
               near_far: Optional[Tuple[float, float]] = None, cull_backfaces: bool = True) -> np.ndarray:
        """One frame: ``[H, W, 3]`` uint8 normal map (rows top to bottom), read back to numpy."""
        import moderngl

        self.vbo_p.write(np.ascontiguousarray(verts_world, dtype=np.float32).tobytes())
        self.vbo_n.write(np.ascontiguousarray(normals_world, dtype=np.float32).tobytes())
        if near_far is None:
            z = verts_world @ R[2] + t[2]
            near_far = (max(float(z.min()) * 0.5, 1e-4), float(z.max()) * 2.0 + 1e-3)
        self.prog["R"].write(np.ascontiguousarray(R.T, dtype=np.float32).tobytes())   # GLSL is column-major
        self.prog["t"].value = tuple(float(x) for x in t)
        self.prog["K"].value = (float(fx), float(fy), float(cx), float(cy))
        self.prog["size"].value = (float(self.width), float(self.height))
        self.prog["nf"].value = near_far
        self.fbo.use()
        self.fbo.clear(*background, 1.0, depth=1.0)
        self.ctx.enable(moderngl.DEPTH_TEST)
        if cull_backfaces:
            self.ctx.enable(moderngl.CULL_FACE)
            self.ctx.front_face = "cw"     # the y mapping mirrors window space
        else:
            self.ctx.disable(moderngl.CULL_FACE)
        self.vao.render(moderngl.TRIANGLES)
        data = self.fbo.read(components=3, alignment=1)
        return np.frombuffer(data, dtype=np.uint8).reshape(self.height, self.width, 3)

    def release(self) -> None:
        self.ctx.release()
