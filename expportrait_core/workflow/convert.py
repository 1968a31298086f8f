"""UI workflow → API (prompt) format, as the ComfyUI frontend's ``graphToPrompt`` does.

The frontend (1.35, shipped with ComfyUI 0.8.0, ``src/utils/executionUtil.ts``) produces for every
node that runs::

    {"<id>": {"inputs": {name: value | ["<origin id>", origin_slot]}, "class_type": TYPE,
              "_meta": {"title": TITLE}}}

Rules reproduced here:

- widget values are mapped to input names in widget order (``control_after_generate`` and other
  frontend-only widgets are not sent); list values are wrapped as ``{"__value__": [...]}``;
- a linked input becomes ``[str(origin_id), origin_slot]`` and overrides the widget value;
- virtual nodes (Note, MarkdownNote, Reroute, PrimitiveNode) are not sent; a Reroute passes its
  input through; a PrimitiveNode's value is written into the widget it feeds;
- muted nodes (mode 2) are not sent, and inputs linked to them are dropped; bypassed nodes (mode 4)
  are not sent, and a link from one takes the bypassed node's input of a matching type (the input
  with the same index first, then the first of exactly the same type, then the first compatible);
- nodes inside subgraphs get ids ``"<instance id>:<inner id>"``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ..errors import ExpPortraitError
from .schema import FRONTEND_ONLY_NODES, input_specs, output_types, types_match
from .uigraph import MODE_BYPASS, MODE_MUTED, Source, UIGraph, parse_ui_workflow
from .widgets import map_widget_values

#: What a resolved input is: a link ("link", node, slot), a value ("value", v) or nothing (None).
_Resolved = Optional[tuple]


def _slot_type(slot: Mapping[str, Any]) -> str:
    t = slot.get("type", "*")
    return "COMBO" if isinstance(t, list) else str(t if t is not None else "*")


def _bypass_index(g: UIGraph, node_id: str, out_slot: int, want: str, object_info: Mapping[str, Any]) -> int:
    """The frontend's ``#getBypassSlotIndex``: which input a bypassed node passes to ``out_slot``."""
    node = g.nodes[node_id]
    inputs = node.inputs
    info = object_info.get(node.type)
    outs = output_types(info) if info else [_slot_type(o) for o in node.outputs]
    out_type = outs[out_slot] if out_slot < len(outs) else "*"
    if want in ("*", ""):
        return out_slot if len(inputs) > out_slot else 0
    if out_slot < len(inputs):
        t = _slot_type(inputs[out_slot])
        if types_match(t, out_type) and types_match(t, want):
            return out_slot
    for i, inp in enumerate(inputs):
        if _slot_type(inp) == want:
            return i
    for i, inp in enumerate(inputs):
        t = _slot_type(inp)
        if types_match(t, out_type) and types_match(t, want):
            return i
    return -1


def resolve_source(g: UIGraph, src: Optional[Source], want: str, object_info: Mapping[str, Any]) -> _Resolved:
    """Follow a link back through Reroutes, bypassed nodes and PrimitiveNodes (``want``: the type
    of the input being fed, used to pick a bypassed node's matching input)."""
    seen = set()
    while src is not None:
        if src.node is None:
            return ("value", src.value)
        key = (src.node, src.slot)
        if key in seen:
            raise ExpPortraitError(f"circular link through node {src.node}")
        seen.add(key)
        node = g.nodes[src.node]
        if node.type == "PrimitiveNode":
            vals = node.widgets_values if isinstance(node.widgets_values, list) else []
            return ("value", vals[0]) if vals else None
        if node.type in FRONTEND_ONLY_NODES and node.type != "Reroute":
            return None
        if node.mode == MODE_BYPASS:
            idx = _bypass_index(g, node.id, src.slot, want, object_info)
            if idx < 0:
                return None
            src = g.sources.get((node.id, idx))
            continue
        if node.type == "Reroute":
            src = g.sources.get((node.id, src.slot))
            continue
        return ("link", node.id, src.slot)
    return None


def graph_to_prompt(g: UIGraph, object_info: Mapping[str, Any], strict: bool = True) -> Dict[str, Dict[str, Any]]:
    """Convert a parsed UI graph (see :func:`ui_to_api`). With ``strict=False`` nodes whose type
    or widgets do not fit the schema are converted as well as possible instead of raising."""
    out: Dict[str, Dict[str, Any]] = {}
    for nid, node in g.nodes.items():
        if node.type in FRONTEND_ONLY_NODES or node.mode in (MODE_MUTED, MODE_BYPASS):
            continue
        info = object_info.get(node.type)
        if info is None:
            if strict:
                raise ExpPortraitError(f"node {nid}: node type '{node.type}' is not known; install the "
                                       "pack that provides it (or check the name)")
            out[nid] = {"inputs": {}, "class_type": node.type, "_meta": {"title": node.title or node.type}}
            continue
        names = [str(i.get("name")) for i in node.inputs]
        wm = map_widget_values(node.type, info, node.widgets_values, names)
        if wm.error is not None and strict and not (wm.lenient or wm.extra):
            raise ExpPortraitError(f"node {nid} ({node.type}): {wm.error}; run validate-workflow on it")
        inputs: Dict[str, Any] = {}
        for name, v in wm.values.items():
            inputs[name] = {"__value__": v} if isinstance(v, list) else v
        inputs.update(wm.sent_extras)
        for spec in input_specs(info):  # values missing at the end: the frontend keeps defaults
            if spec.widget and spec.name not in inputs and "default" in spec.options:
                inputs[spec.name] = spec.options["default"]
        for slot, inp in enumerate(node.inputs):
            src = g.sources.get((nid, slot))
            if src is None:
                continue
            r = resolve_source(g, src, _slot_type(inp), object_info)
            name = str(inp.get("name"))
            if r is None:
                # the frontend keeps a link to a node it does not send, then drops it below
                continue
            if r[0] == "value":
                inputs[name] = {"__value__": r[1]} if isinstance(r[1], list) else r[1]
            else:
                inputs[name] = [str(r[1]), int(r[2])]
        out[nid] = {"inputs": inputs, "class_type": node.type,
                    "_meta": {"title": node.title or info.get("display_name") or node.type}}
    for entry in out.values():  # inputs linked to nodes that are not sent
        for k in [k for k, v in entry["inputs"].items()
                  if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in out]:
            del entry["inputs"][k]
    return out


def ui_to_api(ui_json: Mapping[str, Any], object_info: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Convert a UI-format workflow to the API (prompt) format ComfyUI's ``/prompt`` accepts.

    Raises ExpPortraitError for unknown node types or widget values that do not fit the schema
    (run :func:`validate_workflow` for the full list of problems).
    """
    return graph_to_prompt(parse_ui_workflow(dict(ui_json)), object_info, strict=True)


__all__ = ["graph_to_prompt", "resolve_source", "ui_to_api"]
