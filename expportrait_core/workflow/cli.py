"""CLI subcommands ``validate-workflow`` and ``workflow-to-api``.

``add_cli(subparsers)`` adds both to an ``argparse`` subparsers object; each sets ``func`` to a
function taking the parsed ``args`` and returning an exit code::

    python -m expportrait_core validate-workflow workflows/*.json
    python -m expportrait_core workflow-to-api workflows/x.json -o x_api.json

Schemas come from this pack's node classes (the ``nodes`` package next to ``expportrait_core``,
imported lazily) merged over ComfyUI 0.8.0's ``object_info`` dump (``--object-info``,
``$EXPPORTRAIT_OBJECT_INFO`` or ``../shared/comfyui/object_info-0.8.0.json``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ExpPortraitError
from ..io.atomic import write_json_atomic as _write_json_atomic
from .schema import (
    ObjectInfo,
    find_object_info_path,
    load_object_info,
    merge_object_info,
    object_info_from_classes,
    repo_root,
)

#: Name under which the pack's ``nodes`` package is imported when ``nodes`` is taken (inside
#: ComfyUI, ``nodes`` is ComfyUI's own module).
PACK_NODES_ALIAS = "expportrait_pack_nodes"


def load_pack_nodes(root: Optional[Path] = None) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """``(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)`` of the pack's ``nodes`` package.

    Reuses ``sys.modules["nodes"]`` when it is ``<root>/nodes`` (default root: the repo root),
    otherwise imports that package under :data:`PACK_NODES_ALIAS`. A package without the
    mappings (early in development) gives empty dicts.
    """
    root = Path(root) if root is not None else repo_root()
    init = root / "nodes" / "__init__.py"
    if not init.is_file():
        return {}, {}
    mod = sys.modules.get("nodes")
    if mod is None or Path(getattr(mod, "__file__", "") or "").resolve() != init.resolve():
        # "nodes" is free or is someone else's (ComfyUI's nodes.py): load ours under an alias;
        # node modules import their siblings relatively, so the package name does not matter
        mod = sys.modules.get(PACK_NODES_ALIAS)
        if mod is None:
            spec = importlib.util.spec_from_file_location(
                PACK_NODES_ALIAS, init, submodule_search_locations=[str(init.parent)])
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[PACK_NODES_ALIAS] = mod
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                del sys.modules[PACK_NODES_ALIAS]
                raise
    return dict(getattr(mod, "NODE_CLASS_MAPPINGS", {}) or {}), \
        dict(getattr(mod, "NODE_DISPLAY_NAME_MAPPINGS", {}) or {})


def build_object_info(object_info_path: Optional[str] = None, with_pack: bool = True,
                      require_dump: bool = False) -> Tuple[ObjectInfo, List[str]]:
    """Merged schemas (ComfyUI dump, then this pack's nodes over it) and notes on what was used."""
    notes: List[str] = []
    dump: ObjectInfo = {}
    path = Path(object_info_path) if object_info_path else find_object_info_path()
    if path is not None:
        dump = load_object_info(path)
        notes.append(f"ComfyUI schemas: {path} ({len(dump)} node types)")
    elif require_dump:
        load_object_info(None)  # raises the explanatory error
    else:
        notes.append("ComfyUI schemas: none found (set EXPPORTRAIT_OBJECT_INFO); only this pack's nodes are known")
    pack: ObjectInfo = {}
    if with_pack:
        classes, names = load_pack_nodes()
        pack = object_info_from_classes(classes, names)
        notes.append(f"pack schemas: {len(pack)} node types from nodes/")
    return merge_object_info(dump, pack), notes


def _read_json(path: str) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ExpPortraitError(f"workflow file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExpPortraitError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ExpPortraitError(f"{path} is not valid JSON: {e}") from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically; the output folder must exist (a typo'd folder is an error, not created)."""
    _write_json_atomic(path, data, make_parents=False)


def cmd_validate_workflow(args: argparse.Namespace) -> int:
    """Print each problem as one line; exit 1 if any error (or warning with --strict)."""
    from .validate import ERROR, validate_workflow

    info, notes = build_object_info(args.object_info, with_pack=not args.no_pack)
    if args.verbose:
        for n in notes:
            print(n)
    bad = 0
    for f in args.files:
        try:
            data = _read_json(f)
        except ExpPortraitError as e:
            print(f"{f}: error: {e}")
            bad += 1
            continue
        problems = validate_workflow(data, info)
        failing = [p for p in problems if p.severity == ERROR or args.strict]
        for p in problems:
            print(f"{f}: {p}")
        if failing:
            bad += 1
        elif args.verbose or not problems:
            print(f"{f}: ok ({len(data.get('nodes', []))} nodes)")
    return 1 if bad else 0


def cmd_workflow_to_api(args: argparse.Namespace) -> int:
    """Convert one UI workflow to API format and write it (atomically) to ``-o``."""
    from .convert import ui_to_api

    info, _ = build_object_info(args.object_info, with_pack=not args.no_pack)
    data = _read_json(args.file)
    try:
        prompt = ui_to_api(data, info)
    except ExpPortraitError as e:
        print(f"{args.file}: error: {e}", file=sys.stderr)
        return 1
    if args.out == "-":
        json.dump(prompt, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        write_json_atomic(Path(args.out), prompt)
        print(f"wrote {args.out} ({len(prompt)} nodes)")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--object-info", metavar="JSON", default=None,
                   help="ComfyUI /object_info dump (default: $EXPPORTRAIT_OBJECT_INFO or "
                        "../shared/comfyui/object_info-0.8.0.json)")
    p.add_argument("--no-pack", action="store_true", help="do not load this pack's node schemas")


def add_cli(subparsers: Any) -> None:
    """Add ``validate-workflow`` and ``workflow-to-api`` to an argparse subparsers object."""
    v = subparsers.add_parser("validate-workflow", help="check UI workflow JSON files against node schemas",
                              description="Check ComfyUI UI-format workflows: node types, link types, "
                                          "widget values, required inputs. Exit 1 if any has errors.")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument("--strict", action="store_true", help="warnings fail too")
    v.add_argument("-v", "--verbose", action="store_true", help="say which schemas were used")
    _common(v)
    v.set_defaults(func=cmd_validate_workflow)

    c = subparsers.add_parser("workflow-to-api", help="convert a UI workflow to ComfyUI's API (prompt) format",
                              description="Convert a UI-format workflow to the API format that "
                                          "ComfyUI's /prompt endpoint takes.")
    c.add_argument("file", metavar="FILE")
    c.add_argument("-o", "--out", required=True, metavar="OUT", help="output JSON file ('-' for stdout)")
    _common(c)
    c.set_defaults(func=cmd_workflow_to_api)


def main(argv: Optional[List[str]] = None) -> int:
    """Stand-alone entry (``python -m expportrait_core.workflow.cli``), until the lead wires it in."""
    parser = argparse.ArgumentParser(prog="expportrait-workflow")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ExpPortraitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["add_cli", "build_object_info", "cmd_validate_workflow", "cmd_workflow_to_api",
           "load_pack_nodes", "main", "write_json_atomic"]
