"""Workflow tooling: schemas, UI-workflow validation, UI -> API conversion, the test executor, CLI.

Tests marked by ``needs_dump`` use ComfyUI 0.8.0's real ``/object_info`` dump (``../shared/...``
or ``$EXPPORTRAIT_OBJECT_INFO``) and skip without it; the rest use schemas built from small fake
node classes.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from expportrait_core.errors import ExpPortraitError
from expportrait_core.workflow import (
    Problem,
    errors_only,
    execute_api_prompt,
    find_object_info_path,
    load_object_info,
    merge_object_info,
    object_info_from_classes,
    stand_in,
    topological_order,
    ui_to_api,
    validate_api_prompt,
    validate_workflow,
)
from expportrait_core.workflow.build import WorkflowBuilder
from expportrait_core.workflow.cli import add_cli, load_pack_nodes
from expportrait_core.workflow.schema import expected_widget_count, input_specs, types_match
from expportrait_core.workflow.widgets import map_widget_values

DATA = Path(__file__).parent / "data"
DUMP_PATH = find_object_info_path()
needs_dump = pytest.mark.skipif(DUMP_PATH is None, reason="ComfyUI object_info-0.8.0.json not available")


@pytest.fixture(scope="module")
def core_info() -> Dict[str, Any]:
    return load_object_info(DUMP_PATH)


def _load(name: str) -> Dict[str, Any]:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def _rules(problems: List[Problem], severity: str = "error") -> List[tuple]:
    return [(p.node_id, p.input, p.rule) for p in problems if p.severity == severity]


def _node(ui: Dict[str, Any], nid: int) -> Dict[str, Any]:
    return next(n for n in ui["nodes"] if n["id"] == nid)


# ---------------------------------------------------------------------------------------------
# fake node classes: a tiny pack with lists, an output node and a stand-in loader


class FakeScale:
    """IMAGE-ish numbers times ``factor``."""

    CATEGORY = "Fake/Math"
    DESCRIPTION = "Multiplies."
    RETURN_TYPES = ("NUMBERS",)
    RETURN_NAMES = ("scaled",)
    FUNCTION = "run"
    calls = 0

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("NUMBERS", {"tooltip": "input"}),
                             "factor": ("INT", {"default": 2, "min": 1, "max": 10, "tooltip": "factor"})},
                "optional": {"offset": ("FLOAT", {"default": 0.0, "min": -5.0, "max": 5.0})}}

    def run(self, values, factor, offset=0.0):
        FakeScale.calls += 1
        return ([v * factor + offset for v in values],)


class FakeSplit:
    """One list element per value (OUTPUT_IS_LIST)."""

    CATEGORY = "Fake/Lists"
    RETURN_TYPES = ("NUMBER", "INT")
    OUTPUT_IS_LIST = (True, False)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("NUMBERS", {})}}

    def run(self, values):
        return (list(values), len(values))


class FakeAddOne:
    """Per-element (no INPUT_IS_LIST): called once per list element."""

    CATEGORY = "Fake/Lists"
    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"
    calls = 0

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("NUMBER", {})}}

    def run(self, x):
        FakeAddOne.calls += 1
        return (x + 1,)


class FakeSum:
    """Whole lists at once (INPUT_IS_LIST)."""

    CATEGORY = "Fake/Lists"
    RETURN_TYPES = ("NUMBER",)
    INPUT_IS_LIST = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"xs": ("NUMBER", {}), "mode": (["sum", "max"], {"default": "sum"})}}

    def run(self, xs, mode):
        return ((sum(xs) if mode[0] == "sum" else max(xs)),)


class FakeSave:
    """Output node: returns a ui dict."""

    CATEGORY = "Fake/Out"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("NUMBER", {}), "label": ("STRING", {"default": "out"})},
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}

    def save(self, value, label, unique_id=None, prompt=None):
        return {"ui": {"saved": [f"{label}={value}@{unique_id}", len(prompt)]}}


class FakeLoad:
    """Stands for a core loader in the schema; replaced by a stand-in when executing."""

    CATEGORY = "Fake/IO"
    RETURN_TYPES = ("NUMBERS",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": (["a.txt", "b.txt"], {})}}

    def load(self, file):
        raise AssertionError("the stand-in should be used")


FAKE = {"FakeScale": FakeScale, "FakeSplit": FakeSplit, "FakeAddOne": FakeAddOne, "FakeSum": FakeSum,
        "FakeSave": FakeSave, "FakeLoad": FakeLoad}
FAKE_NAMES = {"FakeScale": "Fake Scale"}


@pytest.fixture()
def fake_info() -> Dict[str, Any]:
    return object_info_from_classes(FAKE, FAKE_NAMES)


def _fake_workflow(fake_info: Dict[str, Any]) -> Dict[str, Any]:
    b = WorkflowBuilder(fake_info)
    load = b.add("FakeLoad", {"file": "b.txt"})
    scale = b.add("FakeScale", {"factor": 3, "offset": 0.5})
    split = b.add("FakeSplit")
    add = b.add("FakeAddOne")
    total = b.add("FakeSum", {"mode": "sum"})
    save = b.add("FakeSave", {"label": "total"})
    orphan = b.add("FakeScale")  # not needed by the output: must not run
    b.link(load, 0, scale, "values")
    b.link(scale, "scaled", split, "values")
    b.link(split, 0, add, "x")
    b.link(add, 0, total, "xs")
    b.link(total, 0, save, "value")
    b.link(load, 0, orphan, "values")
    b.note("fake pack")
    b.group("All", [load, scale, split])
    return b.to_json()


# ---------------------------------------------------------------------------------------------
# schemas


def test_object_info_from_classes_mimics_server(fake_info):
    s = fake_info["FakeScale"]
    assert s["input_order"] == {"required": ["values", "factor"], "optional": ["offset"]}
    assert s["output"] == ["NUMBERS"] and s["output_name"] == ["scaled"] and s["output_is_list"] == [False]
    assert s["display_name"] == "Fake Scale" and s["description"] == "Multiplies."
    assert s["category"] == "Fake/Math" and s["output_node"] is False
    assert s["python_module"] == "custom_nodes.ComfyUI-ExpPortrait" and s["name"] == "FakeScale"
    assert s["input"]["required"]["factor"] == ["INT", {"default": 2, "min": 1, "max": 10, "tooltip": "factor"}]
    sp = fake_info["FakeSplit"]
    assert sp["output_is_list"] == [True, False] and sp["output_name"] == ["NUMBER", "INT"]
    assert sp["display_name"] == "FakeSplit" and sp["description"] == ""
    assert fake_info["FakeSave"]["output_node"] is True
    assert fake_info["FakeSave"]["input_order"]["hidden"] == ["unique_id", "prompt"]
    json.dumps(fake_info)  # what the server would send


def test_object_info_rejects_unserializable_schema():
    class Bad:
        RETURN_TYPES = ("X",)
        FUNCTION = "f"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"v": ("INT", {"default": object()})}}

    with pytest.raises(ExpPortraitError, match="Bad.*JSON|JSON"):
        object_info_from_classes({"Bad": Bad})


def test_merge_and_loader(tmp_path, monkeypatch, fake_info):
    merged = merge_object_info({"A": {"input": {}, "v": 1}}, None, {"A": {"input": {}, "v": 2}, "B": {"input": {}}})
    assert merged["A"]["v"] == 2 and set(merged) == {"A", "B"}
    p = tmp_path / "oi.json"
    p.write_text(json.dumps(fake_info))
    monkeypatch.setenv("EXPPORTRAIT_OBJECT_INFO", str(p))
    assert find_object_info_path() == p and set(load_object_info()) == set(FAKE)
    p.write_text("[1, 2]")
    with pytest.raises(ExpPortraitError, match="not a ComfyUI /object_info"):
        load_object_info(p)
    monkeypatch.setenv("EXPPORTRAIT_OBJECT_INFO", str(tmp_path / "missing.json"))
    assert find_object_info_path() is None
    with pytest.raises(ExpPortraitError, match="EXPPORTRAIT_OBJECT_INFO"):
        load_object_info()


@needs_dump
def test_widget_layout_rules_on_real_schemas(core_info):
    # KSampler: seed (+ control), steps, cfg, sampler_name, scheduler, denoise
    assert expected_widget_count(core_info["KSampler"]) == 7
    assert [s.name for s in input_specs(core_info["KSampler"]) if s.widget][:2] == ["seed", "steps"]
    # LoadImage: the image combo plus the upload button value the frontend saves
    m = map_widget_values("LoadImage", core_info["LoadImage"], ["me.png", "image"])
    assert m.error is None and m.values == {"image": "me.png"}
    assert map_widget_values("LoadImage", core_info["LoadImage"], ["me.png"]).error is not None
    # SaveAudioMP3: the trailing audio preview widget is not saved (serialize = false)
    assert map_widget_values("SaveAudioMP3", core_info["SaveAudioMP3"], ["audio/x", "V0"]).error is None
    # a V3 dynamic combo: its chosen option's widgets follow it
    m = map_widget_values("ResizeImageMaskNode", core_info["ResizeImageMaskNode"],
                          ["scale dimensions", 640, 480, "center", "area"])
    assert m.error is None and m.values["resize_type"] == "scale dimensions" and m.values["scale_method"] == "area"
    assert map_widget_values("ResizeImageMaskNode", core_info["ResizeImageMaskNode"],
                             ["scale by multiplier", 1.5, "area"]).error is None
    # a legacy INT named seed gets a control value unless the option says otherwise
    legacy = {"input": {"required": {"seed": ["INT", {}], "x": ["INT", {}]}}, "input_order": {"required": ["seed", "x"]}}
    assert expected_widget_count(legacy) == 3
    legacy["input"]["required"]["seed"][1]["control_after_generate"] = False
    assert expected_widget_count(legacy) == 2


def test_types_match():
    assert types_match("IMAGE", "IMAGE") and not types_match("IMAGE", "LATENT")
    assert types_match("MASK", "IMAGE,MASK") and types_match("IMAGE,MASK", "MASK")
    assert not types_match("LATENT", "IMAGE,MASK")
    assert types_match("*", "LATENT") and types_match("VAE", "*") and types_match("COMBO", "COMBO")


# ---------------------------------------------------------------------------------------------
# validation on hand-made core workflows


@needs_dump
def test_valid_core_workflows_pass(core_info):
    for name in ("wf_core_valid.json", "wf_subgraph_valid.json"):
        assert validate_workflow(_load(name), core_info) == [], name


@needs_dump
@pytest.mark.parametrize("mutate, expected", [
    # every node type exists
    (lambda ui: _node(ui, 12).update(type="ImageStitchX"), ("12", None, "unknown_node_type")),
    # link types: NOISE into an IMAGE input (link and slot types updated as a UI would)
    (lambda ui: (ui["links"].append([11, 7, 0, 13, 0, "NOISE"]), _node(ui, 7)["outputs"][0].update(links=[11]),
                 _node(ui, 13)["inputs"][0].update(link=11), ui["links"].remove([8, 12, 0, 13, 0, "IMAGE"]),
                 _node(ui, 12)["outputs"][0].update(links=None)),
     ("13", "images", "link_type_mismatch")),
    # widget value count (a value missing) and the control_after_generate value
    (lambda ui: _node(ui, 11)["widgets_values"].pop(), ("11", None, "widget_count")),
    (lambda ui: _node(ui, 7).update(widgets_values=[42]), ("7", None, "widget_count")),
    (lambda ui: _node(ui, 7).update(widgets_values=[42, "sometimes"]), ("7", "noise_seed", "control_value")),
    # INT / FLOAT ranges, INT type
    (lambda ui: _node(ui, 11)["widgets_values"].__setitem__(1, 20000), ("11", "width", "value_range")),
    (lambda ui: _node(ui, 4)["widgets_values"].__setitem__(0, 1.5), ("4", "blend_factor", "value_range")),
    (lambda ui: _node(ui, 11)["widgets_values"].__setitem__(2, 2.5), ("11", "height", "value_type")),
    # BOOLEAN and STRING types
    (lambda ui: _node(ui, 12)["widgets_values"].__setitem__(1, "yes"), ("12", "match_image_size", "value_type")),
    (lambda ui: _node(ui, 5).update(widgets_values=[5]), ("5", "filename_prefix", "value_type")),
    # combo choices (legacy list and V3 COMBO)
    (lambda ui: _node(ui, 11)["widgets_values"].__setitem__(0, "cubic"), ("11", "upscale_method", "value_not_in_list")),
    (lambda ui: _node(ui, 12)["widgets_values"].__setitem__(0, "diagonal"), ("12", "direction", "value_not_in_list")),
    # a PrimitiveNode value is checked against the widget it feeds
    (lambda ui: _node(ui, 8)["widgets_values"].__setitem__(0, 0), ("1", "width", "value_range")),
    # required input left unconnected
    (lambda ui: (_node(ui, 13)["inputs"][0].update(link=None), ui["links"].remove([8, 12, 0, 13, 0, "IMAGE"]),
                 _node(ui, 12)["outputs"][0].update(links=None)), ("13", "images", "required_input_missing")),
    # required input fed only by a muted node
    (lambda ui: _node(ui, 11).update(mode=2), ("12", "image1", "required_input_missing")),
    # links naming nodes or inputs that do not exist
    (lambda ui: ui["links"].append([12, 99, 0, 12, 1, "IMAGE"]), (None, None, "bad_link")),
    (lambda ui: _node(ui, 4)["inputs"][1].update(name="image3"), ("4", "image3", "unknown_input")),
])
def test_each_breakage_is_caught(core_info, mutate, expected):
    ui = _load("wf_core_valid.json")
    mutate(ui)
    found = _rules(validate_workflow(ui, core_info))
    assert expected in found, found


@needs_dump
def test_problems_name_node_type_input_and_rule(core_info):
    ui = _load("wf_core_valid.json")
    _node(ui, 11)["widgets_values"][0] = "cubic"
    _node(ui, 3)["type"] = "NoSuchNode"  # bypassed: only a warning
    problems = validate_workflow(ui, core_info)
    p = next(p for p in problems if p.rule == "value_not_in_list")
    assert (p.node_id, p.node_type, p.input, p.severity) == ("11", "ImageScale", "upscale_method", "error")
    assert "node 11 (ImageScale) input 'upscale_method': [value_not_in_list]" in str(p)
    w = next(p for p in problems if p.rule == "unknown_node_type")
    assert w.severity == "warning" and w.node_id == "3"
    assert len(errors_only(problems)) == 1


@needs_dump
def test_file_list_combos_are_not_checked(core_info):
    b = WorkflowBuilder(core_info)
    ck = b.add("CheckpointLoaderSimple", {"ckpt_name": "sd15.safetensors"})  # empty list in the dump
    vae = b.add("VAELoader", {"vae_name": "ae.safetensors"})  # ['pixel_space'] in the dump
    img = b.add("LoadImage", {"image": "portrait.png"})  # ['example.png'] in the dump
    enc = b.add("VAEEncode")
    dec = b.add("VAEDecode")
    save = b.add("SaveImage")
    b.link(img, "IMAGE", enc, "pixels")
    b.link(vae, "VAE", enc, "vae")
    b.link(enc, "LATENT", dec, "samples")
    b.link(ck, "VAE", dec, "vae")
    b.link(dec, "IMAGE", save, "images")
    ui = b.to_json()
    assert validate_workflow(ui, core_info) == []
    assert ui_to_api(ui, core_info)[str(img)]["inputs"] == {"image": "portrait.png"}


@needs_dump
def test_wildcard_multitype_and_api_format(core_info):
    b = WorkflowBuilder(core_info)
    img = b.add("EmptyImage")
    mask = b.add("SolidMask")
    show = b.add("PreviewAny")  # input type "*"
    join = b.add("JoinImageWithAlpha")
    prev = b.add("PreviewImage")
    b.link(mask, "MASK", show, "source")
    b.link(img, 0, join, "image")
    b.link(mask, 0, join, "alpha")
    b.link(join, 0, prev, "images")
    ui = b.to_json()
    assert validate_workflow(ui, core_info) == []
    api = ui_to_api(ui, core_info)
    assert validate_api_prompt(api, core_info) == []
    assert _rules(validate_workflow(api, core_info)) == [(None, None, "bad_format")]
    broken = copy.deepcopy(api)
    broken[str(join)]["inputs"]["alpha"] = [int(img), 0]  # an int node id is a value, not a link
    assert (str(join), "alpha", "bad_link") in _rules(validate_api_prompt(broken, core_info))


# ---------------------------------------------------------------------------------------------
# UI -> API


@needs_dump
def test_ui_to_api_matches_graph_to_prompt(core_info):
    """Reroute resolved, bypassed ImageInvert passed through, muted PreviewImage dropped,
    PrimitiveNode value written into EmptyImage.width, notes dropped, control values not sent."""
    assert ui_to_api(_load("wf_core_valid.json"), core_info) == _load("wf_core_valid.api.json")


@needs_dump
def test_ui_to_api_flattens_subgraphs(core_info):
    api = ui_to_api(_load("wf_subgraph_valid.json"), core_info)
    assert sorted(api) == ["1", "3", "5:1", "5:2"]
    assert api["5:1"]["inputs"]["image"] == ["1", 0]
    assert api["5:2"]["inputs"]["image"] == ["5:1", 0]
    assert api["3"]["inputs"]["images"] == ["5:2", 0]


@needs_dump
def test_bypass_picks_matching_input_type(core_info):
    b = WorkflowBuilder(core_info)
    img = b.add("EmptyImage")
    mask = b.add("SolidMask")
    join = b.add("JoinImageWithAlpha", mode=4)  # inputs (image IMAGE, alpha MASK), output IMAGE
    to_mask = b.add("ImageToMask")
    prev = b.add("PreviewImage")
    b.link(img, 0, join, "image")
    b.link(mask, 0, join, "alpha")
    b.link(join, 0, prev, "images")
    b.link(join, 0, to_mask, "image")
    api = ui_to_api(b.to_json(), core_info)
    assert str(join) not in api
    assert api[str(prev)]["inputs"]["images"] == [str(img), 0]
    # bypassing a node whose inputs cannot feed the consumer drops the link
    b2 = WorkflowBuilder(core_info)
    mask2 = b2.add("SolidMask")
    m2i = b2.add("MaskToImage", mode=4)  # MASK in, IMAGE out
    prev2 = b2.add("PreviewImage")
    b2.link(mask2, 0, m2i, "mask")
    b2.link(m2i, 0, prev2, "images")
    ui2 = b2.to_json()
    assert "images" not in ui_to_api(ui2, core_info)[str(prev2)]["inputs"]
    assert (str(prev2), "images", "required_input_missing") in _rules(validate_workflow(ui2, core_info))


def test_ui_to_api_with_fake_schemas_and_errors(fake_info):
    ui = _fake_workflow(fake_info)
    assert validate_workflow(ui, fake_info) == []
    api = ui_to_api(ui, fake_info)
    assert api["2"] == {"inputs": {"factor": 3, "offset": 0.5, "values": ["1", 0]}, "class_type": "FakeScale",
                        "_meta": {"title": "Fake Scale"}}
    assert "8" not in api  # the Note
    bad = copy.deepcopy(ui)
    _node(bad, 2)["widgets_values"] = [3]
    with pytest.raises(ExpPortraitError, match="node 2 \\(FakeScale\\).*widgets_values"):
        ui_to_api(bad, fake_info)
    _node(bad, 2)["type"] = "Nope"
    with pytest.raises(ExpPortraitError, match="node 2: node type 'Nope' is not known"):
        ui_to_api(bad, fake_info)


def test_list_values_and_linked_widgets(fake_info):
    info = dict(fake_info)
    info["FakeList"] = {"input": {"required": {"xs": ["STRING", {"default": ""}]}}, "input_order": {"required": ["xs"]},
                        "output": ["NUMBER"], "output_name": ["NUMBER"], "output_is_list": [False], "output_node": False}
    b = WorkflowBuilder(info)
    lst = b.add("FakeList", {"xs": ""})
    b.node(lst)["widgets_values"] = [["a", "b"]]  # an array widget value
    split = b.add("FakeSplit")
    scale = b.add("FakeScale", {"factor": 4})
    b.link(split, "INT", scale, "factor")  # a widget input driven by a link
    api = ui_to_api(b.to_json(), info)
    assert api[str(lst)]["inputs"]["xs"] == {"__value__": ["a", "b"]}
    assert api[str(scale)]["inputs"]["factor"] == [str(split), 1]


# ---------------------------------------------------------------------------------------------
# executor


def test_execute_fake_graph_as_comfyui_would(fake_info):
    ui = _fake_workflow(fake_info)
    api = ui_to_api(ui, fake_info)
    FakeScale.calls = FakeAddOne.calls = 0
    seen = {}

    def load(file):
        seen["file"] = file
        return ([1.0, 2.0, 3.0],)

    res = execute_api_prompt(api, FAKE, overrides={"FakeLoad": stand_in(load, ("NUMBERS",))})
    assert seen["file"] == "b.txt"
    # (1, 2, 3) * 3 + 0.5 -> split into a list -> +1 per element -> summed as a list
    assert res.values("2") == [[3.5, 6.5, 9.5]]
    assert res.values("3", 0) == [3.5, 6.5, 9.5] and res.value("3", 1) == 3
    assert res.values("4") == [4.5, 7.5, 10.5] and FakeAddOne.calls == 3
    assert res.value("5") == pytest.approx(22.5)
    assert res.ui["6"]["saved"] == ["total=22.5@6", len(api)]
    assert res.order == ["1", "2", "3", "4", "5", "6"]  # the orphan FakeScale (7) is not needed
    assert FakeScale.calls == 1
    # targets="all" runs the orphan too; an override by node id wins over the class one
    res = execute_api_prompt(api, FAKE, overrides={"FakeLoad": load, "1": lambda file: ([10.0],)},
                             targets="all")
    assert res.value("7") == [20.0] and res.value("5") == pytest.approx(31.5)  # 10 * 3 + 0.5 + 1


def test_execute_errors_name_the_node(fake_info):
    api = ui_to_api(_fake_workflow(fake_info), fake_info)
    with pytest.raises(ExpPortraitError, match="node 1: no class for class_type 'FakeLoad'"):
        execute_api_prompt(api, {k: v for k, v in FAKE.items() if k != "FakeLoad"})
    cyc = copy.deepcopy(api)
    cyc["2"]["inputs"]["values"] = ["4", 0]
    with pytest.raises(ExpPortraitError, match="cycle"):
        execute_api_prompt(cyc, FAKE, overrides={"FakeLoad": lambda file: ([1.0],)})
    missing = copy.deepcopy(api)
    del missing["6"]["inputs"]["value"]
    with pytest.raises(ExpPortraitError, match="node 6 \\(FakeSave\\): required input 'value' is missing"):
        execute_api_prompt(missing, FAKE, overrides={"FakeLoad": lambda file: ([1.0],)})
    with pytest.raises(ExpPortraitError, match="node 1 .*returned .* expected a tuple of 1"):
        execute_api_prompt(api, FAKE, overrides={"FakeLoad": stand_in(lambda file: ([1.0], 2), ("NUMBERS",))})
    with pytest.raises(ExpPortraitError, match="no output node"):
        execute_api_prompt({"1": api["1"]}, FAKE, overrides={"FakeLoad": lambda file: ([1.0],)})
    assert topological_order({"b": {"inputs": {"x": ["a", 0]}}, "a": {"inputs": {}}}) == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# our pack and the CLI


@needs_dump
def test_pack_nodes_schema_and_names(core_info):
    classes, names = load_pack_nodes()
    info = object_info_from_classes(classes, names)
    assert set(info) == set(classes)
    clash = sorted(set(info) & set(core_info))
    assert not clash, f"pack node ids shadow ComfyUI core nodes: {clash}"
    for nid, entry in info.items():
        for spec in input_specs(entry):
            if spec.type.startswith("EXPP_"):
                assert not spec.widget


def _run_cli(argv: List[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_cli(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_validate_and_convert(tmp_path, capsys, fake_info):
    oi = tmp_path / "oi.json"
    oi.write_text(json.dumps(fake_info))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_fake_workflow(fake_info)))
    bad_ui = _fake_workflow(fake_info)
    _node(bad_ui, 2)["widgets_values"][0] = 11  # factor max is 10
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bad_ui))
    common = ["--object-info", str(oi), "--no-pack"]
    assert _run_cli(["validate-workflow", str(good), *common]) == 0
    assert _run_cli(["validate-workflow", str(good), str(bad), *common]) == 1
    out = capsys.readouterr().out
    assert f"{good}: ok" in out
    assert f"{bad}: error: node 2 (FakeScale) input 'factor': [value_range] 11 is above the maximum 10" in out
    assert _run_cli(["validate-workflow", str(tmp_path / "none.json"), *common]) == 1
    assert "workflow file not found" in capsys.readouterr().out
    out_file = tmp_path / "api.json"
    assert _run_cli(["workflow-to-api", str(good), "-o", str(out_file), *common]) == 0
    assert json.loads(out_file.read_text()) == ui_to_api(json.loads(good.read_text()), fake_info)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert _run_cli(["workflow-to-api", str(bad), "-o", str(tmp_path / "x.json"), *common]) == 0  # range: not a conversion error
    bad_ui2 = _fake_workflow(fake_info)
    _node(bad_ui2, 2)["widgets_values"] = []
    bad.write_text(json.dumps(bad_ui2))
    assert _run_cli(["workflow-to-api", str(bad), "-o", str(tmp_path / "y.json"), *common]) == 1
    assert not (tmp_path / "y.json").exists()


@needs_dump
def test_cli_loads_pack_and_dump(capsys):
    assert _run_cli(["validate-workflow", "-v", str(DATA / "wf_core_valid.json")]) == 0
    out = capsys.readouterr().out
    assert "ComfyUI schemas:" in out and "pack schemas:" in out and "wf_core_valid.json: ok (13 nodes)" in out


@needs_dump
def test_core_video_workflow_runs_through_stand_ins(core_info, tmp_path):
    """LoadVideo -> GetVideoComponents -> (ImageInvert, ours to supply) -> CreateVideo (fps linked
    from the source) -> SaveVideo, plus LoadImage -> SaveImage, run without ComfyUI."""
    import av
    import numpy as np
    import torch
    from PIL import Image

    from expportrait_core.workflow.standins import core_stand_ins, write_mp4

    inp, out = tmp_path / "input", tmp_path / "output"
    inp.mkdir()
    g = torch.Generator().manual_seed(0)
    frames = torch.rand((6, 24, 32, 3), generator=g)
    write_mp4(frames, 12.0, inp / "drive.mp4")
    rgba = (np.random.default_rng(0).random((20, 30, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(inp / "ref.png")

    b = WorkflowBuilder(core_info)
    lv = b.add("LoadVideo", {"file": "drive.mp4"})
    comp = b.add("GetVideoComponents")
    inv = b.add("ImageInvert")
    cv = b.add("CreateVideo", {"fps": 30.0})
    sv = b.add("SaveVideo", {"filename_prefix": "expp/test"})
    li = b.add("LoadImage", {"image": "ref.png"})
    si = b.add("SaveImage", {"filename_prefix": "expp/ref"})
    b.link(lv, 0, comp, "video")
    b.link(comp, "images", inv, "image")
    b.link(inv, 0, cv, "images")
    b.link(comp, "fps", cv, "fps")  # widget input driven by a link
    b.link(cv, 0, sv, "video")
    b.link(li, "IMAGE", si, "images")
    ui = b.to_json()
    assert validate_workflow(ui, core_info) == []
    api = ui_to_api(ui, core_info)
    assert api[str(cv)]["inputs"]["fps"] == [str(comp), 2]

    calls = []

    def invert(image):
        calls.append(tuple(image.shape))
        return (1.0 - image,)

    res = execute_api_prompt(api, {}, overrides={**core_stand_ins(inp, out), "ImageInvert": invert})
    assert calls == [(6, 24, 32, 3)]
    video = Path(res.ui[str(sv)]["videos"][0]["path"])
    assert video.parent == out / "expp" and video.name == "test_00001_.mp4"
    with av.open(str(video)) as c:
        s = c.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        assert float(s.average_rate) == pytest.approx(12.0)
    assert len(decoded) == 6 and decoded[0].shape == (24, 32, 3)
    # inverted content survives the codec roughly (mean brightness flips)
    assert abs(np.mean(decoded[0]) / 255.0 - (1.0 - frames[0].mean().item())) < 0.08
    ref = res.ui[str(si)]["images"][0]["path"]
    with Image.open(ref) as im:
        assert im.size == (30, 20)
        assert np.abs(np.asarray(im, dtype=np.int16) - rgba[..., :3]).max() <= 1
