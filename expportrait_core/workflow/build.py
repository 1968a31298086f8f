"""Writing UI-format workflows from Python, consistent with node schemas by construction.

``WorkflowBuilder`` lays nodes out the way the frontend would save them (``version`` 0.4):
socket inputs in schema order, widget values (with ``control_after_generate`` and upload values
where the frontend adds them) from the schema defaults overridden by what you pass, links as
``[id, from, from_slot, to, to_slot, type]``, groups around nodes, Note/MarkdownNote nodes::

    b = WorkflowBuilder(object_info)
    img = b.add("EmptyImage", {"width": 64, "height": 64})
    save = b.add("SaveImage", {"filename_prefix": "demo"})
    b.link(img, "IMAGE", save, "images")
    b.group("Output", [img, save])
    ui = b.to_json()
"""
from __future__ import annotations

import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..errors import ExpPortraitError
from .schema import input_specs, output_types
from .widgets import AUDIO_UI_NODES, NODE_EXTRA_WIDGETS, PREVIEW_3D_NODES, UPLOAD_OPTIONS, _control_slots, _is_widget_type

NODE_WIDTH = 320.0


class WorkflowBuilder:
    """Build a UI workflow node by node (see module doc). Node and link ids start at 1."""

    def __init__(self, object_info: Mapping[str, Any]) -> None:
        self.object_info = object_info
        self.nodes: List[Dict[str, Any]] = []
        self.links: List[List[Any]] = []
        self.groups: List[Dict[str, Any]] = []
        self._next_node = 1
        self._next_link = 1
        self._by_id: Dict[int, Dict[str, Any]] = {}

    # -- nodes -------------------------------------------------------------------------------
    def add(self, node_type: str, values: Optional[Mapping[str, Any]] = None, *, title: Optional[str] = None,
            pos: Optional[Sequence[float]] = None, mode: int = 0, node_id: Optional[int] = None,
            control: str = "fixed") -> int:
        """Add a node of ``node_type`` with widget ``values`` (by input name; others take the
        schema default). ``control`` is the ``control_after_generate`` value for seed widgets."""
        info = self.object_info.get(node_type)
        if info is None:
            raise ExpPortraitError(f"unknown node type '{node_type}'")
        values = dict(values or {})
        specs = input_specs(info)
        inputs: List[Dict[str, Any]] = []
        wv: List[Any] = []
        for s in specs:
            if _is_widget_type(s):
                if s.name in values:
                    v = values.pop(s.name)
                elif "default" in s.options:
                    v = s.options["default"]
                elif s.choices:
                    v = s.choices[0]
                elif s.type == "INT" or s.type == "FLOAT":
                    v = s.options.get("min", 0)
                elif s.type == "BOOLEAN":
                    v = False
                else:
                    v = ""
                wv.append(v)
                for kind in _control_slots(s):
                    wv.append(control if kind == "control" else "")
            else:
                if s.dynamic:
                    raise ExpPortraitError(f"{node_type}: dynamic input '{s.name}' is not supported by the builder")
                inputs.append({"name": s.name, "type": s.type, "link": None})
        if values:
            raise ExpPortraitError(f"{node_type} has no widget input(s) {sorted(values)}")
        if any(s.section == "required" and s.type == "COMBO" and any(s.options.get(k) is True for k in UPLOAD_OPTIONS)
               for s in specs):
            wv.append("image")
        if node_type in AUDIO_UI_NODES:
            wv.append(None)
        if node_type in PREVIEW_3D_NODES:
            wv.append(None)
        wv.extend([None] * len(NODE_EXTRA_WIDGETS.get(node_type, ())))
        outs = output_types(info)
        names = list(info.get("output_name") or outs)
        nid = node_id if node_id is not None else self._next_node
        if nid in self._by_id:
            raise ExpPortraitError(f"node id {nid} is already used")
        self._next_node = max(self._next_node, nid + 1)
        n_rows = len(inputs) + len(wv) + len(outs)
        node = {
            "id": nid, "type": node_type,
            "pos": list(pos) if pos is not None else [40.0 + 360.0 * (len(self.nodes) % 5),
                                                       40.0 + 320.0 * (len(self.nodes) // 5)],
            "size": [NODE_WIDTH, 46.0 + 24.0 * max(1, n_rows)],
            "flags": {}, "order": len(self.nodes), "mode": int(mode),
            "inputs": inputs,
            "outputs": [{"name": str(names[i]) if i < len(names) else t, "type": t, "links": []}
                        for i, t in enumerate(outs)],
            "properties": {"Node name for S&R": node_type},
            "widgets_values": wv,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        self._by_id[nid] = node
        return nid

    def note(self, text: str, *, markdown: bool = False, pos: Optional[Sequence[float]] = None,
             title: Optional[str] = None, width: float = 400.0) -> int:
        """Add a Note (or MarkdownNote) node: frontend-only, never sent to the server."""
        nid = self._next_node
        self._next_node += 1
        node = {"id": nid, "type": "MarkdownNote" if markdown else "Note",
                "pos": list(pos) if pos is not None else [40.0, -220.0 - 40.0 * len(self.groups)],
                "size": [width, 60.0 + 18.0 * (text.count("\n") + 1)], "flags": {}, "order": len(self.nodes),
                "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text]}
        if title:
            node["title"] = title
        self.nodes.append(node)
        self._by_id[nid] = node
        return nid

    # -- links and groups --------------------------------------------------------------------
    def link(self, src: int, output: Union[int, str], dst: int, input_name: str) -> int:
        """Connect output ``output`` (index or name) of ``src`` to input ``input_name`` of ``dst``.

        Linking a widget input turns it into a socket as the frontend does (an input entry with
        ``widget: {name}``); its widget value stays in ``widgets_values``.
        """
        s, d = self._by_id.get(src), self._by_id.get(dst)
        if s is None or d is None:
            raise ExpPortraitError(f"link {src} -> {dst}: unknown node")
        outs = s["outputs"]
        if isinstance(output, str):
            idx = next((i for i, o in enumerate(outs) if o["name"] == output), None)
            if idx is None:
                idx = next((i for i, o in enumerate(outs) if o["type"] == output), None)
            if idx is None:
                raise ExpPortraitError(f"node {src} ({s['type']}) has no output '{output}'")
        else:
            idx = int(output)
            if not 0 <= idx < len(outs):
                raise ExpPortraitError(f"node {src} ({s['type']}) has no output {idx}")
        slot = next((i for i, inp in enumerate(d["inputs"]) if inp["name"] == input_name), None)
        if slot is None:
            info = self.object_info.get(d["type"]) or {}
            spec = next((x for x in input_specs(info) if x.name == input_name), None)
            if spec is None:
                raise ExpPortraitError(f"node {dst} ({d['type']}) has no input '{input_name}'")
            d["inputs"].append({"name": input_name, "type": spec.type, "widget": {"name": input_name}, "link": None})
            slot = len(d["inputs"]) - 1
        if d["inputs"][slot]["link"] is not None:
            raise ExpPortraitError(f"input '{input_name}' of node {dst} is already linked")
        lid = self._next_link
        self._next_link += 1
        ltype = outs[idx]["type"]
        self.links.append([lid, src, idx, dst, slot, ltype])
        d["inputs"][slot]["link"] = lid
        outs[idx]["links"].append(lid)
        return lid

    def group(self, title: str, node_ids: Sequence[int], color: str = "#3f789e", padding: float = 30.0) -> None:
        """A group box around ``node_ids``."""
        ns = [self._by_id[i] for i in node_ids]
        if not ns:
            raise ExpPortraitError(f"group '{title}' has no nodes")
        x0 = min(n["pos"][0] for n in ns) - padding
        y0 = min(n["pos"][1] for n in ns) - padding - 40.0
        x1 = max(n["pos"][0] + n["size"][0] for n in ns) + padding
        y1 = max(n["pos"][1] + n["size"][1] for n in ns) + padding
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    def node(self, node_id: int) -> Dict[str, Any]:
        """The node dict (to tweak ``pos``, ``size``, ``mode``...)."""
        return self._by_id[node_id]

    def to_json(self, workflow_id: Optional[str] = None) -> Dict[str, Any]:
        """The workflow as the frontend saves it."""
        for n in self.nodes:
            for o in n["outputs"]:
                if not o["links"]:
                    o["links"] = None
        out = {
            "id": workflow_id or str(uuid.uuid5(uuid.NAMESPACE_URL, "expportrait:" + ",".join(
                f"{n['id']}:{n['type']}" for n in self.nodes))),
            "revision": 0,
            "last_node_id": max([n["id"] for n in self.nodes], default=0),
            "last_link_id": max([lk[0] for lk in self.links], default=0),
            "nodes": [dict(n, outputs=[dict(o) for o in n["outputs"]]) for n in self.nodes],
            "links": [list(lk) for lk in self.links],
            "groups": [dict(g) for g in self.groups],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
            "version": 0.4,
        }
        for n in self.nodes:  # keep building possible after to_json
            for o in n["outputs"]:
                if o["links"] is None:
                    o["links"] = []
        return out


__all__ = ["WorkflowBuilder"]
