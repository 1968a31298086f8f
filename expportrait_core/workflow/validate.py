"""Checking a UI-format workflow (or an API prompt) against node schemas, without running it.

:func:`validate_workflow` applies the rules below and returns a list of :class:`Problem` (empty
when the workflow is fine). Each problem names the node id, node type, input and rule:

=========================  =======================================================================
rule                       meaning
=========================  =======================================================================
``bad_format``             not a UI workflow, malformed node/link entries, duplicate ids
``unknown_node_type``      the node type is in no schema (warning on muted/bypassed nodes)
``bad_link``               a link names a node/slot that is not there, or disagrees with the node
``unknown_input``          a linked input that the node's schema does not have
``link_type_mismatch``     a link joins an output and an input whose types do not match
``primitive_target``       a PrimitiveNode feeds something that is not a widget input
``widget_count``           ``widgets_values`` has the wrong number of values for the schema
``value_type``             a widget value of the wrong type (INT, FLOAT, BOOLEAN, STRING, COMBO)
``value_range``            an INT/FLOAT value outside the input's ``min``/``max``
``value_not_in_list``      a combo value that is not one of its choices (file lists are skipped)
``control_value``          a ``control_after_generate`` value that the frontend does not know
``required_input_missing`` a required input with no link and no widget value (after muting,
                           bypassing and Reroutes are applied, as when the graph is queued)
``bad_group``              a group without a title/bounding box (warning)
=========================  =======================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Dict, List, Mapping, Optional

from ..errors import ExpPortraitError
from .schema import (
    CONTROL_VALUES,
    FILE_EXTENSIONS,
    FRONTEND_ONLY_NODES,
    NOTE_NODES,
    InputSpec,
    input_specs,
    make_input_spec,
    output_types,
    types_match,
)
from .uigraph import (
    MODE_BYPASS,
    MODE_MUTED,
    UIGraph,
    UINode,
    is_api_prompt,
    parse_ui_workflow,
)
from .widgets import map_widget_values

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow. ``severity`` is ``"error"`` or ``"warning"``."""

    node_id: Optional[str]
    node_type: Optional[str]
    input: Optional[str]
    rule: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        where = "workflow" if self.node_id is None else f"node {self.node_id}"
        if self.node_type:
            where += f" ({self.node_type})"
        if self.input:
            where += f" input '{self.input}'"
        return f"{self.severity}: {where}: [{self.rule}] {self.message}"


def errors_only(problems: List[Problem]) -> List[Problem]:
    """The problems of severity ``error``."""
    return [p for p in problems if p.severity == ERROR]


# ----------------------------------------------------------------------------------------------
# value checks


def looks_like_file(value: Any) -> bool:
    """A combo value naming a file (``ae.safetensors``, ``sub/clip.png``): it comes from a folder
    listing that the schema dump cannot know, so it is not checked against the dump's choices."""
    return isinstance(value, str) and PurePath(value.replace("\\", "/")).suffix.lower() in FILE_EXTENSIONS


def check_value(spec: InputSpec, value: Any) -> Optional[tuple]:
    """``(rule, message)`` if ``value`` does not fit widget ``spec``; None if it does."""
    t = spec.type
    o = spec.options
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    if t == "INT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not value.is_integer()):
            return "value_type", f"{value!r} is not an integer"
    elif t == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not math.isfinite(value)):
            return "value_type", f"{value!r} is not a number"
    elif t == "BOOLEAN":
        if not isinstance(value, bool):
            return "value_type", f"{value!r} is not a boolean"
    elif t == "STRING":
        if not isinstance(value, str):
            return "value_type", f"{value!r} is not a string"
    elif t == "COMBO":
        if o.get("multiselect"):
            return None
        if spec.file_list or looks_like_file(value):
            if value is not None and not isinstance(value, str):
                return "value_type", f"{value!r} is not a file name"
            return None
        if spec.choices is not None and value not in spec.choices:
            shown = spec.choices if len(spec.choices) <= 12 else spec.choices[:12] + ["..."]
            return "value_not_in_list", f"{value!r} is not one of {shown}"
        return None
    else:
        return None
    if t in ("INT", "FLOAT"):
        lo, hi = o.get("min"), o.get("max")
        if lo is not None and value < lo:
            return "value_range", f"{value} is below the minimum {lo}"
        if hi is not None and value > hi:
            return "value_range", f"{value} is above the maximum {hi}"
    return None


# ----------------------------------------------------------------------------------------------
# schema look-ups


def lookup_input(info: Mapping[str, Any], name: str, selected: Optional[Mapping[str, Any]] = None
                 ) -> Optional[InputSpec]:
    """The spec of input ``name`` of a schema, including V3 dynamic sub-inputs ``group.sub``
    (autogrow slots and the inputs of a dynamic combo's options; ``selected`` holds widget values
    to pick the chosen option)."""
    specs = {s.name: s for s in input_specs(info)}
    if name in specs:
        return specs[name]
    if "." not in name:
        return None
    group, sub = name.split(".", 1)
    g = specs.get(group)
    if g is None:
        return None
    if g.type == "COMFY_AUTOGROW_V3":
        tpl = g.options.get("template") or {}
        tin = tpl.get("input") or {}
        cands = [(k, v) for sec in ("required", "optional") for k, v in (tin.get(sec) or {}).items()]
        if len(cands) == 1:
            return make_input_spec(name, cands[0][1], "optional")
        for k, v in cands:
            if sub.startswith(k):
                return make_input_spec(name, v, "optional")
        return None
    if g.type == "COMFY_DYNAMICCOMBO_V3":
        key = (selected or {}).get(group)
        opts = g.options.get("options") or []
        opts = sorted(opts, key=lambda o: o.get("key") != key)  # chosen option first
        for opt in opts:
            for sec in ("required", "optional"):
                v = ((opt.get("inputs") or {}).get(sec) or {}).get(sub)
                if v is not None:
                    return make_input_spec(name, v, sec)
    return None


def _input_type(node: UINode, slot: int, info: Optional[Mapping[str, Any]],
                selected: Optional[Mapping[str, Any]]) -> Optional[str]:
    inp = node.inputs[slot] if slot < len(node.inputs) else {}
    if info is not None:
        spec = lookup_input(info, str(inp.get("name")), selected)
        if spec is not None:
            return spec.type
    t = inp.get("type")
    return None if t is None else ("COMBO" if isinstance(t, list) else str(t))


def _output_type(node: UINode, slot: int, info: Optional[Mapping[str, Any]]) -> Optional[str]:
    if info is not None:
        outs = output_types(info)
        if slot < len(outs):
            return outs[slot]
        return None
    out = node.outputs[slot] if slot < len(node.outputs) else {}
    t = out.get("type")
    return None if t is None else ("COMBO" if isinstance(t, list) else str(t))


# ----------------------------------------------------------------------------------------------


def validate_workflow(ui_json: Mapping[str, Any], object_info: Mapping[str, Any]) -> List[Problem]:
    """Check a UI-format workflow against ``object_info`` (see the module doc for the rules).

    Returns all problems found (errors and warnings); an empty list means the workflow is valid.
    """
    problems: List[Problem] = []

    def add(node: Optional[UINode], inp: Optional[str], rule: str, msg: str, sev: str = ERROR,
            node_id: Optional[str] = None) -> None:
        problems.append(Problem(node.id if node else node_id, node.type if node else None, inp, rule, msg, sev))

    if is_api_prompt(ui_json):
        return [Problem(None, None, None, "bad_format",
                        "this is an API-format prompt, not a UI workflow; use validate_api_prompt")]
    try:
        g: UIGraph = parse_ui_workflow(dict(ui_json))
    except ExpPortraitError as e:
        return [Problem(None, None, None, "bad_format", str(e))]
    version = ui_json.get("version")
    if version is not None and version not in (0.4, 1):
        add(None, None, "bad_format", f"unknown workflow version {version!r} (expected 0.4 or 1)", WARNING)
    for issue in g.issues:
        n = g.nodes.get(issue.node_id) if issue.node_id else None
        add(n, None, issue.rule, issue.message, issue.severity, node_id=issue.node_id)
    for k, grp in enumerate(g.groups):
        b = grp.get("bounding") if isinstance(grp, dict) else None
        if not isinstance(b, list) or len(b) != 4 or not all(isinstance(x, (int, float)) for x in b):
            add(None, None, "bad_group", f"group {k} ({(grp or {}).get('title')!r}) has no [x, y, w, h] "
                                         "bounding box", WARNING)

    infos: Dict[str, Optional[Mapping[str, Any]]] = {}
    selected: Dict[str, Dict[str, Any]] = {}
    count_errors: set = set()
    for nid, node in g.nodes.items():
        info = object_info.get(node.type)
        infos[nid] = info
        inactive = node.mode in (MODE_MUTED, MODE_BYPASS)
        if node.type in FRONTEND_ONLY_NODES:
            continue
        if info is None:
            if node.type.startswith("workflow>") or node.type.startswith("workflow/"):
                msg = (f"'{node.type}' is a legacy group node; convert it to a subgraph in the frontend "
                       "(right click > Convert to subgraph) so it can be checked")
            else:
                msg = f"node type '{node.type}' is not known (missing custom node pack or renamed node)"
            add(node, None, "unknown_node_type", msg, WARNING if inactive else ERROR)
            continue
        names = [str(i.get("name")) for i in node.inputs]
        wm = map_widget_values(node.type, info, node.widgets_values, names)
        selected[nid] = wm.values
        if wm.error is not None and not inactive:
            add(node, None, "widget_count", wm.error, WARNING if (wm.lenient or wm.extra) else ERROR)
            count_errors.add(nid)
        if inactive:
            continue
        linked = {str(node.inputs[s].get("name")) for (t, s) in g.sources if t == nid and s < len(node.inputs)}
        if wm.error is None or wm.extra:
            for slot, value in wm.slots:
                if slot.kind == "control":
                    if value not in CONTROL_VALUES and not (value == "increment-wrap" and slot.spec
                                                            and slot.spec.type == "COMBO"):
                        add(node, slot.name, "control_value",
                            f"control_after_generate value {value!r} is not one of {list(CONTROL_VALUES)}")
                elif slot.kind == "value" and slot.spec is not None and slot.name not in linked:
                    bad = check_value(slot.spec, value)
                    if bad:
                        add(node, slot.name, bad[0], bad[1])

    # links: types (through Reroutes), unknown inputs, PrimitiveNode targets
    for (tid, tslot), src in g.sources.items():
        if src.node is None:  # a value promoted to a subgraph input
            continue
        tnode = g.nodes[tid]
        if tnode.type in NOTE_NODES:
            continue
        tname = str(tnode.inputs[tslot].get("name")) if tslot < len(tnode.inputs) else f"#{tslot}"
        tinfo = infos.get(tid)
        if tnode.type == "Reroute" or (tinfo is None and tnode.type not in FRONTEND_ONLY_NODES):
            continue
        if tinfo is not None and lookup_input(tinfo, tname, selected.get(tid)) is None:
            add(tnode, tname, "unknown_input", f"the schema of '{tnode.type}' has no input '{tname}'")
            continue
        # follow Reroutes back to the real origin
        origin, seen = src, set()
        while origin is not None and origin.node is not None and g.nodes[origin.node].type == "Reroute" \
                and origin.node not in seen:
            seen.add(origin.node)
            origin = g.sources.get((origin.node, 0))
        if origin is None or origin.node is None:
            continue  # an unconnected Reroute: caught as a missing input if it matters
        onode = g.nodes[origin.node]
        if onode.type == "PrimitiveNode":
            spec = lookup_input(tinfo, tname, selected.get(tid)) if tinfo else None
            if spec is None or not spec.widget:
                add(tnode, tname, "primitive_target",
                    f"PrimitiveNode {onode.id} feeds '{tname}', which is not a widget input")
                continue
            vals = onode.widgets_values if isinstance(onode.widgets_values, list) else []
            if not vals:
                add(onode, None, "widget_count", "PrimitiveNode has no value")
            elif tnode.mode not in (MODE_MUTED, MODE_BYPASS):
                bad = check_value(spec, vals[0])
                if bad:
                    add(tnode, tname, bad[0], f"{bad[1]} (value of PrimitiveNode {onode.id})")
            continue
        if onode.type in FRONTEND_ONLY_NODES:
            add(tnode, tname, "bad_link", f"fed by a '{onode.type}' node, which has no outputs")
            continue
        otype = _output_type(onode, origin.slot, infos.get(origin.node))
        if otype is None:
            if infos.get(origin.node) is not None:
                add(tnode, tname, "bad_link", f"fed by output {origin.slot} of node {onode.id} "
                                              f"({onode.type}), which has no such output")
            continue
        itype = _input_type(tnode, tslot, tinfo, selected.get(tid))
        if itype is not None and not types_match(otype, itype):
            add(tnode, tname, "link_type_mismatch",
                f"fed by {otype} (node {onode.id} {onode.type} output {origin.slot}) but expects {itype}")

    # required inputs, on the graph as it would be queued
    from .convert import graph_to_prompt  # local: convert imports this module's helpers

    try:
        prompt = graph_to_prompt(g, object_info, strict=False)
    except ExpPortraitError as e:
        add(None, None, "bad_format", f"cannot convert to a prompt: {e}")
        return problems
    for nid, entry in prompt.items():
        info = object_info.get(entry["class_type"])
        if info is None:
            continue
        node = g.nodes.get(nid)
        for spec in input_specs(info):
            if spec.widget and nid in count_errors:
                continue  # already reported as a widget_count problem
            if spec.required and not spec.dynamic and spec.name not in entry["inputs"]:
                why = "not connected"
                idx = node.input_index(spec.name) if node else None
                if node is not None and idx is not None and (nid, idx) in g.sources:
                    why = "its link comes from a muted node, an unconnected Reroute or a bypassed node " \
                          "with no input of that type"
                add(node, spec.name, "required_input_missing", f"required {spec.type} input is {why}",
                    node_id=nid)
    return problems


def validate_api_prompt(prompt: Mapping[str, Any], object_info: Mapping[str, Any]) -> List[Problem]:
    """Check an API-format prompt as ComfyUI's ``validate_prompt`` would (class types exist, links
    point at existing outputs of matching type, required inputs present, values fit, at least one
    output node)."""
    problems: List[Problem] = []
    if not isinstance(prompt, Mapping) or not prompt:
        return [Problem(None, None, None, "bad_format", "an API prompt is a non-empty object of nodes")]
    has_output = False
    for nid, entry in prompt.items():
        if not isinstance(entry, Mapping) or "class_type" not in entry:
            problems.append(Problem(str(nid), None, None, "bad_format", "node entry has no class_type"))
            continue
        ctype = entry["class_type"]
        info = object_info.get(ctype)
        if info is None:
            problems.append(Problem(str(nid), ctype, None, "unknown_node_type", f"node type '{ctype}' is not known"))
            continue
        has_output |= bool(info.get("output_node"))
        inputs = entry.get("inputs") or {}
        for spec in input_specs(info):
            if spec.name not in inputs:
                if spec.required and not spec.dynamic:
                    problems.append(Problem(str(nid), ctype, spec.name, "required_input_missing",
                                            f"required {spec.type} input is missing"))
                continue
            v = inputs[spec.name]
            if isinstance(v, list):
                if len(v) != 2 or not isinstance(v[0], str) or not isinstance(v[1], int):
                    problems.append(Problem(str(nid), ctype, spec.name, "bad_link",
                                            f"{v!r}: a link is [\"node_id\" (a string), output_index]; wrap "
                                            "list values as {\"__value__\": [...]}"))
                    continue
                src = prompt.get(v[0])
                if src is None or object_info.get(src.get("class_type")) is None:
                    problems.append(Problem(str(nid), ctype, spec.name, "bad_link",
                                            f"links to node {v[0]}, which is missing or unknown"))
                    continue
                outs = output_types(object_info[src["class_type"]])
                if v[1] >= len(outs):
                    problems.append(Problem(str(nid), ctype, spec.name, "bad_link",
                                            f"links to output {v[1]} of node {v[0]}, which has {len(outs)}"))
                elif not types_match(outs[v[1]], spec.type):
                    problems.append(Problem(str(nid), ctype, spec.name, "link_type_mismatch",
                                            f"fed by {outs[v[1]]} but expects {spec.type}"))
            elif spec.widget:
                bad = check_value(spec, v)
                if bad:
                    problems.append(Problem(str(nid), ctype, spec.name, bad[0], bad[1]))
    if not problems and not has_output:
        problems.append(Problem(None, None, None, "no_output", "the prompt has no output node"))
    return problems


__all__ = ["ERROR", "Problem", "WARNING", "check_value", "errors_only", "lookup_input",
           "validate_api_prompt", "validate_workflow"]
