"""Which value of a node's ``widgets_values`` belongs to which input (the frontend's widget layout).

ComfyUI frontend 1.35 (shipped with ComfyUI 0.8.0) builds a node's widgets from its schema in
``input_order`` (required, then optional, then inputs missing from ``input_order``), one widget per
INT/FLOAT/STRING/BOOLEAN/COMBO input (``forceInput`` ones are sockets only), and saves one value per
widget in ``widgets_values``. Extra values that are not inputs:

- a ``control_after_generate`` value (``fixed``/``increment``/``decrement``/``randomize``) after
  an INT with ``control_after_generate`` (or, when the option is absent, an INT named ``seed`` or
  ``noise_seed``), a FLOAT or COMBO with the option; a COMBO with it also gets a filter string;
- an ``upload`` button after everything for a required combo with ``image_upload``/
  ``video_upload``/``animated_image_upload`` (saved as ``"image"``), ``audioUI`` and ``upload`` for
  audio nodes, and a 3D preview for ``Preview3D``/``SaveGLB``;
- a V3 dynamic combo (``COMFY_DYNAMICCOMBO_V3``) saves its key, then the widgets of the chosen
  option, named ``"<input>.<sub input>"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .schema import (
    InputSpec,
    control_slots,
    WIDGET_TYPES,
    input_specs,
    make_input_spec,
)

#: Widget types the frontend (or its core extensions) makes from an input type besides
#: INT/FLOAT/STRING/BOOLEAN/COMBO; their values are kept but not checked.
OTHER_WIDGET_TYPES = frozenset({
    "MARKDOWN", "COLOR", "IMAGECOMPARE", "CHART", "GALLERIA", "TEXTAREA", "IMAGEUPLOAD",
    "AUDIO_UI", "AUDIOUI", "AUDIOUPLOAD", "AUDIO_RECORD", "WEBCAM", "LOAD_3D", "PREVIEW_3D",
})
AUDIO_UI_NODES = frozenset({"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus"})
PREVIEW_3D_NODES = frozenset({"Preview3D", "SaveGLB"})
#: Display widgets that core frontend extensions add to particular nodes (saved, never sent).
NODE_EXTRA_WIDGETS = {"PreviewAny": ("preview", "preview", "previewMode")}
#: Frontend-only widgets that graphToPrompt still sends (the backend ignores them): name -> the
#: value sent when it is not the saved one (DOM widgets send "" whatever was saved).
SENT_EXTRAS = {"audioUI": "", "image": "", "preview": ""}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


@dataclass(frozen=True)
class WidgetSlot:
    """One position in ``widgets_values``: the input ``name`` it sets and its ``kind``
    (``value``; ``unordered`` for a dynamic sub-input whose position had to be guessed;
    ``control``, ``filter`` and ``extra`` for frontend-only widgets)."""

    name: str
    kind: str
    spec: Optional[InputSpec] = None


@dataclass
class WidgetMapping:
    """``widgets_values`` matched with slots.

    ``values`` maps input names to their values (what goes into an API prompt); ``slots`` pairs
    every slot with its value; ``expected``/``got`` are the counts; ``error`` says why they do not
    fit (None when they do); ``extra`` is True when there are more values than widgets (display
    widgets added by a frontend extension, or an older version of the node); ``lenient`` marks
    layouts that could only be guessed; ``sent_extras`` are frontend-only widget values that
    ``graphToPrompt`` sends anyway (ignored by the backend, kept for a faithful conversion).
    """

    values: Dict[str, Any] = field(default_factory=dict)
    slots: List[Tuple[WidgetSlot, Any]] = field(default_factory=list)
    expected: int = 0
    got: int = 0
    error: Optional[str] = None
    lenient: bool = False
    extra: bool = False
    sent_extras: Dict[str, Any] = field(default_factory=dict)


def _is_widget_type(spec: InputSpec) -> bool:
    if spec.options.get("forceInput"):
        return False
    return spec.type in WIDGET_TYPES or spec.type in OTHER_WIDGET_TYPES or spec.type == "COMFY_DYNAMICCOMBO_V3"


def _control_slots(spec: InputSpec) -> List[str]:
    return control_slots(spec)


def _dynamic_sub_specs(spec: InputSpec, key: Any, ui_names: List[str]) -> Optional[List[InputSpec]]:
    """Widget specs of the chosen option of a dynamic combo, ordered as the UI node lists them."""
    for opt in spec.options.get("options") or []:
        if opt.get("key") != key:
            continue
        subs: List[InputSpec] = []
        for sec in ("required", "optional"):
            for k, v in ((opt.get("inputs") or {}).get(sec) or {}).items():
                subs.append(make_input_spec(f"{spec.name}.{k}", v, sec))
        # the dump is key-sorted; the saved node's inputs keep the real order
        pos = {n: i for i, n in enumerate(ui_names)}
        subs.sort(key=lambda s: pos.get(s.name, len(pos)))
        return [s for s in subs if _is_widget_type(s)]
    return None


def map_widget_values(node_type: str, info: Mapping[str, Any], widgets_values: Any,
                      ui_input_names: Optional[List[str]] = None) -> WidgetMapping:
    """Match a node's ``widgets_values`` (list, or dict by name) with its schema ``info``.

    ``ui_input_names``: the names of the node's inputs as saved (used to order dynamic sub-inputs).
    """
    m = WidgetMapping()
    specs = input_specs(info)
    if isinstance(widgets_values, dict):  # some packs save widgets by name
        m.lenient = True
        for s in specs:
            if _is_widget_type(s) and s.name in widgets_values:
                m.slots.append((WidgetSlot(s.name, "value", s), widgets_values[s.name]))
                m.values[s.name] = widgets_values[s.name]
        m.expected = m.got = len(m.slots)
        return m
    vals = list(widgets_values or [])
    m.got = len(vals)
    extras: List[str] = []
    required = (info.get("input") or {}).get("required") or {}
    for s in specs:
        if s.section == "required" and s.type == "COMBO" and any(s.options.get(k) is True for k in UPLOAD_OPTIONS):
            extras = ["upload"]
            break
    if node_type in AUDIO_UI_NODES:
        extras.append("audioUI")
    audio = required.get("audio")
    if isinstance(audio, (list, tuple)) and len(audio) > 1 and isinstance(audio[1], dict) \
            and audio[1].get("audio_upload") is True:
        extras.append("upload")
    if node_type in PREVIEW_3D_NODES:
        extras.append("image")
    extras.extend(NODE_EXTRA_WIDGETS.get(node_type, ()))
    # a widget with serialize=false leaves a hole in widgets_values; at the end of the list the
    # hole is simply absent (SaveAudioMP3 saves 2 values, not 3)
    optional_tail = 1 if (extras and extras[-1] == "audioUI") else 0
    optional_tail += len(NODE_EXTRA_WIDGETS.get(node_type, ()))  # older saves lack them
    ui_order = [n for n in (ui_input_names or []) if "." in n]
    i = 0

    def take(slot: WidgetSlot) -> None:
        nonlocal i
        v = vals[i] if i < len(vals) else None
        if i < len(vals):
            m.slots.append((slot, v))
            if slot.kind in ("value", "unordered"):
                m.values[slot.name] = v
        i += 1

    for s in specs:
        if not _is_widget_type(s):
            continue
        if s.type in OTHER_WIDGET_TYPES:
            m.lenient = True
        take(WidgetSlot(s.name, "value", s))
        if s.type == "COMFY_DYNAMICCOMBO_V3":
            key = vals[i - 1] if i - 1 < len(vals) else None
            subs = _dynamic_sub_specs(s, key, list(ui_input_names or []))
            if subs is None:
                m.error = f"'{s.name}' = {key!r} is not one of its options"
                m.lenient = True
                subs = []
            # the order of sub-inputs is known only when the saved node lists them (a key-sorted
            # schema dump loses it): otherwise the values are mapped but not checked one by one
            known = all(sub.name in ui_order for sub in subs)
            if not known:
                m.lenient = True
            for sub in subs:
                take(WidgetSlot(sub.name, "value" if known else "unordered", sub))
                for kind in _control_slots(sub):
                    take(WidgetSlot(sub.name, kind, sub))
            continue
        for kind in _control_slots(s):
            take(WidgetSlot(s.name, kind, s))
    for name in extras:
        take(WidgetSlot(name, "extra", None))
        if name in SENT_EXTRAS:
            m.sent_extras[name] = SENT_EXTRAS[name]
        elif name == "previewMode":
            m.sent_extras[name] = vals[i - 1] if i - 1 < len(vals) else False  # its default
    m.expected = i
    if m.expected - optional_tail <= m.got < m.expected:
        m.expected = m.got
    m.extra = m.got > m.expected
    if m.error is None and m.expected != m.got:
        names = [sl.name + ("" if sl.kind == "value" else f"({sl.kind})") for sl, _ in m.slots]
        if m.got < m.expected:
            m.error = (f"widgets_values has {m.got} values, the schema needs {m.expected} "
                       f"(widgets in order: {', '.join(names)}, ...)")
        else:
            m.error = (f"widgets_values has {m.got} values, the schema needs {m.expected} "
                       f"(widgets in order: {', '.join(names)})")
    return m


__all__ = ["WidgetMapping", "WidgetSlot", "map_widget_values"]
