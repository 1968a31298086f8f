"""ComfyUI nodes for the DiT generator: load, sample, fit a control video to Wan's rules, cache prompts.

Thin adapters: they resolve model files, convert ComfyUI types and call
``expportrait_core.generator``. The control IMAGE batch that feeds ``ExpPortrait Sampler`` also
feeds ComfyUI's own ``WanFunControlToVideo`` / ``WanVaceToVideo`` unchanged once it has 4k+1 frames
and sides that are multiples of 16 (``ExpPortrait Fit Control Video`` makes sure of that and
returns the matching width/height/length for those nodes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from expportrait_core.errors import ExpPortraitError, MissingModelError

from ._comfy import CATEGORY, comfy_progress, folder_for, list_models, resolve_model

GEN_TYPE = "EXPP_GENERATOR"
_CAT = f"{CATEGORY}/Generator"
_NONE = "none"
_WAN_RULES = ("4k+1 frames (5, 9, …, 81) and width/height multiples of 16 — the rules of ComfyUI's "
              "WanFunControlToVideo / WanVaceToVideo")
WAN_VAE_SOURCE = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged (split_files/vae)"


def _list(key: str) -> List[str]:
    try:
        return list_models(key)
    except KeyError:  # a ComfyUI core folder unknown to the CLI fallback
        return []


def _resolve(key: str, name: str, what: str, source: str = "") -> Optional[Path]:
    if not name or name == _NONE:
        return None
    try:
        return resolve_model(key, name, what, source)
    except KeyError:
        raise MissingModelError(what, key, name, source) from None


def _model_path(p: Path) -> Path:
    # diffusers folders are picked through their model_index.json / config.json
    return p.parent if p.name in ("model_index.json", "config.json") else p


class ExpPortraitLoadGenerator:
    """Load the DiT generator: an ExpPortrait model (bundle or diffusers folder) and/or a Wan base transformer."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "model": ([_NONE] + _list("expportrait_generator"), {
                    "tooltip": "ExpPortrait generator from models/expportrait/generator: a .safetensors bundle "
                               "(trained encoders + LoRA) or a diffusers folder (pick its model_index.json). "
                               "'none' = use base_model alone (e.g. a Wan2.1-Fun-Control checkpoint)."}),
                "base_model": ([_NONE] + _list("diffusion_models"), {
                    "tooltip": "Wan 2.1 transformer from models/diffusion_models: the I2V model the ExpPortrait "
                               "bundle was trained on, or a Wan2.1-Fun-Control model to use public control "
                               "weights with our normal maps. fp8 files are accepted."}),
                "vae": (_list("vae") + [_NONE], {"tooltip": "Wan 2.1 VAE from models/vae (wan_2.1_vae.safetensors); "
                                                  "'none' only for ExpPortrait bundles/folders that contain a VAE."}),
                "clip_vision": ([_NONE] + _list("clip_vision"), {
                    "tooltip": "CLIP ViT-H from models/clip_vision (clip_vision_h.safetensors) for I2V/Fun models; "
                               "'none' feeds a zero image embedding (weaker identity)."}),
                "dtype": (["bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2"], {
                    "default": "bf16",
                    "tooltip": "Transformer precision. fp8_* stores weights in 8 bits and computes in bf16 "
                               "(half the memory of bf16). On a CPU, fp32 computes faster; the VAE always runs "
                               "in fp32 there."}),
                "device": (["auto", "cuda", "cpu"], {"default": "auto", "tooltip": "Where to run (auto: CUDA if available)."}),
                "offload": ([_NONE, "model", "blocks"], {
                    "default": _NONE,
                    "tooltip": "'model': keep idle parts (VAE, CLIP, transformer) on the CPU and move each to the GPU "
                               "only while it runs; 'blocks': also stream transformer blocks (least memory, slowest)."}),
            },
            "optional": {
                "prompt_embeds": ([_NONE] + _list("expportrait_generator"), {
                    "default": _NONE,
                    "tooltip": "Cached prompt embeddings (.safetensors written by ExpPortrait Save Prompt Embeds). "
                               "'none' = neutral prompt; no 11 GB text encoder is loaded."}),
            },
        }

    RETURN_TYPES = (GEN_TYPE,)
    RETURN_NAMES = ("generator",)
    FUNCTION = "load"
    CATEGORY = _CAT
    DESCRIPTION = "Loads the normal-map-controlled video DiT (Wan 2.1 family) for ExpPortrait Sampler."

    def load(self, model: str, base_model: str, vae: str, clip_vision: str, dtype: str, device: str,
             offload: str, prompt_embeds: str = _NONE) -> Tuple[Any]:
        from expportrait_core.generator import load_generator

        m = _resolve("expportrait_generator", model, "ExpPortrait generator")
        b = _resolve("diffusion_models", base_model, "Wan 2.1 transformer")
        if m is None and b is None:
            raise ExpPortraitError(
                f"pick an ExpPortrait model (in {folder_for('expportrait_generator')}) or a Wan base_model "
                "(in models/diffusion_models)")
        v = _resolve("vae", vae, "Wan 2.1 VAE", WAN_VAE_SOURCE)
        c = _resolve("clip_vision", clip_vision, "CLIP vision model")
        pe = _resolve("expportrait_generator", prompt_embeds, "prompt embeddings")
        gen = load_generator(
            _model_path(m) if m is not None else None, base=b, vae=v, clip_vision=c, prompt_embeds=pe,
            dtype=dtype, device=device, offload=False if offload == _NONE else offload,
        )
        return (gen,)


def _cond_tensor(cond: Any) -> Optional[torch.Tensor]:
    """ComfyUI CONDITIONING ``[[tensor [1, L, D], {...}], …]`` → the first tensor ``[L, D]``."""
    if cond is None:
        return None
    try:
        return cond[0][0][0]
    except (IndexError, TypeError, KeyError):
        raise ExpPortraitError("positive/negative must be a CONDITIONING from a text encoder node") from None


class ExpPortraitSampler:
    """Generate the portrait video from a reference image and a normal-map control video."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "generator": (GEN_TYPE, {"tooltip": "From ExpPortrait Load Generator."}),
                "reference_image": ("IMAGE", {"tooltip": "The portrait whose identity and appearance to keep "
                                              "(resized and centre-cropped to the output size)."}),
                "control_video": ("IMAGE", {"tooltip": "Normal-map frames (one output frame per control frame). "
                                            f"Any length/size works (snapped with a log line); {_WAN_RULES} are "
                                            "used as is, so the same batch can feed ComfyUI's Wan nodes."}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 200, "tooltip": "Denoising steps."}),
                "cfg": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                  "tooltip": "Classifier-free guidance scale (1 = off, one pass per step)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Noise seed (same seed → same video)."}),
                "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                                    "tooltip": "Flow-matching timestep shift; 0 = model default (3 at 480p; Wan uses 5 at 720p)."}),
                "scheduler": (["unipc", "euler"], {"default": "unipc", "tooltip": "Flow-matching sampler."}),
                "window": ("INT", {"default": 81, "min": 5, "max": 1025, "step": 4,
                                   "tooltip": "Frames per temporal window (4k+1). Longer clips are generated as "
                                              "overlapping windows blended at every step (no seams, bounded memory)."}),
                "overlap": ("INT", {"default": 16, "min": 0, "max": 1024, "step": 4,
                                    "tooltip": "Frames shared by neighbouring windows (blended linearly)."}),
            },
            "optional": {
                "reference_normal": ("IMAGE", {"tooltip": "Normal map of the reference portrait (ExpPortrait models)."}),
                "positive": ("CONDITIONING", {"tooltip": "Optional prompt from a Wan text encoder (UMT5); overrides "
                                              "the loader's cached embeddings."}),
                "negative": ("CONDITIONING", {"tooltip": "Optional negative prompt for CFG on text."}),
                "cfg_on": (["default", "text", "control", "reference", "control+reference", "text+control+reference"], {
                    "default": "default",
                    "tooltip": "Which conditions the unconditional CFG pass drops (default: the model's choice — "
                               "control+reference for ExpPortrait models, text for Wan/Fun models)."}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "sample"
    CATEGORY = _CAT
    DESCRIPTION = "Samples the DiT generator (windowed for long clips) and returns the frames as an IMAGE batch."

    def sample(self, generator: Any, reference_image: torch.Tensor, control_video: torch.Tensor, steps: int,
               cfg: float, seed: int, shift: float, scheduler: str, window: int, overlap: int,
               reference_normal: Optional[torch.Tensor] = None, positive: Any = None, negative: Any = None,
               cfg_on: str = "default") -> Tuple[torch.Tensor]:
        frames = generator.sample(
            reference_image, control_video, reference_normal,
            steps=steps, cfg=cfg, seed=seed, shift=shift or None, window=window, overlap=overlap,
            scheduler=scheduler, cfg_on=None if cfg_on == "default" else cfg_on,
            prompt_embeds=_cond_tensor(positive), negative_prompt_embeds=_cond_tensor(negative),
            progress=comfy_progress(steps),
        )
        return (frames,)


class ExpPortraitFitControlVideo:
    """Snap a control IMAGE batch to Wan's rules and report the numbers Wan's nodes need."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "control_video": ("IMAGE", {"tooltip": "Normal-map (or any control) frames."}),
                "width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 16,
                                  "tooltip": "Output width (0 = keep, snapped to a multiple of 16)."}),
                "height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 16,
                                   "tooltip": "Output height (0 = keep, snapped to a multiple of 16)."}),
                "frames": (["pad", "trim"], {"default": "pad",
                                             "tooltip": "Reach 4k+1 frames by repeating the last frame (pad) or dropping frames (trim)."}),
            }
        }

    RETURN_TYPES = ("IMAGE", "INT", "INT", "INT")
    RETURN_NAMES = ("control_video", "width", "height", "length")
    FUNCTION = "fit"
    CATEGORY = _CAT
    DESCRIPTION = f"Makes a control video follow {_WAN_RULES}; wire width/height/length into those nodes."

    def fit(self, control_video: torch.Tensor, width: int, height: int, frames: str) -> Tuple[torch.Tensor, int, int, int]:
        from expportrait_core.generator import fit_control_video

        out, h, w, n = fit_control_video(control_video, height=height, width=width, frame_mode=frames)
        return (out, w, h, n)


class ExpPortraitSavePromptEmbeds:
    """Cache a text encoder's output so later runs need no text encoder."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "From CLIP Text Encode with the Wan UMT5 text encoder."}),
                "filename": ("STRING", {"default": "prompt_portrait",
                                        "tooltip": "File name (without extension) in models/expportrait/generator/prompts."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt to store next to it (for CFG on text)."}),
            },
        }

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = _CAT
    DESCRIPTION = "Writes prompt embeddings to models/expportrait/generator/prompts/<filename>.safetensors."

    def save(self, positive: Any, filename: str, negative: Any = None) -> Dict[str, Any]:
        from expportrait_core.generator import save_prompt_embeds

        name = Path(filename).name.removesuffix(".safetensors")
        if not name:
            raise ExpPortraitError("filename must not be empty")
        path = Path(folder_for("expportrait_generator")) / "prompts" / f"{name}.safetensors"
        save_prompt_embeds(path, _cond_tensor(positive), _cond_tensor(negative))
        return {"ui": {"text": [str(path)]}}


NODE_CLASS_MAPPINGS = {
    "ExpPortraitLoadGenerator": ExpPortraitLoadGenerator,
    "ExpPortraitSampler": ExpPortraitSampler,
    "ExpPortraitFitControlVideo": ExpPortraitFitControlVideo,
    "ExpPortraitSavePromptEmbeds": ExpPortraitSavePromptEmbeds,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ExpPortraitLoadGenerator": "ExpPortrait Load Generator",
    "ExpPortraitSampler": "ExpPortrait Sampler",
    "ExpPortraitFitControlVideo": "ExpPortrait Fit Control Video",
    "ExpPortraitSavePromptEmbeds": "ExpPortrait Save Prompt Embeds",
}
