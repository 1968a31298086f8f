"""The shipped workflows: regenerate identically, validate, and run their ExpPortrait part.

The graph runs through our node classes in topological order with stand-ins for ComfyUI's core
I/O nodes, on the bundled real demo inputs (driving clip trimmed to 9 frames), the synthetic head
and a tiny random generator. ComfyUI's own Wan nodes (control_to_wan) are not executed here; the
graph is validated against their real 0.8.0 schemas and runs up to the control video they take.
"""
import json
import os

import numpy as np
import pytest

from conftest import ROOT

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
N_FRAMES = 9


@pytest.fixture(scope="module")
def object_info():
    from expportrait_core.workflow.cli import build_object_info
    from expportrait_core.workflow.schema import find_object_info_path

    if find_object_info_path() is None:
        pytest.skip("ComfyUI 0.8.0 object_info dump not available")
    info, _ = build_object_info(None, with_pack=True, require_dump=True)
    return info


def test_shipped_workflows_are_current(object_info):
    from expportrait_core.workflow.templates import build_all

    built = build_all(object_info)
    assert {p.stem for p in WORKFLOWS} == set(built), "workflows/ and templates.py disagree on the file set"
    for p in WORKFLOWS:
        assert json.loads(p.read_text()) == json.loads(json.dumps(built[p.stem])), (
            f"{p.name} is stale: run `python -m expportrait_core build-workflows`")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_validates(path, object_info):
    from expportrait_core.workflow import validate_workflow

    problems = [p for p in validate_workflow(json.loads(path.read_text()), object_info) if p.severity == "error"]
    assert not problems, "\n".join(p.message for p in problems)


@pytest.fixture(scope="module")
def graph_env(tmp_path_factory, cache_dir):
    """Input/output folders with the demo footage and a models folder with a tiny generator."""
    from expportrait_core.generator import build_generator, save_generator, tiny_config
    from expportrait_core.io.video import iter_video_frames, write_video

    root = tmp_path_factory.mktemp("graph")
    inp, out, models = root / "input", root / "output", root / "models"
    inp.mkdir()
    out.mkdir()
    (inp / "expportrait_demo_reference.png").write_bytes((ROOT / "assets/demo/reference.png").read_bytes())
    frames = list(iter_video_frames(ROOT / "assets/demo/driving.mp4", N_FRAMES))
    write_video(inp / "expportrait_demo_driving.mp4", np.stack(frames), 30.0)
    save_generator(build_generator(tiny_config("expportrait"), seed=0), models / "expportrait/generator/tiny.safetensors")
    old = os.environ.get("EXPPORTRAIT_MODELS_DIR")
    os.environ["EXPPORTRAIT_MODELS_DIR"] = str(models)
    cwd = os.getcwd()
    os.chdir(root)  # outside ComfyUI, node outputs go to ./output
    yield {"input": inp, "output": out, "models": models}
    os.chdir(cwd)
    if old is None:
        os.environ.pop("EXPPORTRAIT_MODELS_DIR", None)
    else:
        os.environ["EXPPORTRAIT_MODELS_DIR"] = old


class ImageFromBatch:
    """Stand-in for ComfyUI's core ImageFromBatch (same inputs and behaviour)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "batch_index": ("INT",), "length": ("INT",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "frombatch"

    def frombatch(self, image, batch_index, length):
        i = min(batch_index, image.shape[0] - 1)
        return (image[i : i + length].clone(),)


def _prepare(prompt: dict) -> list:
    """Fast settings for the test run; returns the ids of nodes ComfyUI core would run beyond ours."""
    skip = []
    for nid, node in prompt.items():
        ct, ins = node["class_type"], node["inputs"]
        if ct == "ExpPortraitFitIdentity":
            ins["quality"] = "fast"
        elif ct == "ExpPortraitLoadGenerator":
            ins["model"] = "tiny.safetensors"
        elif ct == "ExpPortraitSampler":
            ins["steps"] = 2
    return skip


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs(path, object_info, graph_env):
    import nodes
    from expportrait_core.io.files import load_identity
    from expportrait_core.io.video import probe_video
    from expportrait_core.workflow import execute_api_prompt, ui_to_api
    from expportrait_core.workflow.standins import core_stand_ins

    prompt = ui_to_api(json.loads(path.read_text()), object_info)
    _prepare(prompt)
    stand_ins = core_stand_ins(graph_env["input"], graph_env["output"])
    stand_ins["ImageFromBatch"] = ImageFromBatch
    ours = {nid for nid, n in prompt.items() if n["class_type"] in nodes.NODE_CLASS_MAPPINGS}
    known = ours | {nid for nid, n in prompt.items() if n["class_type"] in stand_ins}
    if path.stem == "expportrait_control_to_wan":
        targets = [nid for nid in ours if prompt[nid]["class_type"] == "ExpPortraitFitControlVideo"]
        prompt = {k: v for k, v in prompt.items() if k in known}
    else:
        assert known == set(prompt), f"unexpected core nodes {set(prompt) - known}"
        targets = None
    before = set(graph_env["output"].rglob("*"))
    res = execute_api_prompt(prompt, nodes.NODE_CLASS_MAPPINGS, stand_ins, targets=targets)
    new = sorted(set(graph_env["output"].rglob("*")) - before)
    videos = [p for p in new if p.suffix == ".mp4"]
    if path.stem in ("expportrait_cross_reenactment", "expportrait_self_reenactment"):
        assert len(videos) == 2, new  # control video + generated video
        for v in videos:
            info = probe_video(v)
            assert info.num_frames == N_FRAMES and abs(info.fps - 30.0) < 0.01
            assert (info.width, info.height) in ((512, 480), (480, 480))
    elif path.stem == "expportrait_control_to_wan":
        (nid,) = targets
        control, w, h, length = res.value(nid, 0), res.value(nid, 1), res.value(nid, 2), res.value(nid, 3)
        assert w % 16 == 0 and h % 16 == 0 and (length - 1) % 4 == 0 and control.shape[0] == length
        assert float(control.mean()) > 0.05, "control video is empty"
    elif path.stem == "expportrait_identity_build":
        saved = [p for p in graph_env["models"].rglob("*.safetensors") if "identities" in str(p)]
        assert saved, "identity was not saved"
        ident = load_identity(saved[0])
        assert ident.betas.abs().sum() > 0 and bool(ident.static_offsets.isfinite().all())
        assert [p for p in new if p.suffix in (".glb", ".obj")], "mesh was not written"
    elif path.stem == "expportrait_expression_editor":
        assert [p for p in new if p.suffix == ".png"], "edited control image was not saved"
