"""Head-proxy nodes: load SMPL-X, render the proxy as normal maps, save a mesh, identity/motion files."""
from __future__ import annotations

import time

import torch

from expportrait_core.errors import ExpPortraitError
from expportrait_core.paths import SMPLX_SOURCE

from ._comfy import CATEGORY, comfy_progress, list_models, numpy_to_image, output_dir, resolve_model

SYNTHETIC_CHOICE = "(synthetic demo head)"
_PROXY_CACHE: dict = {}


class ExpPortraitLoadSMPLX:
    """Loads an SMPL-X 2020 model as the personalized head proxy (upsampled bust)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": ([SYNTHETIC_CHOICE] + list_models("smplx"), {
                    "tooltip": "SMPL-X file in ComfyUI/models/smplx (SMPLX_NEUTRAL_2020.npz from smpl-x.is.tue.mpg.de). "
                               "'(synthetic demo head)' is a generated stand-in for trying the pack without a download."}),
                "num_expression": ("INT", {"default": 100, "min": 10, "max": 100,
                                           "tooltip": "Number of SMPL-X expression coefficients used (the paper uses all 100)."}),
                "subdivision": (["auto", "0", "1", "2"], {
                    "default": "auto",
                    "tooltip": "Barycentric upsampling levels of the bust (each ×4 faces). auto: as many as keep ≤120k vertices "
                               "(2 for SMPL-X, about 100k vertices)."}),
                "device": (["auto", "cpu", "cuda"], {"default": "auto", "tooltip": "Where the proxy's tensors live."}),
            },
            "optional": {
                "allow_pickle": ("BOOLEAN", {"default": False,
                                             "tooltip": "Allow .pkl model files. Pickles can run code: only enable for files you trust."}),
            },
        }

    RETURN_TYPES = ("EXPP_PROXY",)
    RETURN_NAMES = ("proxy",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/Head"
    DESCRIPTION = "Load SMPL-X as ExpPortrait's head proxy: bust region, barycentric upsampling, face mask."

    def load(self, model_name, num_expression=100, subdivision="auto", device="auto", allow_pickle=False):
        from expportrait_core.head import ProxyConfig, load_head_proxy
        from expportrait_core.head.synthetic import ensure_synthetic_smplx

        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dev == "cuda" and not torch.cuda.is_available():
            raise ExpPortraitError("device 'cuda' was chosen but no CUDA GPU is available; choose 'cpu' or 'auto'.")
        if model_name == SYNTHETIC_CHOICE:
            path = ensure_synthetic_smplx()
        else:
            path = resolve_model("smplx", model_name, "SMPL-X model", SMPLX_SOURCE)
        sub = subdivision if subdivision == "auto" else int(subdivision)
        key = (str(path), num_expression, sub, dev)
        if key not in _PROXY_CACHE:
            _PROXY_CACHE.clear()  # keep one proxy in memory
            _PROXY_CACHE[key] = load_head_proxy(path, ProxyConfig(num_expression=num_expression, subdivision=sub),
                                                device=dev, allow_pickle_file=allow_pickle)
        return (_PROXY_CACHE[key],)


class ExpPortraitRenderProxy:
    """Renders the proxy (optionally a fitted identity and/or a motion) as normal-map control frames."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "proxy": ("EXPP_PROXY", {"tooltip": "Head proxy from 'ExpPortrait Load SMPL-X'."}),
                "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                  "tooltip": "Output width; 0 = the reference image's width. Wan control videos need multiples of 16."}),
                "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                   "tooltip": "Output height; 0 = the reference image's height."}),
                "background": (["black", "gray", "white"], {"default": "black", "tooltip": "Colour behind the head."}),
            },
            "optional": {
                "identity": ("EXPP_IDENTITY", {"tooltip": "Fitted identity: its shape, static offsets and reference camera are used."}),
                "motion": ("EXPP_MOTION", {"tooltip": "Per-frame pose/expression (tracked or transferred). One output frame per motion frame."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("normal_maps", "mask")
    FUNCTION = "render"
    CATEGORY = f"{CATEGORY}/Render"
    DESCRIPTION = ("Camera-space normal maps (x right, y up, z to viewer, rgb = 0.5·n + 0.5) of the personalized proxy: "
                   "the control signal for the ExpPortrait sampler and for WanFunControlToVideo / WanVaceToVideo.")

    def render(self, proxy, width=0, height=0, background="black", identity=None, motion=None):
        from expportrait_core.control import render_control

        bg = {"black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5), "white": (1.0, 1.0, 1.0)}[background]
        n = motion.num_frames if motion is not None else 1
        frames, masks = render_control(proxy, identity, motion, width, height, bg, progress=comfy_progress(n))
        return (numpy_to_image(frames), torch.from_numpy(masks))


class ExpPortraitSaveMesh:
    """Writes one frame of the personalized proxy as OBJ or GLB for ComfyUI's 3D preview."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "proxy": ("EXPP_PROXY", {"tooltip": "Head proxy."}),
                "filename_prefix": ("STRING", {"default": "expportrait/mesh", "tooltip": "Path prefix inside ComfyUI's output folder."}),
                "format": (["glb", "obj"], {"default": "glb", "tooltip": "GLB previews in ComfyUI's Load 3D / Preview 3D nodes."}),
                "frame": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Which motion frame to export."}),
            },
            "optional": {
                "identity": ("EXPP_IDENTITY", {"tooltip": "Fitted identity (shape + static offsets)."}),
                "motion": ("EXPP_MOTION", {"tooltip": "Motion whose frame is exported."}),
            },
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("mesh_path",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = f"{CATEGORY}/Head"

    def save(self, proxy, filename_prefix="expportrait/mesh", format="glb", frame=0, identity=None, motion=None):
        from expportrait_core.control import resolve_render_inputs
        from expportrait_core.io.mesh import write_glb, write_obj

        params, static, dyn, _, _ = resolve_render_inputs(proxy, identity, motion)
        if frame >= params.batch_size:
            raise ExpPortraitError(f"frame {frame} is out of range: the motion has {params.batch_size} frames.")
        with torch.no_grad():
            d = None if dyn is None else dyn[frame : frame + 1]
            v = proxy(params.index(slice(frame, frame + 1)), static, d).vertices[0].cpu().numpy()
        path = output_dir() / f"{filename_prefix}_{time.strftime('%Y%m%d-%H%M%S')}_{frame:05d}.{format}"
        (write_glb if format == "glb" else write_obj)(path, v, proxy.faces.cpu().numpy())
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}


NODE_CLASS_MAPPINGS = {
    "ExpPortraitLoadSMPLX": ExpPortraitLoadSMPLX,
    "ExpPortraitRenderProxy": ExpPortraitRenderProxy,
    "ExpPortraitSaveMesh": ExpPortraitSaveMesh,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ExpPortraitLoadSMPLX": "ExpPortrait Load SMPL-X",
    "ExpPortraitRenderProxy": "ExpPortrait Render Proxy",
    "ExpPortraitSaveMesh": "ExpPortrait Save Mesh",
}
