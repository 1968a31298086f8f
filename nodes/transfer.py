"""Expression transfer and expression editor nodes (paper §4)."""
from __future__ import annotations

import logging
import time

from expportrait_core.errors import ExpPortraitError, MissingModelError

from . import _comfy
from ._comfy import CATEGORY, comfy_progress, folder_for, list_models, numpy_to_image, resolve_model

log = logging.getLogger("ExpPortrait")

NONE_CHOICE = "(none)"
MODEL_HINT = "train one with: python -m expportrait_core train-transfer --out transfer.safetensors"
_MODEL_CACHE: dict = {}

EXPRESSION_SLIDERS = 8
SYNTHETIC_HINT = ("smile, mouth_stretch, lip_pucker, lip_press, brow_raise, brow_furrow, blink_left, blink_right")


def _load_model(name: str):
    from expportrait_core.transfer import load_transfer_model

    path = resolve_model("expportrait_transfer", name, "Transfer model", MODEL_HINT)
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_transfer_model(path)
    return _MODEL_CACHE[key]


class ExpPortraitLoadTransferModel:
    """Loads a trained identity-adaptive transfer model (encoder E + per-vertex MLP G)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (list_models("expportrait_transfer"), {
                "tooltip": "Transfer model (.safetensors) in ComfyUI/models/expportrait/transfer, made by "
                           "'python -m expportrait_core train-transfer'."}),
        }}

    RETURN_TYPES = ("EXPP_TRANSFER_MODEL",)
    RETURN_NAMES = ("transfer_model",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/Transfer"
    DESCRIPTION = "Load the learned expression-transfer module for 'ExpPortrait Transfer Expression'."

    def load(self, model_name):
        return (_load_model(model_name),)


class ExpPortraitTransferExpression:
    """Retargets a driving motion onto the reference identity, keeping the reference's anatomy."""

    @classmethod
    def INPUT_TYPES(cls):
        s = lambda what: ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,  # noqa: E731
                                    "tooltip": f"Strength of the transferred {what} (0 = the reference's own, 1 = as driven)."})
        return {
            "required": {
                "proxy": ("EXPP_PROXY", {"tooltip": "Head proxy the identity and the motion were made with."}),
                "identity": ("EXPP_IDENTITY", {"tooltip": "Reference identity (fitted portrait): keeps its shape and static offsets."}),
                "motion": ("EXPP_MOTION", {"tooltip": "Driving motion (tracked driving video, or an edited motion)."}),
                "method": (["auto", "learned", "deformation transfer", "parameter copy"], {
                    "default": "auto",
                    "tooltip": "auto: the learned model if one is connected/chosen and found, else deformation transfer. "
                               "learned: the paper's identity-adaptive module (needs a model). deformation transfer: "
                               "training-free, moves the driver's expression deformation onto the reference's face. "
                               "parameter copy: the driver's coefficients and detail as they are."}),
                "pose_mode": (["relative", "absolute"], {
                    "default": "relative",
                    "tooltip": "relative: head motion since the neutral frame, applied on top of the reference's own pose. "
                               "absolute: the driver's pose itself."}),
                "neutral_frame": ("INT", {"default": 0, "min": -1, "max": 100000, "tooltip":
                                          "Driving frame whose face counts as neutral (it maps to the reference's neutral face); "
                                          "-1 = no calibration."}),
                "expression_strength": s("expression and detail"),
                "jaw_strength": s("jaw opening"),
                "eyes_strength": s("eye gaze"),
                "head_rotation_strength": s("head rotation"),
                "translation_strength": s("head translation"),
            },
            "optional": {
                "transfer_model": ("EXPP_TRANSFER_MODEL", {"tooltip": "From 'ExpPortrait Load Transfer Model' (takes precedence over model_file)."}),
                "model_file": ([NONE_CHOICE] + list_models("expportrait_transfer"), {
                    "default": NONE_CHOICE,
                    "tooltip": "Transfer model file in ComfyUI/models/expportrait/transfer. If it is missing, 'auto' falls "
                               "back to deformation transfer and 'learned' stops with an error."}),
            },
        }

    RETURN_TYPES = ("EXPP_MOTION",)
    RETURN_NAMES = ("motion",)
    FUNCTION = "transfer"
    CATEGORY = f"{CATEGORY}/Transfer"
    DESCRIPTION = ("Identity-adaptive expression transfer: the driver's pose, expression and expression detail on the "
                   "reference's own face (a child does not inherit deep wrinkles).")

    def transfer(self, proxy, identity, motion, method="auto", pose_mode="relative", neutral_frame=0,
                 expression_strength=1.0, jaw_strength=1.0, eyes_strength=1.0, head_rotation_strength=1.0,
                 translation_strength=1.0, transfer_model=None, model_file=NONE_CHOICE):
        from expportrait_core.transfer import METHOD_LABELS, transfer_motion

        if method not in METHOD_LABELS:
            raise ExpPortraitError(f"Unknown method '{method}'; choose one of {list(METHOD_LABELS)}.")
        m = METHOD_LABELS[method]
        model = transfer_model
        if model is None and m in ("auto", "learned") and model_file and model_file != NONE_CHOICE:
            try:
                model = _load_model(model_file)
            except MissingModelError:
                if m == "learned":
                    raise
                log.warning("ExpPortrait: transfer model '%s' not found in %s; 'auto' uses deformation transfer.",
                            model_file, folder_for("expportrait_transfer"))
        if m == "learned" and model is None:
            raise MissingModelError("Transfer model", folder_for("expportrait_transfer"), "<a .safetensors model>", MODEL_HINT)
        strengths = {"expression": expression_strength, "jaw": jaw_strength, "eyes": eyes_strength,
                     "head_rotation": head_rotation_strength, "translation": translation_strength}
        out = transfer_motion(proxy, identity, motion, method=m, model=model, strengths=strengths, pose_mode=pose_mode,
                              neutral_frame=None if neutral_frame < 0 else neutral_frame,
                              progress=comfy_progress(motion.num_frames))
        return (out,)


class ExpPortraitExpressionEditor:
    """Poses a portrait (or edits a motion) with named controls and previews the head at once."""

    @classmethod
    def INPUT_TYPES(cls):
        deg = lambda what, lo, hi: ("FLOAT", {"default": 0.0, "min": lo, "max": hi, "step": 0.5,  # noqa: E731
                                              "tooltip": f"{what} in degrees."})
        req = {
            "proxy": ("EXPP_PROXY", {"tooltip": "Head proxy."}),
            "mode": (["offset", "constant", "keyframes"], {
                "default": "offset",
                "tooltip": "offset: add the values to every frame. constant: set the controls to the values in every frame. "
                           "keyframes: per-frame offsets interpolated between the 'keyframes' text entries."}),
            "jaw_open": deg("Jaw opening (> 0 opens)", -10.0, 40.0),
            "head_pitch": deg("Head pitch (> 0 looks up)", -60.0, 60.0),
            "head_yaw": deg("Head yaw (> 0 turns to the subject's left)", -80.0, 80.0),
            "head_roll": deg("Head roll (> 0 tilts to the subject's left shoulder)", -45.0, 45.0),
            "gaze_yaw": deg("Eye gaze yaw (> 0 to the subject's left)", -30.0, 30.0),
            "gaze_pitch": deg("Eye gaze pitch (> 0 up)", -30.0, 30.0),
            "eyelid_close": ("FLOAT", {"default": 0.0, "min": -0.5, "max": 1.0, "step": 0.05,
                                       "tooltip": "Eyelid closure of both eyes: 0 as is, 1 closed (negative widens)."}),
        }
        for k in range(1, EXPRESSION_SLIDERS + 1):
            req[f"expression_{k}"] = ("FLOAT", {"default": 0.0, "min": -3.0, "max": 3.0, "step": 0.05, "tooltip":
                                                f"Expression direction {k} (coefficient {k - 1}): on SMPL-X its {k}. leading "
                                                f"expression component; on the synthetic head its {k}. named direction "
                                                f"({SYNTHETIC_HINT})."})
        req.update({
            "more_controls": ("STRING", {"default": "", "multiline": False, "tooltip":
                                         "More controls as name=value, e.g. 'smile=0.8 eyelid_close_left=1 expr_12=0.5'."}),
            "keyframes": ("STRING", {"default": "", "multiline": True, "tooltip":
                                     "For mode 'keyframes': one keyframe per line, 'frame: name=value ...', e.g. "
                                     "'0: jaw_open=0' / '12: jaw_open=25 smile=1' / '24: jaw_open=0'."}),
            "num_frames": ("INT", {"default": 1, "min": 1, "max": 10000, "tooltip":
                                   "Frames to generate when no motion is connected (keyframes extend it to the last keyframe)."}),
            "preview_size": ("INT", {"default": 256, "min": 64, "max": 1024, "step": 16,
                                     "tooltip": "Longer side of the preview images in pixels."}),
        })
        return {
            "required": req,
            "optional": {
                "identity": ("EXPP_IDENTITY", {"tooltip": "Identity to pose (its shape, reference pose and camera). "
                                                          "Without identity and motion the template head is used."}),
                "motion": ("EXPP_MOTION", {"tooltip": "Motion to edit (every frame); takes precedence over the identity's pose."}),
                "preset": ([NONE_CHOICE] + list_models("expportrait_presets"), {
                    "default": NONE_CHOICE,
                    "tooltip": "Preset (.json/.safetensors) in ComfyUI/models/expportrait/presets; sliders that are not 0 "
                               "and more_controls are applied on top."}),
                "save_preset_as": ("STRING", {"default": "", "tooltip":
                                              "If set, save the resulting edit as this preset name (.json unless it ends in .safetensors)."}),
            },
        }

    RETURN_TYPES = ("EXPP_MOTION", "EXPP_IDENTITY", "IMAGE")
    RETURN_NAMES = ("motion", "identity", "preview")
    FUNCTION = "edit"
    OUTPUT_NODE = True
    CATEGORY = f"{CATEGORY}/Transfer"
    DESCRIPTION = "Expression editor: jaw, head pitch/yaw/roll, gaze, eyelids and expression directions, with a preview."

    def edit(self, proxy, mode="offset", jaw_open=0.0, head_pitch=0.0, head_yaw=0.0, head_roll=0.0, gaze_yaw=0.0,
             gaze_pitch=0.0, eyelid_close=0.0, more_controls="", keyframes="", num_frames=1, preview_size=256,
             identity=None, motion=None, preset=NONE_CHOICE, save_preset_as="", **expression_sliders):
        from expportrait_core.transfer import build_edit, edit_motion, load_preset, preview_frames, save_preset, template_identity

        values = {"jaw_open": jaw_open, "head_pitch": head_pitch, "head_yaw": head_yaw, "head_roll": head_roll,
                  "gaze_yaw": gaze_yaw, "gaze_pitch": gaze_pitch, "eyelid_close": eyelid_close}
        for k in range(1, EXPRESSION_SLIDERS + 1):
            values[f"expr_{k - 1:02d}"] = float(expression_sliders.get(f"expression_{k}", 0.0))
        base = load_preset(resolve_model("expportrait_presets", preset, "Expression preset")) if preset and preset != NONE_CHOICE else None
        edit = build_edit(values, mode, more=more_controls, keyframes=keyframes, preset=base)
        target = motion if motion is not None else (identity if identity is not None else template_identity(proxy))
        out_motion, out_identity = edit_motion(proxy, target, edit, num_frames=num_frames)
        if out_identity is None:
            out_identity = identity if identity is not None else template_identity(proxy)
        frames = preview_frames(proxy, out_motion, identity if identity is not None else out_motion.identity or out_identity,
                                size=preview_size)
        ui = {"images": self._save_preview(frames)}
        if save_preset_as.strip():
            name = save_preset_as.strip()
            if not name.endswith((".json", ".safetensors")):
                name += ".json"
            from pathlib import Path

            if ".." in name or name.startswith(("/", "\\")):
                raise ExpPortraitError(f"'{name}' is not a valid preset name.")
            path = save_preset(edit, Path(folder_for("expportrait_presets")) / name)
            ui["text"] = [f"saved preset {path}"]
        return {"ui": ui, "result": (out_motion, out_identity, numpy_to_image(frames))}

    @staticmethod
    def _save_preview(frames):
        """PNG previews where ComfyUI's UI can show them (temp folder if the adapter offers one)."""
        from pathlib import Path

        from PIL import Image

        temp = getattr(_comfy, "temp_dir", None)
        folder, kind = (Path(temp()), "temp") if temp is not None else (Path(_comfy.output_dir()), "output")
        sub = "expportrait_editor"
        target = folder / sub
        target.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.perf_counter_ns() % 1_000_000:06d}"
        out = []
        for i, f in enumerate(frames):
            name = f"preview_{stamp}_{i:02d}.png"
            Image.fromarray(f).save(target / name)
            out.append({"filename": name, "subfolder": sub, "type": kind})
        return out


NODE_CLASS_MAPPINGS = {
    "ExpPortraitTransferExpression": ExpPortraitTransferExpression,
    "ExpPortraitExpressionEditor": ExpPortraitExpressionEditor,
    "ExpPortraitLoadTransferModel": ExpPortraitLoadTransferModel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ExpPortraitTransferExpression": "ExpPortrait Transfer Expression",
    "ExpPortraitExpressionEditor": "ExpPortrait Expression Editor",
    "ExpPortraitLoadTransferModel": "ExpPortrait Load Transfer Model",
}
