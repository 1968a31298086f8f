"""Identity fitting node: reference portrait (+ optional normal/depth/mask) → personalized identity.

Save/Load Identity nodes live in ``nodes/files.py``.
"""
from __future__ import annotations

from ._comfy import CATEGORY, comfy_progress, image_to_numpy, numpy_to_image

QUALITIES = ["fast", "balanced", "best"]


class ExpPortraitFitIdentity:
    """Fits SMPL-X shape, the reference pose/expression and dense static offsets to a portrait."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "proxy": ("EXPP_PROXY", {"tooltip": "Head proxy from 'ExpPortrait Load SMPL-X'."}),
                "image": ("IMAGE", {"tooltip": "Reference portrait. Extra images in the batch are taken as more photos of the "
                                               "same person (shared shape, own pose and expression)."}),
                "face_analyzer": ("EXPP_FACE_ANALYZER", {"tooltip": "From 'ExpPortrait Face Analyzer': finds the face and its "
                                                                    "68 landmarks."}),
                "quality": (QUALITIES, {"default": "balanced",
                                        "tooltip": "fast: half the iterations, 128 px dense renders; balanced: defaults "
                                                   "(192 px); best: 1.5x iterations, 256 px."}),
                "iterations_scale": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 5.0, "step": 0.1,
                                               "tooltip": "Multiplies every stage's iteration count (on top of the quality preset)."}),
                "fov": ("FLOAT", {"default": 14.0, "min": 5.0, "max": 90.0, "step": 0.5,
                                  "tooltip": "Vertical field of view of the photo in degrees (14 = portrait lens, ~50 = phone selfie)."}),
                "fit_static_offsets": ("BOOLEAN", {"default": True,
                                                   "tooltip": "Fit the dense static offsets (hair, shoulders, face details beyond "
                                                              "SMPL-X's shape space): against the normal/depth/mask maps when given, "
                                                              "otherwise a smooth deformation fitted to the landmarks."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                                 "tooltip": "Seed for the optimizer's random choices (results are deterministic per seed)."}),
            },
            "optional": {
                "normal_map": ("IMAGE", {"tooltip": "Normal map of the reference from any normal estimator (x right, y up, z to "
                                                    "the viewer, rgb = 0.5·n + 0.5; black background). Enables normal supervision."}),
                "depth": ("IMAGE", {"tooltip": "Relative depth or disparity of the reference from any depth estimator (scale and "
                                               "shift are aligned automatically; black = invalid)."}),
                "mask": ("MASK", {"tooltip": "Person silhouette (1 = person). Restricts the dense terms and adds a silhouette term."}),
            },
        }

    RETURN_TYPES = ("EXPP_IDENTITY", "IMAGE")
    RETURN_NAMES = ("identity", "preview")
    FUNCTION = "fit"
    CATEGORY = f"{CATEGORY}/Identity"
    DESCRIPTION = ("Personalized head from a portrait: camera and pose from landmarks, then SMPL-X shape, expression and jaw, "
                   "then dense static offsets against the optional normal/depth/mask. Preview: fitted normals over the photo.")

    def fit(self, proxy, image, face_analyzer, quality="balanced", iterations_scale=1.0, fov=14.0,
            fit_static_offsets=True, seed=0, normal_map=None, depth=None, mask=None):
        from expportrait_core.fit import FitConfig, fit_identity

        cfg = FitConfig.preset(quality, fov_y_deg=float(fov), fit_static_offsets=bool(fit_static_offsets), seed=int(seed))
        cfg = cfg.scaled(iterations_scale)
        frames = image_to_numpy(image)
        first = lambda t: t[0] if t.ndim == 4 else t  # noqa: E731  (IMAGE [B, H, W, C]: the reference's map)
        normals = None if normal_map is None else first(normal_map)[..., :3].detach().cpu().float().numpy()
        depth_map = None if depth is None else first(depth)[..., 0].detach().cpu().float().numpy()
        mask_map = None if mask is None else (mask[None] if mask.ndim == 2 else mask)[0].detach().cpu().float().numpy()
        total = cfg.init_iters + cfg.rigid_iters + cfg.shape_iters + cfg.dense_iters
        result = fit_identity(proxy, frames[0], analyzer=face_analyzer, normal_map=normals, depth=depth_map,
                              mask=mask_map, config=cfg, progress=comfy_progress(total),
                              extra_images=list(frames[1:]) or None)
        return (result.identity, numpy_to_image(result.preview))


NODE_CLASS_MAPPINGS = {"ExpPortraitFitIdentity": ExpPortraitFitIdentity}
NODE_DISPLAY_NAME_MAPPINGS = {"ExpPortraitFitIdentity": "ExpPortrait Fit Identity"}
