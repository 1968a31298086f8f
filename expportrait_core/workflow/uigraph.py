"""Reading a UI-format workflow (what the ComfyUI frontend saves) into a flat graph.

The UI format (``version`` 0.4)::

    {"nodes": [{"id": 3, "type": "KSampler", "mode": 0, "inputs": [{"name", "type", "link",
                "widget"?}], "outputs": [{"name", "type", "links"}], "widgets_values": [...],
                "title"?}],
     "links": [[link_id, from_node, from_slot, to_node, to_slot, "TYPE"], ...],
     "groups": [{"title", "bounding": [x, y, w, h]}],
     "definitions": {"subgraphs": [{"id": uuid, "nodes": [...], "links": [{...}],
                                     "inputs": [...], "outputs": [...]}]},
     "version": 0.4}

Version 1 of the schema stores links as objects ``{"id", "origin_id", "origin_slot", "target_id",
"target_slot", "type"}``; both are read. Subgraph instances (a node whose ``type`` is a subgraph
definition id) are flattened the way the frontend does for execution: inner nodes get the id
``"<instance id>:<inner id>"`` and the links that cross the subgraph boundary (inner origin ``-10``
= the subgraph's input node, inner target ``-20`` = its output node) are joined up.

Reroute nodes, bypassed and muted nodes and PrimitiveNodes are kept as they are here: the
validator and the converter apply their own rules to them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ExpPortraitError

#: Node modes of LiteGraph: 0 always, 1 on event, 2 never (muted), 4 bypass.
MODE_ALWAYS, MODE_ON_EVENT, MODE_MUTED, MODE_BYPASS = 0, 1, 2, 4
SUBGRAPH_INPUT_NODE = -10
SUBGRAPH_OUTPUT_NODE = -20


@dataclass
class UINode:
    """One (flattened) node of a UI workflow. ``id`` is a string (``"7"`` or ``"7:3"``)."""

    id: str
    type: str
    mode: int
    inputs: List[Dict[str, Any]]
    outputs: List[Dict[str, Any]]
    widgets_values: Any
    title: Optional[str]
    raw: Dict[str, Any]

    def input_index(self, name: str) -> Optional[int]:
        for i, inp in enumerate(self.inputs):
            if inp.get("name") == name:
                return i
        return None


@dataclass(frozen=True)
class Source:
    """What feeds a node input: output ``slot`` of node ``node`` via UI link ``link_id``
    (``type`` is the type stored on the link). ``node`` is None when the input takes ``value``,
    a widget value promoted to an (unconnected) input of the subgraph that holds the node."""

    node: Optional[str]
    slot: int
    link_id: Any
    type: Any
    value: Any = None


@dataclass
class LinkIssue:
    """A structural problem found while reading links (a node or slot that is not there)."""

    node_id: Optional[str]
    message: str
    rule: str = "bad_link"
    severity: str = "error"


@dataclass
class UIGraph:
    """A UI workflow flattened: real nodes (subgraph instances removed) and what feeds each input.

    ``sources[(node_id, input_slot)]`` is the :class:`Source` that feeds it, already joined across
    subgraph boundaries (but not through Reroutes or bypassed nodes).
    """

    nodes: Dict[str, UINode] = field(default_factory=dict)
    sources: Dict[Tuple[str, int], Source] = field(default_factory=dict)
    issues: List[LinkIssue] = field(default_factory=list)
    subgraph_ids: Tuple[str, ...] = ()
    groups: List[Dict[str, Any]] = field(default_factory=list)

    def consumers(self, node_id: str) -> List[Tuple[str, int, Source]]:
        """``(target node, target input slot, source)`` for every input fed by ``node_id``."""
        return [(t, s, src) for (t, s), src in self.sources.items() if src.node == node_id]


def _link_tuple(link: Any) -> Optional[Tuple[Any, Any, int, Any, int, Any]]:
    """(id, origin, origin_slot, target, target_slot, type) from a list or object link."""
    if isinstance(link, (list, tuple)) and len(link) >= 5:
        t = link[5] if len(link) > 5 else None
        return link[0], link[1], int(link[2]), link[3], int(link[4]), t
    if isinstance(link, dict) and {"id", "origin_id", "origin_slot", "target_id", "target_slot"} <= set(link):
        return (link["id"], link["origin_id"], int(link["origin_slot"]), link["target_id"],
                int(link["target_slot"]), link.get("type"))
    return None


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def is_api_prompt(data: Any) -> bool:
    return (isinstance(data, dict) and bool(data) and not is_ui_workflow(data)
            and all(isinstance(v, dict) and "class_type" in v for v in data.values()))


def parse_ui_workflow(ui: Dict[str, Any]) -> UIGraph:
    """Flatten a UI workflow (see module doc). Raises ExpPortraitError when it is not one."""
    if not is_ui_workflow(ui):
        if is_api_prompt(ui):
            raise ExpPortraitError("this file is an API-format prompt, not a UI workflow (no 'nodes' list).")
        raise ExpPortraitError("not a ComfyUI UI workflow: expected a JSON object with a 'nodes' list.")
    defs = {}
    for sg in ((ui.get("definitions") or {}).get("subgraphs") or []):
        if isinstance(sg, dict) and "id" in sg:
            defs[str(sg["id"])] = sg
    g = UIGraph(subgraph_ids=tuple(defs), groups=list(ui.get("groups") or []))
    # feeds: target endpoint -> (origin endpoint, link id, type)
    #   target endpoints: ("node", key, slot) real input; ("inst", key, slot) subgraph instance
    #   input; ("out", inst_key, slot) subgraph output inside instance inst_key.
    #   origin endpoints: ("node", key, slot); ("sgin", inst_key, slot); ("instout", key, slot).
    feeds: Dict[Tuple[str, str, int], Tuple[Tuple[str, str, int], Any, Any]] = {}
    instances: Dict[str, Dict[str, Any]] = {}  # every raw node by flat key (instances included)

    def walk(scope: Dict[str, Any], prefix: str, inst_key: Optional[str], depth: int, outer_mode: int) -> None:
        if depth > 16:
            g.issues.append(LinkIssue(inst_key, "subgraphs nested more than 16 deep (recursive definition?)",
                                      "bad_subgraph"))
            return
        local: Dict[str, Dict[str, Any]] = {}
        for n in scope.get("nodes") or []:
            if not isinstance(n, dict) or "id" not in n:
                g.issues.append(LinkIssue(None, f"a node entry without an id in scope '{prefix or 'root'}'",
                                          "bad_format"))
                continue
            key = f"{prefix}{n['id']}"
            if str(n["id"]) in local:
                g.issues.append(LinkIssue(key, f"duplicate node id {n['id']}", "bad_format"))
                continue
            local[str(n["id"])] = n
            instances[key] = n
            ntype = str(n.get("type", ""))
            mode = int(n.get("mode", 0) or 0)
            # a muted/bypassed subgraph instance mutes/bypasses what is inside it
            mode = outer_mode if outer_mode in (MODE_MUTED, MODE_BYPASS) and mode in (0, 1) else mode
            if ntype in defs:
                walk(defs[ntype], f"{key}:", key, depth + 1, mode)
                continue
            g.nodes[key] = UINode(
                id=key, type=ntype, mode=mode,
                inputs=list(n.get("inputs") or []), outputs=list(n.get("outputs") or []),
                widgets_values=n.get("widgets_values", []), title=n.get("title"), raw=n)
        for raw in scope.get("links") or []:
            lk = _link_tuple(raw)
            if lk is None:
                g.issues.append(LinkIssue(None, f"malformed link entry {raw!r}", "bad_format"))
                continue
            lid, o, oslot, t, tslot, ltype = lk
            if o == SUBGRAPH_INPUT_NODE and inst_key is not None:
                origin = ("sgin", inst_key, oslot)
            elif str(o) in local:
                ok = f"{prefix}{o}"
                origin = ("instout" if str(local[str(o)].get("type")) in defs else "node", ok, oslot)
                outs = local[str(o)].get("outputs") or []
                if origin[0] == "node" and oslot >= len(outs):
                    g.issues.append(LinkIssue(ok, f"link {lid} leaves output slot {oslot} but the node "
                                                  f"has {len(outs)} outputs"))
            else:
                g.issues.append(LinkIssue(None, f"link {lid} starts at node {o}, which does not exist"))
                continue
            if t == SUBGRAPH_OUTPUT_NODE and inst_key is not None:
                outs_def = scope.get("outputs") or []
                ids = outs_def[tslot].get("linkIds") if tslot < len(outs_def) else None
                if isinstance(ids, list) and lid not in ids:
                    g.issues.append(LinkIssue(inst_key, f"stale link {lid} to subgraph output {tslot} "
                                                        "(not in its linkIds) ignored", severity="warning"))
                    continue
                target = ("out", inst_key, tslot)
            elif str(t) in local:
                tk = f"{prefix}{t}"
                tnode = local[str(t)]
                is_inst = str(tnode.get("type")) in defs
                ins = tnode.get("inputs") or []
                if tslot >= len(ins):
                    g.issues.append(LinkIssue(tk, f"link {lid} enters input slot {tslot} but the node "
                                                  f"has {len(ins)} inputs"))
                    continue
                if ins[tslot].get("link") != lid:
                    # the input's own record wins, as when the frontend loads the graph
                    g.issues.append(LinkIssue(
                        tk, f"stale link {lid} to input '{ins[tslot].get('name')}' (slot {tslot}) ignored: "
                            f"that input records link {ins[tslot].get('link')}", severity="warning"))
                    continue
                slot = tslot
                if is_inst:  # saved instance inputs may be compressed: match the subgraph input by name
                    names = [str(x.get("name")) for x in defs[str(tnode.get("type"))].get("inputs") or []]
                    if str(ins[tslot].get("name")) in names:
                        slot = names.index(str(ins[tslot].get("name")))
                target = ("inst" if is_inst else "node", tk, slot)
            else:
                g.issues.append(LinkIssue(None, f"link {lid} ends at node {t}, which does not exist"))
                continue
            if target in feeds:
                what = "subgraph output" if target[0] == "out" else "input slot"
                if feeds[target][0] == origin:  # the same connection saved twice
                    g.issues.append(LinkIssue(target[1], f"{what} {tslot} has a duplicate link ({lid} repeats "
                                                         f"{feeds[target][1]})", severity="warning"))
                    continue
                g.issues.append(LinkIssue(target[1], f"{what} {tslot} is fed by two links "
                                                     f"({feeds[target][1]} and {lid}) from different outputs"))
            feeds[target] = (origin, lid, ltype)
        # inputs that name a link which is not in the links list
        known = {(_link_tuple(x) or (None,))[0] for x in scope.get("links") or []}
        for nid, n in local.items():
            for i, inp in enumerate(n.get("inputs") or []):
                if isinstance(inp, dict) and inp.get("link") is not None and inp["link"] not in known:
                    g.issues.append(LinkIssue(f"{prefix}{nid}", f"input '{inp.get('name')}' (slot {i}) "
                                                                f"refers to link {inp['link']}, which is not in 'links'"))

    walk(ui, "", None, 0, MODE_ALWAYS)

    def promoted_value(inst_key: str, slot: int) -> Optional[Source]:
        """Value of an unconnected subgraph input shown as a widget on the instance. Saved
        instances keep one value per entry of ``properties.proxyWidgets`` (``["-1", input name]``
        for a subgraph input); without that list, values follow the subgraph inputs that feed
        widgets. When neither fits, None: the inner widget's own value stands."""
        inst = instances.get(inst_key) or {}
        sg = defs.get(str(inst.get("type")))
        if sg is None:
            return None
        linked = {str(x.get("name")) for x in inst.get("inputs") or [] if x.get("link") is not None}
        inner_targets = {}
        for raw in sg.get("links") or []:
            lk = _link_tuple(raw)
            if lk and lk[1] == SUBGRAPH_INPUT_NODE:
                inner_targets.setdefault(lk[2], []).append(lk)
        widget_inputs = []
        inner_nodes = {str(n.get("id")): n for n in sg.get("nodes") or [] if isinstance(n, dict)}
        for k, sin in enumerate(sg.get("inputs") or []):
            if str(sin.get("name")) in linked:
                continue
            for lk in inner_targets.get(k, []):
                tn = inner_nodes.get(str(lk[3])) or {}
                tins = tn.get("inputs") or []
                if lk[4] < len(tins) and tins[lk[4]].get("widget"):
                    widget_inputs.append(k)
                    break
        vals = inst.get("widgets_values")
        if not isinstance(vals, list) or slot not in widget_inputs:
            return None
        sin_name = str((sg.get("inputs") or [])[slot].get("name"))
        proxies = (inst.get("properties") or {}).get("proxyWidgets")
        if isinstance(proxies, list):
            # one saved value per proxy widget; ["-1", name] is the subgraph input `name`
            for j, p in enumerate(proxies):
                if isinstance(p, list) and len(p) == 2 and str(p[0]) == "-1" and str(p[1]) == sin_name:
                    return Source(None, -1, None, None, value=vals[j]) if j < len(vals) else None
            return None
        if len(vals) != len(widget_inputs):
            return None
        return Source(None, -1, None, None, value=vals[widget_inputs.index(slot)])

    def resolve(origin: Tuple[str, str, int], lid: Any, ltype: Any) -> Optional[Source]:
        seen = set()
        while origin[0] != "node":
            if origin in seen:
                return None
            seen.add(origin)
            kind, key, slot = origin
            nxt = feeds.get(("inst", key, slot)) if kind == "sgin" else feeds.get(("out", key, slot))
            if nxt is None:  # subgraph input/output left unconnected
                return promoted_value(key, slot) if kind == "sgin" else None
            origin, lid, ltype = nxt
        return Source(origin[1], origin[2], lid, ltype)

    for (kind, key, slot), (origin, lid, ltype) in feeds.items():
        if kind != "node":
            continue
        src = resolve(origin, lid, ltype)
        if src is not None:
            g.sources[(key, slot)] = src
    return g


__all__ = ["LinkIssue", "MODE_ALWAYS", "MODE_BYPASS", "MODE_MUTED", "MODE_ON_EVENT", "Source", "UIGraph",
           "UINode", "is_api_prompt", "is_ui_workflow", "parse_ui_workflow"]
