"""Node adapters, one module per stage; this file merges their mappings.

A stage whose optional dependency is missing is skipped with a log line instead of breaking the
whole pack (install pain is the top complaint about portrait packs).
"""
import importlib
import logging

from ._comfy import allow_autograd, install_demo_inputs, register_model_folders

log = logging.getLogger("ExpPortrait")

STAGE_MODULES = ("head", "files", "face", "fit", "track", "transfer", "generator", "evaluate")

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
LOAD_ERRORS = {}

register_model_folders()
install_demo_inputs()

for _name in STAGE_MODULES:
    try:
        _mod = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name == f"{__name__}.{_name}":
            continue  # stage not built in this version
        LOAD_ERRORS[_name] = repr(_exc)
        log.warning("ExpPortrait: skipping %s nodes (%s)", _name, _exc)
        continue
    except Exception as _exc:  # keep the rest of the pack usable
        LOAD_ERRORS[_name] = repr(_exc)
        log.warning("ExpPortrait: skipping %s nodes (%s)", _name, _exc)
        continue
    for _cls in getattr(_mod, "NODE_CLASS_MAPPINGS", {}).values():
        allow_autograd(_cls)  # ComfyUI runs nodes in inference mode; ours need ordinary tensors
    NODE_CLASS_MAPPINGS.update(getattr(_mod, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "LOAD_ERRORS"]
