"""Loading and saving generators.

Accepted sources (details and folder names in the README, section "Generator"):

* an **ExpPortrait bundle** — one ``.safetensors`` whose metadata has ``format =
  expportrait-generator`` and the JSON config; it holds some of ``transformer.*`` (diffusers
  names), ``transformer.*.lora_A/B.weight`` (LoRA), ``pose_encoder.*``, ``ref_encoder.*``,
  ``vae.*``, ``clip.*``, ``prompt_embeds``/``negative_prompt_embeds``. Parts it lacks come from the
  ``base``/``vae``/``clip_vision`` arguments (ComfyUI model folders).
* a **diffusers folder** (``transformer/``, ``vae/``, optional ``image_encoder/``, optional
  ``expportrait/expportrait_generator.safetensors`` bundle), as written by :func:`save_generator`
  or published as ``Wan-AI/Wan2.1-I2V-14B-480P-Diffusers``.
* a **single transformer file** from ``ComfyUI/models/diffusion_models`` in original Wan or
  diffusers key names (also fp8 and "scaled fp8"), with ``vae=`` from ``models/vae`` and
  optionally ``clip_vision=`` from ``models/clip_vision``.

Large transformers are built on the ``meta`` device and filled tensor by tensor, so loading a 14B
model never allocates a random-initialised copy.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..errors import ExpPortraitError, MissingModelError
from .checkpoint import (
    BUNDLE_FORMAT,
    LazyTensors,
    check_keys,
    infer_transformer_config,
    save_safetensors,
    wan_transformer_name_map,
    wan_vae_name_map,
    weight_files,
    write_text_atomic,
)
from .clip_vision import ClipVisionEncoder, infer_clip_config, normalise_clip_keys
from .config import ClipVisionConfig, GeneratorConfig
from .encoders import NormalVideoEncoder, ReferenceNormalEncoder
from .lora import LoRA
from .model import Generator, parse_dtype

log = logging.getLogger("expportrait.generator")

PathLike = Union[str, os.PathLike]
BUNDLE_NAME = "expportrait_generator.safetensors"
# Extra modules of Wan2.1-Fun V1.1 checkpoints that ComfyUI's WanFunControlToVideo does not use either.
_IGNORED_TRANSFORMER_PREFIXES = ("ref_conv.", "control_adapter.")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _init_kwargs(cls: type, cfg: Dict[str, Any]) -> Dict[str, Any]:
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    out = {k: v for k, v in cfg.items() if k in names}
    if "patch_size" in out and isinstance(out["patch_size"], list):
        out["patch_size"] = tuple(out["patch_size"])
    return out


def _is_lora_key(k: str) -> bool:
    return ".lora_A." in k or ".lora_B." in k


def _load_into(module: nn.Module, tensors: Dict[str, torch.Tensor], assign: bool) -> None:
    missing, unexpected = module.load_state_dict(tensors, strict=False, assign=assign)
    if missing or unexpected:  # check_keys ran before; this guards against non-persistent surprises
        raise ExpPortraitError(f"internal load mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _materialise_buffers(tr: nn.Module) -> None:
    """Recreate non-persistent buffers left on ``meta`` by meta-device construction (the RoPE tables)."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    for name, mod in list(tr.named_modules()):
        if isinstance(mod, WanRotaryPosEmbed) and any(b.is_meta for b in mod.buffers()):
            new = WanRotaryPosEmbed(mod.attention_head_dim, mod.patch_size, mod.max_seq_len)
            parent = tr.get_submodule(name.rsplit(".", 1)[0]) if "." in name else tr
            setattr(parent, name.rsplit(".", 1)[-1], new)
    left = [n for n, b in tr.named_buffers() if b.is_meta] + [n for n, p in tr.named_parameters() if p.is_meta]
    if left:
        raise ExpPortraitError(f"transformer tensors were not loaded: {left[:5]}")


def _cast_for(tr_cls: type, name: str, t: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    keep = set(getattr(tr_cls, "_keep_in_fp32_modules", None) or [])
    if not t.dtype.is_floating_point:
        return t
    return t.to(torch.float32 if keep & set(name.split(".")) else compute)


# ----------------------------------------------------------------------------------------------
# transformer
# ----------------------------------------------------------------------------------------------
def load_transformer(
    tensors: LazyTensors,
    source: str,
    compute_dtype: torch.dtype,
    config: Optional[Dict[str, Any]] = None,
    prefix: str = "",
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A ``WanTransformer3DModel`` from ``tensors`` (original Wan or diffusers names; optional key prefix).

    ``config`` None → inferred from the shapes. Returns ``(model, config_kwargs)``.
    """
    from diffusers import WanTransformer3DModel

    keys = [k for k in tensors.keys() if k.startswith(prefix) and not _is_lora_key(k)]
    # ComfyUI "scaled fp8" files carry a per-tensor scale next to each fp8 weight
    is_aux = lambda k: k.endswith((".scale_weight", ".scale_input")) or k.endswith("scaled_fp8")  # noqa: E731
    name_map = wan_transformer_name_map([k for k in keys if not is_aux(k)])
    if any(k.startswith("vace_blocks.") for k in name_map):
        raise ExpPortraitError(
            f"'{source}' is a Wan VACE model; it is not supported by this sampler: feed our control video to "
            "ComfyUI's WanVaceToVideo node instead"
        )
    shapes = {k: tensors.shape(v) for k, v in name_map.items()}
    if config is None:
        config = infer_transformer_config(shapes)
    config = _init_kwargs(WanTransformer3DModel, dict(config))
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ignored = [k for k in name_map if k.startswith(_IGNORED_TRANSFORMER_PREFIXES) or "norm_added_q" in k]
    if ignored:
        log.warning("%s: ignoring %d weights of modules this sampler does not use (%s…)", source, len(ignored), ignored[0])
    check_keys(expected, shapes, "transformer", source, ignore_unexpected=lambda k: k in ignored)
    files = {k: name_map[k] for k in expected}
    raw = tensors.get_many(files.values())
    sd = {k: raw[f] for k, f in files.items()}
    for k, f in files.items():
        sk = f[: -len("weight")] + "scale_weight" if f.endswith("weight") else None
        if sk and sk in tensors:
            sd[k] = (sd[k].to(torch.float32) * tensors.get(sk).to(torch.float32)).to(compute_dtype)
    sd = {k: _cast_for(WanTransformer3DModel, k, v, compute_dtype) for k, v in sd.items()}
    _load_into(model, sd, assign=True)
    _materialise_buffers(model)
    return model, config


# ----------------------------------------------------------------------------------------------
# VAE and CLIP
# ----------------------------------------------------------------------------------------------
def load_vae(tensors: LazyTensors, source: str, config: Optional[Dict[str, Any]] = None, prefix: str = "") -> Tuple[nn.Module, Dict[str, Any]]:
    """An ``AutoencoderKLWan`` (fp32) from original-Wan or diffusers-named tensors; ``config`` None → Wan 2.1."""
    from diffusers import AutoencoderKLWan

    keys = [k for k in tensors.keys() if k.startswith(prefix)]
    name_map = wan_vae_name_map([k[len(prefix):] for k in keys])
    name_map = {k: prefix + v for k, v in name_map.items()}
    config = _init_kwargs(AutoencoderKLWan, dict(config or {}))
    vae = AutoencoderKLWan(**config)
    expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    shapes = {k: tensors.shape(v) for k, v in name_map.items()}
    check_keys(expected, shapes, "VAE", source)
    raw = tensors.get_many(name_map[k] for k in expected)
    _load_into(vae, {k: raw[name_map[k]].float() for k in expected}, assign=False)
    return vae, dict(vae.config)


def load_clip(tensors: LazyTensors, source: str, config: Optional[ClipVisionConfig] = None, prefix: str = "") -> Tuple[nn.Module, ClipVisionConfig]:
    """A :class:`ClipVisionEncoder` (fp32) from HF- or OpenCLIP-named tensors."""
    keys = [k for k in tensors.keys() if k.startswith(prefix)]
    if any(k[len(prefix):].startswith("visual.") for k in keys):
        # OpenCLIP layout: q/k/v are fused in the file, so convert real tensors.
        sd = normalise_clip_keys({k[len(prefix):]: tensors.get(k) for k in keys})
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        names: Dict[str, str] = {}
    else:
        sd = None
        names = normalise_clip_keys({k[len(prefix):]: k for k in keys})  # ours -> file name (values are names)
        shapes = {k: tensors.shape(v) for k, v in names.items()}
    if not shapes:
        raise ExpPortraitError(f"'{source}' does not contain a CLIP vision model (no 'vision_model.*' or 'visual.*' keys)")
    if config is None:
        try:
            config = infer_clip_config(shapes)
        except (KeyError, ValueError) as e:
            raise ExpPortraitError(f"'{source}' is not a complete CLIP vision model (missing {e})") from None
    with torch.device("meta"):
        clip = ClipVisionEncoder(config)
    expected = {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    check_keys(expected, shapes, "CLIP vision", source)
    if sd is None:
        raw = tensors.get_many(names[k] for k in expected)
        sd = {k: raw[names[k]] for k in expected}
    _load_into(clip, {k: sd[k].float() for k in expected}, assign=True)
    return clip, config


def _folder_config(folder: Path) -> Dict[str, Any]:
    f = folder / "config.json"
    if not f.is_file():
        raise ExpPortraitError(f"'{folder}' has no config.json; not a diffusers/transformers model folder")
    return json.loads(f.read_text())


def _open(path: PathLike, what: str) -> Tuple[LazyTensors, Optional[Dict[str, Any]], str]:
    """A file or a model folder → (tensors, folder config or None, description)."""
    p = Path(path)
    if p.is_dir():
        stem = "model" if (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file() else "diffusion_pytorch_model"
        return LazyTensors(weight_files(p, stem)), _folder_config(p), str(p)
    if p.is_file():
        return LazyTensors([p]), None, str(p)
    raise MissingModelError(what, str(p.parent), p.name)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def read_prompt_embeds(path: PathLike) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(prompt_embeds [L, D], negative_prompt_embeds or None)`` from a file written by :func:`save_prompt_embeds`."""
    t = LazyTensors([path])
    if "prompt_embeds" not in t:
        raise ExpPortraitError(f"'{path}' has no 'prompt_embeds' tensor; write it with save_prompt_embeds()")
    neg = t.get("negative_prompt_embeds") if "negative_prompt_embeds" in t else None
    return t.get("prompt_embeds"), neg


def save_prompt_embeds(path: PathLike, prompt_embeds: torch.Tensor, negative_prompt_embeds: Optional[torch.Tensor] = None, prompt: str = "") -> None:
    """Cache text-encoder output (``[L, D]`` or ``[1, L, D]``) so later runs need no text encoder."""
    t = {"prompt_embeds": prompt_embeds.detach().float().reshape(-1, prompt_embeds.shape[-1])}
    if negative_prompt_embeds is not None:
        t["negative_prompt_embeds"] = negative_prompt_embeds.detach().float().reshape(-1, negative_prompt_embeds.shape[-1])
    save_safetensors(t, path, {"format": "expportrait-prompt-embeds", "prompt": prompt})


def _layout_for(in_channels: int, z: int, has_encoders: bool) -> str:
    if in_channels == 3 * z:
        return "fun_control"
    if in_channels == 2 * z + 4:
        return "expportrait" if has_encoders else "i2v"
    raise ExpPortraitError(
        f"transformer with {in_channels} input channels is not an image-to-video ({2 * z + 4}) or Fun-Control "
        f"({3 * z}) Wan model; text-to-video checkpoints cannot take a reference image — use Wan2.1-I2V or Wan2.1-Fun-Control"
    )


def load_generator(
    path_or_dir: Optional[PathLike] = None,
    *,
    base: Optional[PathLike] = None,
    vae: Optional[PathLike] = None,
    clip_vision: Optional[PathLike] = None,
    prompt_embeds: Optional[PathLike] = None,
    dtype: str = "bf16",
    device: str = "cpu",
    offload: Union[bool, str] = False,
    vae_dtype: Optional[str] = None,
    merge_lora: Optional[bool] = None,
) -> Generator:
    """Load a generator (see the module docstring for accepted sources).

    Args:
        path_or_dir: ExpPortrait bundle, diffusers folder, or a transformer file; None → ``base``.
        base: the Wan transformer (file or folder) when the bundle does not contain one.
        vae: Wan 2.1 VAE file/folder when not in the bundle/folder (ComfyUI ``models/vae``).
        clip_vision: CLIP ViT-H file/folder (ComfyUI ``models/clip_vision``); without it, models with
            an image branch get a zero image embedding (VideoX-Fun's behaviour without a CLIP image).
        prompt_embeds: cached text embeddings (:func:`save_prompt_embeds`); None → neutral (zeros).
        dtype: ``fp32``, ``bf16``, ``fp16``, ``fp8_e4m3fn``/``fp8_e5m2`` (fp8 weight storage, bf16 compute).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1`` …; offload: see :class:`Generator`.
        merge_lora: fold LoRA into the weights (default: yes unless fp8 storage).
    """
    if path_or_dir is None and base is None:
        raise ExpPortraitError("load_generator needs a model path (bundle, folder or transformer file) or base=")
    from diffusers import AutoencoderKLWan

    storage, compute = parse_dtype(dtype)
    src = Path(path_or_dir) if path_or_dir is not None else Path(base)
    if not src.exists():
        raise MissingModelError("generator model", str(src.parent), src.name)

    bundle: Optional[LazyTensors] = None
    cfg: Optional[GeneratorConfig] = None
    folder: Optional[Path] = None
    transformer_src: Optional[PathLike] = None
    if src.is_dir():
        folder = src
        if (src / "transformer").is_dir():
            transformer_src = src / "transformer"
        elif (src / "config.json").is_file():
            transformer_src = src
        if (src / "expportrait" / BUNDLE_NAME).is_file():
            bundle = LazyTensors([src / "expportrait" / BUNDLE_NAME])
        if transformer_src is None and bundle is None:
            raise ExpPortraitError(f"'{src}' is neither a diffusers folder (transformer/) nor contains expportrait/{BUNDLE_NAME}")
    else:
        lt = LazyTensors([src])
        if lt.metadata.get("format") == BUNDLE_FORMAT:
            bundle = lt
        else:
            transformer_src = src
    if bundle is not None:
        try:
            cfg = GeneratorConfig.from_json(bundle.metadata["config"])
        except Exception as e:
            raise ExpPortraitError(f"ExpPortrait bundle has an unreadable config ({e}); re-export it") from None
    parts = set((bundle.metadata.get("parts", "") if bundle else "").split(",")) - {""}

    # --- transformer ---------------------------------------------------------------------------
    tr_cfg_hint = dict(cfg.transformer) if cfg else None
    if "transformer" in parts:
        transformer, tr_cfg = load_transformer(bundle, str(bundle.files[0]), compute, tr_cfg_hint, prefix="transformer.")
    else:
        t_src = transformer_src if transformer_src is not None else base
        if t_src is None:
            raise MissingModelError(
                "base Wan transformer for this ExpPortrait model", "models/diffusion_models",
                (bundle.metadata.get("base_name") if bundle else None) or "a Wan2.1 I2V transformer (.safetensors)",
            )
        tensors, fcfg, desc = _open(t_src, "Wan transformer")
        transformer, tr_cfg = load_transformer(tensors, desc, compute, fcfg)
        if cfg is not None:
            want = {k: v for k, v in cfg.transformer.items() if k in ("in_channels", "num_layers", "num_attention_heads", "attention_head_dim", "image_dim")}
            got = {k: tr_cfg.get(k) for k in want}
            if {k: (tuple(v) if isinstance(v, list) else v) for k, v in want.items()} != got:
                raise ExpPortraitError(
                    f"base transformer '{desc}' does not match the one this ExpPortrait model was trained on: "
                    f"expected {want}, got {got}"
                )

    # --- VAE -----------------------------------------------------------------------------------
    vae_cfg_hint = dict(cfg.vae) if cfg else None
    if "vae" in parts:
        vae_mod, vae_cfg = load_vae(bundle, str(bundle.files[0]), vae_cfg_hint, prefix="vae.")
    else:
        v_src = vae if vae is not None else (folder / "vae" if folder is not None and (folder / "vae").is_dir() else None)
        if v_src is None:
            raise MissingModelError("Wan 2.1 VAE", "models/vae", "wan_2.1_vae.safetensors",
                                    "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged")
        tensors, fcfg, desc = _open(v_src, "Wan 2.1 VAE")
        vae_mod, vae_cfg = load_vae(tensors, desc, fcfg if fcfg is not None else vae_cfg_hint)

    # --- CLIP ----------------------------------------------------------------------------------
    clip_mod = None
    clip_cfg = cfg.clip if cfg else None
    if tr_cfg.get("image_dim") is not None:
        if "clip" in parts:
            clip_mod, clip_cfg = load_clip(bundle, str(bundle.files[0]), clip_cfg, prefix="clip.")
        else:
            c_src = clip_vision if clip_vision is not None else (
                folder / "image_encoder" if folder is not None and (folder / "image_encoder").is_dir() else None)
            if c_src is not None:
                tensors, fcfg, desc = _open(c_src, "CLIP vision model")
                clip_mod, clip_cfg = load_clip(tensors, desc, ClipVisionConfig.from_hf(fcfg) if fcfg else None)
            else:
                log.warning("no CLIP vision model given: image cross-attention gets a zero embedding "
                            "(put clip_vision_h.safetensors in models/clip_vision for better identity)")

    # --- layout, encoders, LoRA ---------------------------------------------------------------------
    z = int(vae_cfg.get("z_dim", 16))
    has_enc = bool(bundle) and any(k.startswith("pose_encoder.") for k in bundle.keys())
    layout = _layout_for(int(tr_cfg["in_channels"]), z, has_enc)
    gcfg = GeneratorConfig(
        layout=layout,
        transformer=dict(tr_cfg),
        vae=dict(_init_kwargs(AutoencoderKLWan, vae_cfg)),
        clip=clip_cfg if tr_cfg.get("image_dim") is not None else None,
        encoder=cfg.encoder if (cfg and layout == "expportrait") else None,
        flow_shift=cfg.flow_shift if cfg else 3.0,
        cfg_on=cfg.cfg_on if cfg else ("control+reference" if layout == "expportrait" else "text"),
    )
    try:
        gcfg.validate()
    except ValueError as e:
        raise ExpPortraitError(f"the model parts do not fit together: {e}") from None
    pose = ref = None
    lora = None
    pe = ne = None
    if bundle is not None:
        bsrc = str(bundle.files[0])
        if layout == "expportrait":
            pose, ref = NormalVideoEncoder(gcfg.encoder), ReferenceNormalEncoder(gcfg.encoder)
            for name, mod in (("pose_encoder", pose), ("ref_encoder", ref)):
                keys = [k for k in bundle.keys() if k.startswith(name + ".")]
                exp = {name + "." + k: tuple(v.shape) for k, v in mod.state_dict().items()}
                check_keys(exp, {k: bundle.shape(k) for k in keys}, name.replace("_", " "), bsrc)
                raw = bundle.get_many(exp)
                _load_into(mod, {k[len(name) + 1:]: v for k, v in raw.items()}, assign=False)
        lora_keys = [k for k in bundle.keys() if _is_lora_key(k)]
        if lora_keys:
            alpha = float(bundle.metadata["lora_alpha"]) if "lora_alpha" in bundle.metadata else None
            try:
                lora = LoRA.from_peft_state_dict(transformer, bundle.get_many(lora_keys), alpha=alpha)
            except ValueError as e:
                raise ExpPortraitError(f"LoRA in '{bsrc}' does not fit the transformer: {e}") from None
            if merge_lora if merge_lora is not None else storage == compute:
                lora.to(torch.float32)
                lora.merge()
                lora = None
        if "prompt_embeds" in bundle:
            pe = bundle.get("prompt_embeds")
            ne = bundle.get("negative_prompt_embeds") if "negative_prompt_embeds" in bundle else None
    if prompt_embeds is not None:
        pe, ne = read_prompt_embeds(prompt_embeds)
    return Generator(
        gcfg, transformer, vae_mod, clip_mod, pose, ref, lora, pe, ne,
        device=device, dtype=dtype, vae_dtype=vae_dtype, offload=offload,
    )


def _tensors(prefix: str, module: nn.Module) -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in module.state_dict().items()}


def _bundle_tensors(gen: Generator, parts: List[str]) -> Dict[str, torch.Tensor]:
    t: Dict[str, torch.Tensor] = {}
    if "transformer" in parts:
        t.update(_tensors("transformer.", gen.transformer))
    if "vae" in parts:
        t.update(_tensors("vae.", gen.vae))
    if "clip" in parts and gen.clip is not None:
        t.update(_tensors("clip.", gen.clip))
    if gen.pose_encoder is not None:
        t.update(_tensors("pose_encoder.", gen.pose_encoder))
        t.update(_tensors("ref_encoder.", gen.ref_encoder))
    if gen.lora is not None:
        t.update(gen.lora.peft_state_dict())
    if gen.prompt_embeds is not None:
        t["prompt_embeds"] = gen.prompt_embeds.float()
        if gen.negative_prompt_embeds is not None:
            t["negative_prompt_embeds"] = gen.negative_prompt_embeds.float()
    return t


def _bundle_meta(gen: Generator, parts: List[str], base_name: str = "") -> Dict[str, str]:
    meta = {"format": BUNDLE_FORMAT, "version": "1", "config": gen.config.to_json(), "parts": ",".join(parts)}
    if gen.lora is not None:
        meta["lora_alpha"] = str(gen.lora.alpha)
        meta["lora_rank"] = str(gen.lora.rank)
    if base_name:
        meta["base_name"] = base_name
    return meta


def save_generator(gen: Generator, path: PathLike, include: Optional[List[str]] = None, base_name: str = "") -> Path:
    """Save ``gen`` atomically.

    ``path`` ending in ``.safetensors`` → one ExpPortrait bundle holding the parts in ``include``
    (default: ``transformer``, ``vae``, ``clip``; encoders, LoRA and prompt embeddings are always
    stored). Any other path → a diffusers-style folder (``transformer/``, ``vae/``,
    ``image_encoder/``, ``expportrait/expportrait_generator.safetensors``).
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        parts = list(include) if include is not None else ["transformer", "vae", "clip"]
        if gen.clip is None and "clip" in parts:
            parts.remove("clip")
        save_safetensors(_bundle_tensors(gen, parts), p, _bundle_meta(gen, parts, base_name))
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent))
    try:
        (tmp / "transformer").mkdir()
        write_text_atomic(tmp / "transformer" / "config.json", json.dumps(
            {"_class_name": "WanTransformer3DModel", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in gen.config.transformer.items()}}, indent=2))
        save_safetensors(gen.transformer.state_dict(), tmp / "transformer" / "diffusion_pytorch_model.safetensors")
        (tmp / "vae").mkdir()
        write_text_atomic(tmp / "vae" / "config.json", json.dumps({"_class_name": "AutoencoderKLWan", **gen.config.vae}, indent=2))
        save_safetensors(gen.vae.state_dict(), tmp / "vae" / "diffusion_pytorch_model.safetensors")
        if gen.clip is not None:
            (tmp / "image_encoder").mkdir()
            c = gen.config.clip
            hf = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", **{
                k: getattr(c, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                                           "patch_size", "image_size", "layer_norm_eps", "hidden_act")}}
            write_text_atomic(tmp / "image_encoder" / "config.json", json.dumps(hf, indent=2))
            save_safetensors(gen.clip.state_dict(), tmp / "image_encoder" / "model.safetensors")
        extra = _bundle_tensors(gen, [])
        if extra or gen.config.layout == "expportrait":
            save_safetensors(extra, tmp / "expportrait" / BUNDLE_NAME, _bundle_meta(gen, [], base_name))
        write_text_atomic(tmp / "model_index.json", json.dumps({"_class_name": "ExpPortraitGenerator", "layout": gen.config.layout}))
        if p.exists():
            old = p.with_name(p.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(p, old)
            os.replace(tmp, p)
            shutil.rmtree(old)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return p


__all__ = ["load_clip", "load_generator", "load_transformer", "load_vae", "read_prompt_embeds", "save_generator", "save_prompt_embeds"]
