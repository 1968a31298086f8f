"""Save and load identities and motions (``.safetensors`` in ComfyUI/models/expportrait/...)."""
from __future__ import annotations

import re

from expportrait_core.errors import ExpPortraitError

from ._comfy import CATEGORY, folder_for, list_models, resolve_model

_SAFE_NAME = re.compile(r"^[\w\-. /]+$")


def _target(key: str, name: str):
    from pathlib import Path

    name = name.strip()
    if not name or not _SAFE_NAME.match(name) or ".." in name:
        raise ExpPortraitError(f"'{name}' is not a valid file name (letters, digits, - _ . / only).")
    if not name.endswith(".safetensors"):
        name += ".safetensors"
    return Path(folder_for(key)) / name


class ExpPortraitSaveIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "identity": ("EXPP_IDENTITY", {"tooltip": "Fitted identity to store for reuse."}),
            "name": ("STRING", {"default": "my_identity", "tooltip": "File name in ComfyUI/models/expportrait/identities."}),
            "overwrite": ("BOOLEAN", {"default": True, "tooltip": "Replace an existing file of the same name."}),
        }}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = f"{CATEGORY}/Identity"

    def save(self, identity, name, overwrite=True):
        from expportrait_core.io.files import save_identity

        path = _target("expportrait_identities", name)
        if path.exists() and not overwrite:
            raise ExpPortraitError(f"'{path}' exists; enable overwrite or choose another name.")
        save_identity(identity, path)
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}


class ExpPortraitLoadIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "proxy": ("EXPP_PROXY", {"tooltip": "The proxy the identity was fitted with (checked)."}),
            "identity_file": (list_models("expportrait_identities"), {"tooltip": "File in ComfyUI/models/expportrait/identities."}),
        }}

    RETURN_TYPES = ("EXPP_IDENTITY",)
    RETURN_NAMES = ("identity",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/Identity"

    def load(self, proxy, identity_file):
        from expportrait_core.io.files import load_identity

        path = resolve_model("expportrait_identities", identity_file, "Identity file")
        return (load_identity(path, proxy.describe()),)


class ExpPortraitSaveMotion:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "motion": ("EXPP_MOTION", {"tooltip": "Tracked or transferred motion to store."}),
            "name": ("STRING", {"default": "my_motion", "tooltip": "File name in ComfyUI/models/expportrait/motions."}),
            "overwrite": ("BOOLEAN", {"default": True, "tooltip": "Replace an existing file of the same name."}),
        }}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = f"{CATEGORY}/Motion"

    def save(self, motion, name, overwrite=True):
        from expportrait_core.io.files import save_motion

        path = _target("expportrait_motions", name)
        if path.exists() and not overwrite:
            raise ExpPortraitError(f"'{path}' exists; enable overwrite or choose another name.")
        save_motion(motion, path)
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}


class ExpPortraitLoadMotion:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "proxy": ("EXPP_PROXY", {"tooltip": "The proxy the motion was tracked with (checked)."}),
            "motion_file": (list_models("expportrait_motions"), {"tooltip": "File in ComfyUI/models/expportrait/motions."}),
        }}

    RETURN_TYPES = ("EXPP_MOTION",)
    RETURN_NAMES = ("motion",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/Motion"

    def load(self, proxy, motion_file):
        from expportrait_core.io.files import load_motion

        path = resolve_model("expportrait_motions", motion_file, "Motion file")
        return (load_motion(path, proxy.describe()),)


NODE_CLASS_MAPPINGS = {
    "ExpPortraitSaveIdentity": ExpPortraitSaveIdentity,
    "ExpPortraitLoadIdentity": ExpPortraitLoadIdentity,
    "ExpPortraitSaveMotion": ExpPortraitSaveMotion,
    "ExpPortraitLoadMotion": ExpPortraitLoadMotion,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ExpPortraitSaveIdentity": "ExpPortrait Save Identity",
    "ExpPortraitLoadIdentity": "ExpPortrait Load Identity",
    "ExpPortraitSaveMotion": "ExpPortrait Save Motion",
    "ExpPortraitLoadMotion": "ExpPortrait Load Motion",
}
