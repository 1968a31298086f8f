"""A small executor for API-format prompts, for tests and headless runs of a graph.

It runs node classes the way ComfyUI 0.8.0's executor does (``execution.py``), minus caching,
lazy evaluation and the UI: only the nodes needed by the output nodes (``OUTPUT_NODE = True``) run,
in topological order; a link ``[node_id, output_index]`` takes that output of the producing node;
each node class is instantiated once and its ``FUNCTION`` is called with keyword arguments.

Lists, as in ComfyUI: every value travels as a list. A node without ``INPUT_IS_LIST`` is called
once per list element (the shorter lists repeat their last element); with ``INPUT_IS_LIST`` it is
called once with the whole lists. Results are merged per output: an ``OUTPUT_IS_LIST`` output is
concatenated, others collect one element per call. Hidden inputs ``PROMPT``, ``UNIQUE_ID``,
``EXTRA_PNGINFO`` and ``DYNPROMPT`` (None here) are filled in.

Core nodes that are not ours (``LoadImage``, ``SaveVideo``...) are given as stand-ins through
``overrides``: a node class with the same protocol, or a plain function (see :func:`stand_in`).
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ..errors import ExpPortraitError


@dataclass
class ExecutionResult:
    """What a run produced.

    ``outputs[node_id][i]`` is the list of values of output ``i`` (ComfyUI's internal list form;
    one element unless lists were involved); ``ui[node_id]`` merges the ``"ui"`` dicts that output
    nodes returned; ``order`` is the order nodes ran in.
    """

    outputs: Dict[str, List[List[Any]]] = field(default_factory=dict)
    ui: Dict[str, Dict[str, List[Any]]] = field(default_factory=dict)
    order: List[str] = field(default_factory=list)

    def value(self, node_id: Union[str, int], index: int = 0) -> Any:
        """The first value of output ``index`` of node ``node_id``."""
        vals = self.values(node_id, index)
        if not vals:
            raise KeyError(f"node {node_id} output {index} produced no value")
        return vals[0]

    def values(self, node_id: Union[str, int], index: int = 0) -> List[Any]:
        """All values (the list) of output ``index`` of node ``node_id``."""
        key = str(node_id)
        if key not in self.outputs:
            raise KeyError(f"node {key} did not run (ran: {', '.join(self.order)})")
        outs = self.outputs[key]
        if index >= len(outs):
            raise KeyError(f"node {key} has {len(outs)} outputs, asked for output {index}")
        return outs[index]


def stand_in(fn: Callable[..., Any], return_types: Sequence[str] = (), *, output_node: bool = False,
             input_is_list: bool = False, output_is_list: Optional[Sequence[bool]] = None,
             name: str = "StandIn") -> type:
    """Wrap a plain function as a node class for :func:`execute_api_prompt` overrides.

    ``fn(**inputs)`` returns a tuple with one value per entry of ``return_types`` (or a dict with
    ``"ui"``/``"result"`` like an output node).
    """
    attrs: Dict[str, Any] = {
        "RETURN_TYPES": tuple(return_types),
        "FUNCTION": "run",
        "OUTPUT_NODE": output_node,
        "INPUT_IS_LIST": input_is_list,
        "INPUT_TYPES": classmethod(lambda cls: {"required": {}}),
        "run": lambda self, **kw: fn(**kw),
    }
    if output_is_list is not None:
        attrs["OUTPUT_IS_LIST"] = tuple(output_is_list)
    return type(name, (), attrs)


def _is_link(v: Any) -> bool:
    """ComfyUI's ``is_link``: ``[str node_id, int slot]`` (an int node id is a plain value there)."""
    return (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
            and isinstance(v[1], (int, float)) and not isinstance(v[1], bool))


def _class_for(node_id: str, class_type: str, node_classes: Mapping[str, Any],
               overrides: Mapping[str, Any]) -> Any:
    cls = overrides.get(node_id, overrides.get(class_type))
    if cls is None:
        cls = node_classes.get(class_type)
    if cls is None:
        raise ExpPortraitError(
            f"node {node_id}: no class for class_type '{class_type}'; pass a stand-in for it in "
            f"overrides (e.g. overrides={{'{class_type}': stand_in(fn, return_types)}})."
        )
    if not inspect.isclass(cls):
        if callable(cls):
            return stand_in(cls, name=f"StandIn_{class_type}")
        raise ExpPortraitError(f"node {node_id}: override for '{class_type}' is neither a class nor callable")
    return cls


def _input_types(cls: Any) -> Dict[str, Dict[str, Any]]:
    try:
        return cls.INPUT_TYPES() or {}
    except Exception as e:  # a broken node should fail with its name
        raise ExpPortraitError(f"{cls.__name__}.INPUT_TYPES() failed: {e}") from e


def _spec_type(cls_inputs: Mapping[str, Any], name: str) -> Optional[Any]:
    for sec in ("required", "optional"):
        spec = (cls_inputs.get(sec) or {}).get(name)
        if spec is not None:
            return spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return None


def _convert_value(t: Any, v: Any, node_id: str, name: str) -> Any:
    """Widget value conversion as ComfyUI's ``validate_inputs`` does it."""
    if isinstance(v, dict) and "__value__" in v:
        v = v["__value__"]
    try:
        if t == "INT":
            return int(v)
        if t == "FLOAT":
            return float(v)
        if t == "STRING":
            return str(v)
        if t == "BOOLEAN":
            return bool(v)
    except (TypeError, ValueError) as e:
        raise ExpPortraitError(f"node {node_id} input '{name}': cannot convert {v!r} to {t}") from e
    return v


def _call(fn: Callable[..., Any], kwargs: Dict[str, Any]) -> Any:
    res = fn(**kwargs)
    if inspect.isawaitable(res):  # async FUNCTIONs (ComfyUI awaits them)
        import asyncio

        res = asyncio.run(_await(res))
    return res


async def _await(x: Any) -> Any:
    return await x


def _needed(prompt: Mapping[str, Any], targets: Iterable[str]) -> List[str]:
    """Targets and every node they depend on through links."""
    need, stack = set(), list(targets)
    while stack:
        nid = stack.pop()
        if nid in need:
            continue
        if nid not in prompt:
            raise ExpPortraitError(f"a link refers to node {nid}, which is not in the prompt")
        need.add(nid)
        for v in (prompt[nid].get("inputs") or {}).values():
            if _is_link(v):
                stack.append(str(v[0]))
    return sorted(need, key=_id_key)


def _id_key(nid: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in str(nid).split(":")) + (str(nid),)


def topological_order(prompt: Mapping[str, Any], nodes: Optional[Iterable[str]] = None) -> List[str]:
    """Node ids so that every node comes after the nodes it takes links from (ties by id).

    Raises ExpPortraitError on a cycle.
    """
    ids = [str(n) for n in (nodes if nodes is not None else prompt.keys())]
    idset = set(ids)
    deps = {n: {str(v[0]) for v in (prompt[n].get("inputs") or {}).values() if _is_link(v)} & idset
            for n in ids}
    order: List[str] = []
    done: set = set()
    remaining = sorted(ids, key=_id_key)
    while remaining:
        ready = [n for n in remaining if deps[n] <= done]
        if not ready:
            raise ExpPortraitError(f"the graph has a cycle among nodes {', '.join(remaining)}")
        n = ready[0]
        order.append(n)
        done.add(n)
        remaining.remove(n)
    return order


def execute_api_prompt(prompt: Mapping[str, Any], node_classes: Mapping[str, Any],
                       overrides: Optional[Mapping[str, Any]] = None, *,
                       targets: Optional[Iterable[Union[str, int]]] = None,
                       extra_data: Optional[Mapping[str, Any]] = None,
                       inference_mode: bool = True) -> ExecutionResult:
    """Run an API-format prompt ``{node_id: {"class_type", "inputs"}}`` through node classes.

    As in ComfyUI 0.8.0 (``execution.py``), every node runs inside ``torch.inference_mode()``
    unless ``inference_mode=False``, so a node that needs autograd must switch it back on itself.

    ``node_classes``: class_type -> node class (e.g. the pack's ``NODE_CLASS_MAPPINGS``).
    ``overrides``: stand-ins, looked up by node id first, then by class_type; a class or a plain
    function (wrapped by :func:`stand_in`). ``targets``: node ids to compute (default: the output
    nodes, as ComfyUI does; ``"all"`` runs every node). Raises ExpPortraitError naming the node on a
    missing class, a missing required input, a bad link or a wrong number of returned values.
    """
    import torch

    overrides = dict(overrides or {})
    prompt = {str(k): v for k, v in prompt.items()}
    classes = {nid: _class_for(nid, str(p.get("class_type")), node_classes, overrides)
               for nid, p in prompt.items()}
    if targets == "all":
        target_ids = list(prompt)
    elif targets is not None:
        target_ids = [str(t) for t in targets]
    else:
        target_ids = [nid for nid, c in classes.items() if getattr(c, "OUTPUT_NODE", False) is True]
        if not target_ids:
            raise ExpPortraitError("the prompt has no output node (OUTPUT_NODE = True); "
                                   "pass targets=[node ids] to compute others.")
    order = topological_order(prompt, _needed(prompt, target_ids))
    result = ExecutionResult()
    for nid in order:
        node = prompt[nid]
        cls = classes[nid]
        cls_inputs = _input_types(cls)
        raw_inputs = node.get("inputs") or {}
        data: Dict[str, List[Any]] = {}
        for name, v in raw_inputs.items():
            if _is_link(v):
                src, idx = str(v[0]), int(v[1])
                outs = result.outputs.get(src)
                if outs is None:
                    raise ExpPortraitError(f"node {nid} input '{name}': node {src} produced nothing")
                if idx >= len(outs):
                    raise ExpPortraitError(f"node {nid} input '{name}': node {src} has {len(outs)} "
                                           f"outputs, the link asks for output {idx}")
                data[name] = outs[idx]
            else:
                data[name] = [_convert_value(_spec_type(cls_inputs, name), v, nid, name)]
        for name in (cls_inputs.get("required") or {}):
            if name not in data:
                raise ExpPortraitError(f"node {nid} ({node.get('class_type')}): required input "
                                       f"'{name}' is missing")
        for name, kind in (cls_inputs.get("hidden") or {}).items():
            kind = kind[0] if isinstance(kind, (list, tuple)) else kind
            if kind == "PROMPT":
                data[name] = [dict(prompt)]
            elif kind == "UNIQUE_ID":
                data[name] = [nid]
            elif kind == "EXTRA_PNGINFO":
                data[name] = [(extra_data or {}).get("extra_pnginfo")]
            elif kind == "DYNPROMPT":
                data[name] = [None]
        obj = cls()
        fn = getattr(obj, getattr(cls, "FUNCTION", "run"))
        calls: List[Any] = []
        with (torch.inference_mode() if inference_mode else contextlib.nullcontext()):  # as ComfyUI does
            if getattr(cls, "INPUT_IS_LIST", False):
                calls.append(_call(fn, data))
            elif not data:
                calls.append(_call(fn, {}))
            else:
                n = max(len(v) for v in data.values())
                for i in range(n):
                    calls.append(_call(fn, {k: v[i if i < len(v) else -1] for k, v in data.items()}))
        n_out = len(getattr(cls, "RETURN_TYPES", ()))
        results: List[Sequence[Any]] = []
        uis: List[Dict[str, Any]] = []
        for r in calls:
            if isinstance(r, dict):
                if "expand" in r:
                    raise ExpPortraitError(f"node {nid}: graph expansion is not supported by this executor")
                if "ui" in r and r["ui"] is not None:
                    uis.append(r["ui"])
                r = r.get("result", () if n_out == 0 else None)
            if r is None and n_out == 0:
                r = ()
            if not isinstance(r, (tuple, list)) or (n_out and len(r) != n_out):
                raise ExpPortraitError(
                    f"node {nid} ({node.get('class_type')}): {cls.__name__}.{getattr(cls, 'FUNCTION', 'run')} "
                    f"returned {type(r).__name__}{'' if not isinstance(r, (tuple, list)) else f' of {len(r)}'}, "
                    f"expected a tuple of {n_out} (RETURN_TYPES)")
            results.append(r)
        width = n_out if n_out else (len(results[0]) if results else 0)
        is_list = list(getattr(cls, "OUTPUT_IS_LIST", [False] * width))
        merged: List[List[Any]] = []
        for i in range(width):
            if i < len(is_list) and is_list[i]:
                merged.append([x for r in results for x in r[i]])
            else:
                merged.append([r[i] for r in results])
        result.outputs[nid] = merged
        if uis:
            result.ui[nid] = {k: [y for u in uis for y in u.get(k, [])] for k in uis[0]}
        result.order.append(nid)
    return result


__all__ = ["ExecutionResult", "execute_api_prompt", "stand_in", "topological_order"]
