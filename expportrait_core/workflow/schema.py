"""Node schemas in ComfyUI's ``/object_info`` format, and how the frontend reads them.

``/object_info`` maps a node type (class_type) to a dict like::

    {"input": {"required": {name: [TYPE, {options}]}, "optional": {...}, "hidden": {...}},
     "input_order": {"required": [names...], ...},
     "output": [TYPE...], "output_is_list": [bool...], "output_name": [str...],
     "name": ..., "display_name": ..., "description": ..., "category": ..., "output_node": bool,
     "python_module": ...}

``TYPE`` is a string (``"INT"``, ``"IMAGE"``, ``"IMAGE,MASK"``, ``"*"``, ``"COMBO"``) or a list of
choices (a legacy combo). The real dump of ComfyUI 0.8.0 is loaded by :func:`load_object_info`; our
own node classes are described by :func:`object_info_from_classes`, which does what ComfyUI's
``server.py`` (``node_info``) does for classic (V1) node classes.

:func:`input_specs` reads a schema the way the frontend does when it builds a node: which inputs
become widgets (and in which order their values are saved in ``widgets_values``), which are sockets,
and where the extra ``control_after_generate`` value sits.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..errors import ExpPortraitError

ObjectInfo = Dict[str, Dict[str, Any]]

#: Environment variable naming the ``object_info`` JSON dump to use.
OBJECT_INFO_ENV = "EXPPORTRAIT_OBJECT_INFO"
#: Where the dump lives relative to the repository root (CI copies ``shared/`` beside the clone).
OBJECT_INFO_RELATIVE = Path("..") / "shared" / "comfyui" / "object_info-0.8.0.json"
#: ``python_module`` that ComfyUI reports for this pack when installed as ``custom_nodes/<folder>``.
DEFAULT_PYTHON_MODULE = "custom_nodes.ComfyUI-ExpPortrait"

#: Node types that exist only in the frontend: never sent to the backend.
FRONTEND_ONLY_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
#: Frontend-only nodes that carry nothing at all (comments).
NOTE_NODES = frozenset({"Note", "MarkdownNote"})

#: Input types the frontend shows as widgets (values saved in ``widgets_values``).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
#: V3 types whose widgets/sockets depend on the values chosen; checked leniently.
DYNAMIC_TYPES = frozenset({"COMFY_AUTOGROW_V3", "COMFY_DYNAMICCOMBO_V3", "COMFY_DYNAMICSLOT_V3"})
MATCHTYPE = "COMFY_MATCHTYPE_V3"
#: INT inputs with these names get a ``control_after_generate`` widget even without the option
#: (the frontend's legacy ``INT:seed`` / ``INT:noise_seed`` widgets).
SEED_INPUT_NAMES = frozenset({"seed", "noise_seed"})
#: Values the frontend stores for the ``control_after_generate`` widget.
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")

#: File extensions that mark a combo as a list of files found on disk (models, inputs).
FILE_EXTENSIONS = frozenset({
    ".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".sft", ".pkl", ".npz",
    ".json", ".yaml", ".yml", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff",
    ".mp4", ".webm", ".mov", ".mkv", ".avi", ".wav", ".mp3", ".flac", ".ogg", ".m4a", ".glb",
    ".obj", ".fbx", ".ply", ".txt", ".latent", ".exr",
})


def repo_root() -> Path:
    """The repository (pack) root: the folder that holds ``expportrait_core/``."""
    return Path(__file__).resolve().parents[2]


def find_object_info_path() -> Optional[Path]:
    """Where the ComfyUI 0.8.0 ``object_info`` dump is, or None.

    Looks at ``$EXPPORTRAIT_OBJECT_INFO`` first, then ``<repo>/../shared/comfyui/...`` (the
    layout of the dev machines and CI). A set but missing env path returns None (callers skip).
    """
    env = os.environ.get(OBJECT_INFO_ENV)
    if env:
        p = Path(env)
        return p if p.is_file() else None
    p = (repo_root() / OBJECT_INFO_RELATIVE).resolve()
    return p if p.is_file() else None


def load_object_info(path: Optional[os.PathLike] = None) -> ObjectInfo:
    """Load an ``/object_info`` JSON dump (default: :func:`find_object_info_path`).

    Raises ExpPortraitError when no dump is found or the file is not an object_info dump.
    """
    p = Path(path) if path is not None else find_object_info_path()
    if p is None:
        raise ExpPortraitError(
            "ComfyUI's object_info dump not found: set EXPPORTRAIT_OBJECT_INFO to "
            f"object_info-0.8.0.json or place it at <repo>/{OBJECT_INFO_RELATIVE.as_posix()}."
        )
    try:
        with open(p, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ExpPortraitError(f"cannot read object_info dump '{p}': {e}") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "input" in v for v in data.values()):
        raise ExpPortraitError(f"'{p}' is not a ComfyUI /object_info dump (node type -> schema).")
    return data


def node_info(name: str, cls: Any, display_names: Optional[Mapping[str, str]] = None,
              python_module: str = DEFAULT_PYTHON_MODULE) -> Dict[str, Any]:
    """The ``/object_info`` entry of one node class, as ComfyUI 0.8.0's ``server.py`` builds it.

    V3 classes (with ``GET_NODE_INFO_V1``) describe themselves. The result goes through a JSON
    round trip (the server sends JSON), so tuples become lists and a class whose schema is not
    JSON-serializable fails here as it would in ComfyUI.
    """
    if hasattr(cls, "GET_NODE_INFO_V1"):
        info = cls.GET_NODE_INFO_V1()
    else:
        input_types = cls.INPUT_TYPES()
        info = {
            "input": input_types,
            "input_order": {key: list(value.keys()) for key, value in cls.INPUT_TYPES().items()},
            "output": cls.RETURN_TYPES,
            "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
            "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
            "name": name,
            "display_name": (display_names or {}).get(name, name),
            "description": getattr(cls, "DESCRIPTION", ""),
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", python_module),
            "category": getattr(cls, "CATEGORY", "sd"),
            "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
        }
        if hasattr(cls, "OUTPUT_TOOLTIPS"):
            info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
        if getattr(cls, "DEPRECATED", False):
            info["deprecated"] = True
        if getattr(cls, "EXPERIMENTAL", False):
            info["experimental"] = True
        if hasattr(cls, "API_NODE"):
            info["api_node"] = cls.API_NODE
    try:
        return json.loads(json.dumps(info))
    except (TypeError, ValueError) as e:
        raise ExpPortraitError(
            f"node '{name}': its INPUT_TYPES/RETURN_TYPES are not JSON-serializable ({e}); "
            "ComfyUI's /object_info would fail for it."
        ) from e


def object_info_from_classes(node_class_mappings: Mapping[str, Any],
                             node_display_name_mappings: Optional[Mapping[str, str]] = None,
                             python_module: str = DEFAULT_PYTHON_MODULE) -> ObjectInfo:
    """``/object_info`` for a pack's ``NODE_CLASS_MAPPINGS`` (+ display names)."""
    return {name: node_info(name, cls, node_display_name_mappings, python_module)
            for name, cls in node_class_mappings.items()}


def merge_object_info(*infos: Optional[Mapping[str, Any]]) -> ObjectInfo:
    """Merge several ``object_info`` dicts; later ones win on equal names (None skipped)."""
    out: ObjectInfo = {}
    for info in infos:
        if info:
            out.update(info)
    return out


# ----------------------------------------------------------------------------------------------
# Reading a schema the way the frontend does


@dataclass
class InputSpec:
    """One input of a node schema.

    ``type`` is the socket type string (a legacy choice list becomes ``"COMBO"``); ``choices`` the
    combo options (None for non-combos); ``widget`` whether the frontend makes it a widget;
    ``control`` whether ``control_after_generate`` values follow its value in ``widgets_values``.
    """

    name: str
    type: str
    options: Dict[str, Any]
    section: str  # "required" | "optional"
    widget: bool
    control: bool = False
    choices: Optional[List[Any]] = None
    dynamic: bool = False

    @property
    def required(self) -> bool:
        return self.section == "required"

    @property
    def file_list(self) -> bool:
        """True for combos listing files on disk (model files, uploads): choices not checked."""
        if self.choices is None:
            return False
        if len(self.choices) == 0 or self.options.get("remote") or self.options.get("image_folder"):
            return True
        if any(self.options.get(k) for k in ("image_upload", "video_upload", "audio_upload", "file_upload")):
            return True
        for c in self.choices:
            if isinstance(c, str) and ("/" in c or "\\" in c or Path(c).suffix.lower() in FILE_EXTENSIONS):
                return True
        return False


def _spec_parts(spec: Any) -> tuple:
    if isinstance(spec, (list, tuple)) and spec:
        t = spec[0]
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return t, opts
    if isinstance(spec, str):  # hidden inputs: "PROMPT"
        return spec, {}
    return "*", {}


def make_input_spec(name: str, spec: Any, section: str) -> InputSpec:
    """Interpret one ``[TYPE, {options}]`` entry of a schema."""
    t, opts = _spec_parts(spec)
    choices: Optional[List[Any]] = None
    if isinstance(t, (list, tuple)):
        choices, t = list(t), "COMBO"
    elif t == "COMBO":
        choices = list(opts.get("options", []))
    elif t == MATCHTYPE:
        t = str((opts.get("template") or {}).get("allowed_types", "*"))
    t = str(t)
    dynamic = t in DYNAMIC_TYPES
    widget = (t in WIDGET_TYPES and not opts.get("forceInput", False)) or t == "COMFY_DYNAMICCOMBO_V3"
    spec = InputSpec(name, t, dict(opts), section, widget, False, choices, dynamic)
    spec.control = widget and bool(control_slots(spec))
    return spec


def control_slots(spec: InputSpec) -> List[str]:
    """Frontend-only widgets saved after this widget's value (useIntWidget, useFloatWidget,
    useComboWidget of frontend 1.35): ``control`` for an INT with ``control_after_generate`` (when
    the option is absent: an INT named ``seed``/``noise_seed``), a FLOAT with it; ``control`` and
    ``filter`` (the combo filter string) for a COMBO with it."""
    cag = spec.options.get("control_after_generate")
    if spec.type == "INT":
        on = bool(cag) if cag is not None else spec.name.split(".")[-1] in SEED_INPUT_NAMES
        return ["control"] if on else []
    if spec.type == "FLOAT":
        return ["control"] if cag else []
    if spec.type == "COMBO":
        return ["control", "filter"] if cag else []
    return []


def input_specs(info: Mapping[str, Any]) -> List[InputSpec]:
    """Inputs of a schema in the frontend's order: required then optional, each in
    ``input_order`` (hidden inputs are not part of the graph and are left out)."""
    inputs = info.get("input", {}) or {}
    order = info.get("input_order", {}) or {}
    out: List[InputSpec] = []
    for section in ("required", "optional"):
        sec = inputs.get(section) or {}
        names = list(order.get(section) or sec.keys())
        names += [n for n in sec if n not in names]
        for n in names:
            if n in sec:
                out.append(make_input_spec(n, sec[n], section))
    return out


def widget_specs(info: Mapping[str, Any]) -> List[InputSpec]:
    """The widget inputs in the order their values appear in ``widgets_values``."""
    return [s for s in input_specs(info) if s.widget]


def expected_widget_count(info: Mapping[str, Any]) -> int:
    """Number of values the frontend saves in ``widgets_values`` for plain widgets and their
    control values (uploads and dynamic inputs: see ``widgets.map_widget_values``)."""
    return sum(1 + len(control_slots(s)) for s in widget_specs(info))


def output_types(info: Mapping[str, Any]) -> List[str]:
    """Output socket types; a choice-list output becomes ``"COMBO"``; a match-type output takes
    the allowed types of its template."""
    outs = list(info.get("output", []) or [])
    match_ids = list(info.get("output_matchtypes") or [])
    allowed: Dict[str, str] = {}
    for sec in ("required", "optional"):
        for spec in (info.get("input", {}).get(sec) or {}).values():
            t, opts = _spec_parts(spec)
            if t == MATCHTYPE:
                tpl = opts.get("template") or {}
                allowed[str(tpl.get("template_id"))] = str(tpl.get("allowed_types", "*"))
    res = []
    for i, t in enumerate(outs):
        if isinstance(t, (list, tuple)):
            res.append("COMBO")
        elif t == MATCHTYPE:
            tid = str(match_ids[i]) if i < len(match_ids) else None
            res.append(allowed.get(tid, "*") if tid is not None else "*")
        else:
            res.append(str(t))
    return res


def types_match(received: str, expected: str) -> bool:
    """Whether an output of type ``received`` may feed an input of type ``expected``.

    Backend rules (``comfy_execution.validation.validate_node_input``, non-strict) plus the
    frontend's: ``*`` and empty match anything; comma-separated types match on any overlap.
    """
    if received == expected:
        return True
    if received in ("*", "") or expected in ("*", ""):
        return True
    a = {t.strip() for t in str(received).split(",")}
    b = {t.strip() for t in str(expected).split(",")}
    if "*" in a or "*" in b:
        return True
    return bool(a & b)


__all__ = [
    "CONTROL_VALUES", "FRONTEND_ONLY_NODES", "InputSpec", "control_slots", "NOTE_NODES", "OBJECT_INFO_ENV", "ObjectInfo",
    "expected_widget_count", "find_object_info_path", "input_specs", "load_object_info", "make_input_spec", "merge_object_info", "node_info", "object_info_from_classes",
    "output_types", "repo_root", "types_match", "widget_specs",
]
