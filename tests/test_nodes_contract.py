"""Every node class satisfies ComfyUI's contract; socket types exist in ComfyUI 0.8.0 or are ours."""
import inspect
import json

import pytest

from conftest import SHARED

PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(scope="module")
def mappings():
    import nodes

    assert not nodes.LOAD_ERRORS, f"node modules failed to import: {nodes.LOAD_ERRORS}"
    return nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS


@pytest.fixture(scope="module")
def core_types():
    path = SHARED / "comfyui" / "object_info-0.8.0.json"
    if not path.is_file():
        pytest.skip("ComfyUI 0.8.0 object_info dump not available")
    info = json.loads(path.read_text())
    types = set()
    for node in info.values():
        types.update(t for t in node.get("output", []) if isinstance(t, str))
        for group in ("required", "optional"):
            for spec in (node.get("input", {}).get(group) or {}).values():
                if isinstance(spec[0], str):
                    types.add(spec[0])
    return types


def _iter_inputs(cls):
    spec = cls.INPUT_TYPES()
    assert isinstance(spec, dict) and "required" in spec
    for group in ("required", "optional"):
        for name, s in (spec.get(group) or {}).items():
            yield group, name, s


def test_nodes_registered(mappings):
    classes, names = mappings
    expected = {"ExpPortraitLoadSMPLX", "ExpPortraitRenderProxy", "ExpPortraitSaveMesh", "ExpPortraitSaveIdentity",
                "ExpPortraitLoadIdentity", "ExpPortraitSaveMotion", "ExpPortraitLoadMotion"}
    assert expected <= set(classes)
    assert set(classes) == set(names), "every node needs a display name"
    for k, v in names.items():
        assert v.startswith("ExpPortrait "), v


def test_node_contract(mappings, core_types):
    classes, _ = mappings
    for node_id, cls in classes.items():
        assert node_id.startswith("ExpPortrait"), node_id
        assert cls.CATEGORY.startswith("ExpPortrait/"), (node_id, cls.CATEGORY)
        assert isinstance(cls.RETURN_TYPES, tuple), node_id
        if hasattr(cls, "RETURN_NAMES"):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES), node_id
        fn = getattr(cls, cls.FUNCTION)
        params = inspect.signature(fn).parameters
        for group, name, spec in _iter_inputs(cls):
            assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, (node_id, name)
            t = spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            assert name in params or any(p.kind == p.VAR_KEYWORD for p in params.values()), f"{node_id}.{cls.FUNCTION} lacks '{name}'"
            if isinstance(t, list):
                if "default" in opts:
                    assert opts["default"] in t, (node_id, name)
                continue
            assert t in PRIMITIVES or t.startswith("EXPP_") or t in core_types, f"{node_id}.{name}: unknown type {t}"
            if t in ("INT", "FLOAT") and "default" in opts:
                assert opts.get("min", -1e18) <= opts["default"] <= opts.get("max", 1e18), (node_id, name)
        for t in cls.RETURN_TYPES:
            assert t in PRIMITIVES or t.startswith("EXPP_") or t in core_types, f"{node_id} returns unknown type {t}"
        # required inputs without default must be parameters without default (ComfyUI always passes them)
        assert not inspect.isabstract(cls)


def test_pack_entry_point_exports():
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("ComfyUI_ExpPortrait_pack", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    assert mod.NODE_CLASS_MAPPINGS and mod.WEB_DIRECTORY == "./web"
    assert (root / "web").is_dir()
