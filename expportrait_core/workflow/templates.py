"""The shipped example workflows (``workflows/*.json``), generated from the node schemas.

``python -m expportrait_core build-workflows`` rewrites them; a test checks the shipped files
equal what this module builds, validate against ComfyUI 0.8.0 + our schemas, and run.
Each workflow runs as shipped with the synthetic demo head and the demo inputs the pack copies into
ComfyUI's ``input`` folder (``expportrait_demo_reference.png``, ``expportrait_demo_driving.mp4``);
Note nodes say which real model file goes in which folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Dict

from .build import WorkflowBuilder

DEMO_REFERENCE = "expportrait_demo_reference.png"
DEMO_DRIVING = "expportrait_demo_driving.mp4"
SYNTHETIC = "(synthetic demo head)"

MODELS_NOTE = (
    "## Model files\n"
    "- **SMPL-X** (licence-gated, free registration at smpl-x.is.tue.mpg.de): put `SMPLX_NEUTRAL_2020.npz` in "
    "`ComfyUI/models/smplx/` and pick it in *ExpPortrait Load SMPL-X*. The shipped default, "
    "'(synthetic demo head)', is a generated stand-in so the graph runs without downloads.\n"
    "- **Face analysis**: works offline with dlib (`pip install dlib-bin face_recognition_models`); for insightface put "
    "a pack such as `buffalo_l/` in `ComfyUI/models/insightface/models/`.\n"
    "- **Generator**: an ExpPortrait checkpoint in `ComfyUI/models/expportrait/generator/`, or a Wan2.1 "
    "diffusers folder / single file in `ComfyUI/models/diffusion_models/` with its VAE in `models/vae/`.\n"
    "- **Transfer module** (optional): `ComfyUI/models/expportrait/transfer/*.safetensors`; 'auto' falls back to "
    "deformation transfer without it.\n"
    "Demo inputs `expportrait_demo_reference.png` and `expportrait_demo_driving.mp4` are copied into "
    "`ComfyUI/input/` when the pack loads (real footage from LivePortrait's examples, MIT)."
)

COL = 380.0


def _pos(col: int, row: int) -> list:
    return [40.0 + COL * col, 80.0 + 300.0 * row]


def _head_and_face(b: WorkflowBuilder, col: int = 0) -> tuple:
    proxy = b.add("ExpPortraitLoadSMPLX", {"model_name": SYNTHETIC}, pos=_pos(col, 0))
    face = b.add("ExpPortraitFaceAnalyzer", {"backend": "auto"}, pos=_pos(col, 1))
    return proxy, face


def _driving(b: WorkflowBuilder, col: int, row: int) -> tuple:
    vid = b.add("LoadVideo", {"file": DEMO_DRIVING}, pos=_pos(col, row))
    comp = b.add("GetVideoComponents", pos=_pos(col, row + 1))
    b.link(vid, "VIDEO", comp, "video")
    return vid, comp


def _track_transfer_render(b: WorkflowBuilder, proxy: int, face: int, identity: int, frames: tuple, fps: tuple,
                           col: int) -> tuple:
    track = b.add("ExpPortraitTrackDrivingVideo", {"mode": "fast"}, pos=_pos(col, 0))
    b.link(proxy, 0, track, "proxy")
    b.link(frames[0], frames[1], track, "images")
    b.link(face, 0, track, "face_analyzer")
    b.link(fps[0], fps[1], track, "fps")
    transfer = b.add("ExpPortraitTransferExpression", {"method": "auto"}, pos=_pos(col + 1, 0))
    b.link(proxy, 0, transfer, "proxy")
    b.link(identity, 0, transfer, "identity")
    b.link(track, 0, transfer, "motion")
    render = b.add("ExpPortraitRenderProxy", pos=_pos(col + 1, 1))
    b.link(proxy, 0, render, "proxy")
    b.link(identity, 0, render, "identity")
    b.link(transfer, 0, render, "motion")
    return track, transfer, render


def _save_video(b: WorkflowBuilder, images: tuple, fps: tuple, prefix: str, col: int, row: int) -> tuple:
    cv = b.add("CreateVideo", pos=_pos(col, row))
    b.link(images[0], images[1], cv, "images")
    b.link(fps[0], fps[1], cv, "fps")
    sv = b.add("SaveVideo", {"filename_prefix": prefix}, pos=_pos(col, row + 1))
    b.link(cv, "VIDEO", sv, "video")
    return cv, sv


def _generate(b: WorkflowBuilder, reference: tuple, control: int, col: int) -> tuple:
    gen = b.add("ExpPortraitLoadGenerator", pos=_pos(col, 0))
    snap = b.add("ExpPortraitFitControlVideo", pos=_pos(col, 1))
    b.link(control, 0, snap, "control_video")
    samp = b.add("ExpPortraitSampler", pos=_pos(col + 1, 0), control="fixed")
    b.link(gen, 0, samp, "generator")
    b.link(reference[0], reference[1], samp, "reference_image")
    b.link(snap, 0, samp, "control_video")
    return gen, snap, samp


def cross_reenactment(info: Dict[str, Any]) -> dict:
    b = WorkflowBuilder(info)
    b.note(MODELS_NOTE, markdown=True, pos=[40.0, -300.0], width=700.0)
    proxy, face = _head_and_face(b)
    ref = b.add("LoadImage", {"image": DEMO_REFERENCE}, pos=_pos(1, 0))
    fit = b.add("ExpPortraitFitIdentity", pos=_pos(1, 1), control="fixed")
    b.link(proxy, 0, fit, "proxy")
    b.link(ref, 0, fit, "image")
    b.link(face, 0, fit, "face_analyzer")
    prev = b.add("PreviewImage", pos=_pos(1, 2))
    b.link(fit, 1, prev, "images")
    vid, comp = _driving(b, 2, 0)
    track, transfer, render = _track_transfer_render(b, proxy, face, fit, (comp, 0), (comp, 2), 3)
    _, cs = _save_video(b, (render, 0), (comp, 2), "expportrait/control", 4, 2)
    gen, snap, samp = _generate(b, (ref, 0), render, 5)
    _, sv = _save_video(b, (samp, 0), (comp, 2), "expportrait/portrait", 6, 1)
    b.group("1. Head proxy and face analysis", [proxy, face])
    b.group("2. Reference identity", [ref, fit, prev])
    b.group("3. Driving video", [vid, comp])
    b.group("4. Track, transfer, render control", [track, transfer, render, cs])
    b.group("5. Generate", [gen, snap, samp, sv])
    return b.to_json()


def self_reenactment(info: Dict[str, Any]) -> dict:
    b = WorkflowBuilder(info)
    b.note(MODELS_NOTE + "\n\nSelf-reenactment: the reference is frame `batch_index` of the driving video itself.",
           markdown=True, pos=[40.0, -300.0], width=700.0)
    proxy, face = _head_and_face(b)
    vid, comp = _driving(b, 1, 0)
    first = b.add("ImageFromBatch", {"batch_index": 0, "length": 1}, pos=_pos(1, 2))
    b.link(comp, 0, first, "image")
    fit = b.add("ExpPortraitFitIdentity", pos=_pos(2, 1), control="fixed")
    b.link(proxy, 0, fit, "proxy")
    b.link(first, 0, fit, "image")
    b.link(face, 0, fit, "face_analyzer")
    track, transfer, render = _track_transfer_render(b, proxy, face, fit, (comp, 0), (comp, 2), 3)
    _, cs = _save_video(b, (render, 0), (comp, 2), "expportrait/self_control", 4, 2)
    gen, snap, samp = _generate(b, (first, 0), render, 5)
    _, sv = _save_video(b, (samp, 0), (comp, 2), "expportrait/self_portrait", 6, 1)
    b.group("1. Head proxy and face analysis", [proxy, face])
    b.group("2. One person's video; its first frame is the reference", [vid, comp, first, fit])
    b.group("3. Track, transfer, render control", [track, transfer, render, cs])
    b.group("4. Generate", [gen, snap, samp, sv])
    return b.to_json()


def identity_build(info: Dict[str, Any]) -> dict:
    b = WorkflowBuilder(info)
    b.note(MODELS_NOTE + "\n\nFits the reference once and saves it to `ComfyUI/models/expportrait/identities/` for "
           "reuse with *ExpPortrait Load Identity*.", markdown=True, pos=[40.0, -300.0], width=700.0)
    proxy, face = _head_and_face(b)
    ref = b.add("LoadImage", {"image": DEMO_REFERENCE}, pos=_pos(1, 0))
    fit = b.add("ExpPortraitFitIdentity", pos=_pos(2, 0), control="fixed")
    b.link(proxy, 0, fit, "proxy")
    b.link(ref, 0, fit, "image")
    b.link(face, 0, fit, "face_analyzer")
    prev = b.add("PreviewImage", pos=_pos(3, 0))
    b.link(fit, 1, prev, "images")
    render = b.add("ExpPortraitRenderProxy", pos=_pos(3, 1))
    b.link(proxy, 0, render, "proxy")
    b.link(fit, 0, render, "identity")
    prev2 = b.add("PreviewImage", pos=_pos(4, 1))
    b.link(render, 0, prev2, "images")
    save = b.add("ExpPortraitSaveIdentity", {"name": "reference_identity"}, pos=_pos(2, 1))
    b.link(fit, 0, save, "identity")
    mesh = b.add("ExpPortraitSaveMesh", {"filename_prefix": "expportrait/reference_mesh"}, pos=_pos(2, 2))
    b.link(proxy, 0, mesh, "proxy")
    b.link(fit, 0, mesh, "identity")
    b.group("1. Inputs", [proxy, face, ref])
    b.group("2. Fit, preview, save", [fit, prev, render, prev2, save, mesh])
    return b.to_json()


def expression_editor(info: Dict[str, Any]) -> dict:
    b = WorkflowBuilder(info)
    b.note(MODELS_NOTE + "\n\nPose a portrait without any driving video: drag the sliders of *ExpPortrait Expression "
           "Editor*; its preview updates on Queue.", markdown=True, pos=[40.0, -300.0], width=700.0)
    proxy, face = _head_and_face(b)
    ref = b.add("LoadImage", {"image": DEMO_REFERENCE}, pos=_pos(1, 0))
    fit = b.add("ExpPortraitFitIdentity", pos=_pos(1, 1), control="fixed")
    b.link(proxy, 0, fit, "proxy")
    b.link(ref, 0, fit, "image")
    b.link(face, 0, fit, "face_analyzer")
    edit = b.add("ExpPortraitExpressionEditor", {"jaw_open": 0.4, "expression_1": 1.0, "head_yaw": 10.0}, pos=_pos(2, 0))
    b.link(proxy, 0, edit, "proxy")
    b.link(fit, 0, edit, "identity")
    render = b.add("ExpPortraitRenderProxy", pos=_pos(3, 0))
    b.link(proxy, 0, render, "proxy")
    b.link(fit, 0, render, "identity")
    b.link(edit, 0, render, "motion")
    save = b.add("SaveImage", {"filename_prefix": "expportrait/edited_control"}, pos=_pos(4, 0))
    b.link(render, 0, save, "images")
    b.group("1. Reference", [proxy, face, ref, fit])
    b.group("2. Edit and render the control image", [edit, render, save])
    return b.to_json()


def control_to_wan(info: Dict[str, Any]) -> dict:
    b = WorkflowBuilder(info)
    b.note(MODELS_NOTE + "\n\n## Wan Fun-Control (ComfyUI core nodes)\n- `models/diffusion_models/`: a Wan2.1 Fun-Control "
           "model (e.g. `wan2.1_fun_control_1.3B_bf16.safetensors`)\n- `models/text_encoders/`: "
           "`umt5_xxl_fp8_e4m3fn_scaled.safetensors`\n- `models/vae/`: `wan_2.1_vae.safetensors`\n"
           "- `models/clip_vision/`: `clip_vision_h.safetensors`\nOur normal maps go in as `control_video`; "
           "*ExpPortrait Fit Control Video* snaps sides to multiples of 16 and the length to 4k+1 frames.",
           markdown=True, pos=[40.0, -380.0], width=700.0)
    proxy, face = _head_and_face(b)
    ref = b.add("LoadImage", {"image": DEMO_REFERENCE}, pos=_pos(1, 0))
    fit = b.add("ExpPortraitFitIdentity", pos=_pos(1, 1), control="fixed")
    b.link(proxy, 0, fit, "proxy")
    b.link(ref, 0, fit, "image")
    b.link(face, 0, fit, "face_analyzer")
    vid, comp = _driving(b, 2, 0)
    track, transfer, render = _track_transfer_render(b, proxy, face, fit, (comp, 0), (comp, 2), 3)
    snap = b.add("ExpPortraitFitControlVideo", pos=_pos(4, 2))
    b.link(render, 0, snap, "control_video")
    unet = b.add("UNETLoader", {"unet_name": "wan2.1_fun_control_1.3B_bf16.safetensors"}, pos=_pos(5, 0))
    shift = b.add("ModelSamplingSD3", {"shift": 8.0}, pos=_pos(5, 1))
    b.link(unet, 0, shift, "model")
    clip = b.add("CLIPLoader", {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan"}, pos=_pos(5, 2))
    pos_t = b.add("CLIPTextEncode", {"text": "a person talking, natural expressions, high quality portrait video"},
                  pos=_pos(6, 0))
    neg_t = b.add("CLIPTextEncode", {"text": "blurry, distorted face, static"}, pos=_pos(6, 1))
    b.link(clip, 0, pos_t, "clip")
    b.link(clip, 0, neg_t, "clip")
    vae = b.add("VAELoader", {"vae_name": "wan_2.1_vae.safetensors"}, pos=_pos(6, 2))
    cvl = b.add("CLIPVisionLoader", {"clip_name": "clip_vision_h.safetensors"}, pos=_pos(7, 2))
    cve = b.add("CLIPVisionEncode", {"crop": "none"}, pos=_pos(7, 3))
    b.link(cvl, 0, cve, "clip_vision")
    b.link(ref, 0, cve, "image")
    wan = b.add("WanFunControlToVideo", pos=_pos(7, 0))
    b.link(pos_t, 0, wan, "positive")
    b.link(neg_t, 0, wan, "negative")
    b.link(vae, 0, wan, "vae")
    b.link(snap, 1, wan, "width")
    b.link(snap, 2, wan, "height")
    b.link(snap, 3, wan, "length")
    b.link(cve, 0, wan, "clip_vision_output")
    b.link(ref, 0, wan, "start_image")
    b.link(snap, 0, wan, "control_video")
    ks = b.add("KSampler", {"steps": 20, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple"}, pos=_pos(8, 0),
               control="fixed")
    b.link(shift, 0, ks, "model")
    b.link(wan, 0, ks, "positive")
    b.link(wan, 1, ks, "negative")
    b.link(wan, 2, ks, "latent_image")
    dec = b.add("VAEDecode", pos=_pos(8, 1))
    b.link(ks, 0, dec, "samples")
    b.link(vae, 0, dec, "vae")
    _, sv = _save_video(b, (dec, 0), (comp, 2), "expportrait/wan_fun_control", 9, 0)
    b.group("1. ExpPortrait control video", [proxy, face, ref, fit, vid, comp, track, transfer, render, snap])
    b.group("2. Wan Fun-Control (core nodes)", [unet, shift, clip, pos_t, neg_t, vae, cvl, cve, wan, ks, dec, sv])
    return b.to_json()


TEMPLATES: Dict[str, Callable[[Dict[str, Any]], dict]] = {
    "expportrait_cross_reenactment": cross_reenactment,
    "expportrait_self_reenactment": self_reenactment,
    "expportrait_identity_build": identity_build,
    "expportrait_expression_editor": expression_editor,
    "expportrait_control_to_wan": control_to_wan,
}


def build_all(object_info: Dict[str, Any]) -> Dict[str, dict]:
    return {name: fn(object_info) for name, fn in TEMPLATES.items()}


def _run(args: argparse.Namespace) -> int:
    from .cli import build_object_info, write_json_atomic

    info, _ = build_object_info(args.object_info, with_pack=True, require_dump=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, wf in build_all(info).items():
        path = out / f"{name}.json"
        write_json_atomic(path, wf)
        print(f"wrote {path}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-workflows", help="regenerate the shipped example workflows in workflows/")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "workflows"))
    p.add_argument("--object-info", default=None, help="ComfyUI object_info JSON (default: the 0.8.0 dump)")
    p.set_defaults(func=_run)
