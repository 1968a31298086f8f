"""Checkpoint files: safe reading/writing, validation with clear errors, and key mapping.

* Only ``.safetensors`` (and ``torch.load(weights_only=True)`` for ``.pt/.pth/.bin``) are read;
  nothing can run code.
* A truncated or corrupt safetensors file is detected from its header before any tensor is read,
  and reported with the expected and actual byte counts.
* Key sets are compared with what the model expects; a mismatch names the missing, unexpected and
  wrongly shaped keys.
* Original Wan 2.1 key names (as in ComfyUI ``models/diffusion_models`` and ``models/vae`` files,
  optionally prefixed ``model.diffusion_model.``) are mapped to diffusers names with diffusers' own
  converters, applied to *names only* so that tensors are read lazily one by one.
"""
from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ..errors import ExpPortraitError
from ..io.atomic import save_safetensors_atomic, write_text_atomic

log = logging.getLogger("expportrait.generator")

SAFE_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
BUNDLE_FORMAT = "expportrait-generator"


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def check_safetensors(path: os.PathLike) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Validate a safetensors file's header and size; return ``(tensor_index, metadata)``.

    Raises :class:`ExpPortraitError` naming the file when it is empty, truncated or not a
    safetensors file.
    """
    p = Path(path)
    size = p.stat().st_size
    fix = "re-download or re-export it"
    if size < 8:
        raise ExpPortraitError(f"'{p}' is not a valid safetensors file ({size} bytes): {fix}.")
    with open(p, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > 100_000_000:
            raise ExpPortraitError(
                f"'{p}' is truncated or not a safetensors file: its header claims {n} bytes but the file has "
                f"{size} bytes; {fix}."
            )
        try:
            header = json.loads(f.read(n))
        except Exception as e:  # malformed JSON
            raise ExpPortraitError(f"'{p}' has a corrupt safetensors header ({e}); {fix}.") from None
    meta = header.pop("__metadata__", None) or {}
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    expected = 8 + n + end
    if size < expected:
        raise ExpPortraitError(
            f"'{p}' is truncated: its header needs {expected} bytes but the file has {size} bytes "
            f"({expected - size} missing); {fix}."
        )
    return header, meta


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """A copy in fresh memory when ``t`` is not 64-byte aligned.

    safetensors returns views at arbitrary file offsets; CPU GEMM kernels pick different code
    paths for unaligned operands, which changes results in the last bit. Aligned weights make a
    save → load round trip bit-identical.
    """
    return t.clone() if t.data_ptr() % 64 else t


class LazyTensors:
    """Read-only mapping ``name -> tensor`` over one or more safetensors/torch files, read on access."""

    def __init__(self, files: Iterable[os.PathLike]) -> None:
        self.files = [Path(f) for f in files]
        self._where: Dict[str, Path] = {}
        self._shapes: Dict[str, Tuple[int, ...]] = {}
        self._dtypes: Dict[str, str] = {}
        self._torch: Dict[Path, Dict[str, torch.Tensor]] = {}
        self.metadata: Dict[str, str] = {}
        for f in self.files:
            if not f.is_file():
                raise ExpPortraitError(f"checkpoint file '{f}' does not exist")
            if f.suffix in SAFE_SUFFIXES:
                index, meta = check_safetensors(f)
                self.metadata.update(meta)
                for k, v in index.items():
                    self._where[k] = f
                    self._shapes[k] = tuple(v["shape"])
                    self._dtypes[k] = v["dtype"]
            elif f.suffix in TORCH_SUFFIXES:
                try:
                    sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                except Exception as e:
                    raise ExpPortraitError(
                        f"'{f}' could not be read as a weights-only torch file ({type(e).__name__}: {e}); "
                        "convert it to .safetensors or re-download it."
                    ) from None
                if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
                    sd = sd["state_dict"]
                sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
                self._torch[f] = sd
                for k, v in sd.items():
                    self._where[k] = f
                    self._shapes[k] = tuple(v.shape)
                    self._dtypes[k] = str(v.dtype)
            else:
                raise ExpPortraitError(f"unsupported weights file '{f}': use .safetensors (or a .pt/.pth state dict)")

    def keys(self) -> List[str]:
        return list(self._where)

    def __contains__(self, k: str) -> bool:
        return k in self._where

    def shape(self, k: str) -> Tuple[int, ...]:
        return self._shapes[k]

    def dtype(self, k: str) -> str:
        return self._dtypes[k]

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        return dict(self._shapes)

    def get(self, k: str) -> torch.Tensor:
        f = self._where[k]
        if f in self._torch:
            return self._torch[f][k]
        from safetensors import safe_open

        try:
            with safe_open(str(f), framework="pt", device="cpu") as h:
                return _aligned(h.get_tensor(k))
        except Exception as e:
            raise ExpPortraitError(f"could not read tensor '{k}' from '{f}' ({e}); the file may be corrupt") from None

    def get_many(self, keys: Iterable[str]) -> Dict[str, torch.Tensor]:
        """Read several tensors, opening each safetensors file once."""
        from safetensors import safe_open

        keys = list(keys)
        out: Dict[str, torch.Tensor] = {}
        by_file: Dict[Path, List[str]] = {}
        for k in keys:
            by_file.setdefault(self._where[k], []).append(k)
        for f, ks in by_file.items():
            if f in self._torch:
                out.update({k: self._torch[f][k] for k in ks})
                continue
            try:
                with safe_open(str(f), framework="pt", device="cpu") as h:
                    for k in ks:
                        out[k] = _aligned(h.get_tensor(k))
            except ExpPortraitError:
                raise
            except Exception as e:
                raise ExpPortraitError(f"could not read tensors from '{f}' ({e}); the file may be corrupt") from None
        return out


def weight_files(folder: os.PathLike, stem: str) -> List[Path]:
    """Weight files of a diffusers/HF sub-folder: sharded (``<stem>.safetensors.index.json``) or single."""
    d = Path(folder)
    for suffix in (".safetensors", ".bin"):
        idx = d / f"{stem}{suffix}.index.json"
        if idx.is_file():
            shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (d / s).is_file()]
            if missing:
                raise ExpPortraitError(f"'{d}' is missing shard(s) {missing} listed in {idx.name}; re-download the folder")
            return [d / s for s in shards]
        single = d / f"{stem}{suffix}"
        if single.is_file():
            return [single]
    raise ExpPortraitError(f"no weights '{stem}.safetensors' (or sharded index) in folder '{d}'")


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def save_safetensors(tensors: Mapping[str, torch.Tensor], path: os.PathLike, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write tensors atomically (see ``io.atomic``)."""
    save_safetensors_atomic(tensors, path, metadata)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _short(keys: List[str], n: int = 8) -> str:
    keys = sorted(keys)
    s = ", ".join(keys[:n])
    return s + (f", … ({len(keys) - n} more)" if len(keys) > n else "")


def check_keys(
    expected: Mapping[str, Tuple[int, ...]],
    found: Mapping[str, Tuple[int, ...]],
    what: str,
    source: str,
    ignore_unexpected: Callable[[str], bool] = lambda k: False,
) -> None:
    """Raise :class:`ExpPortraitError` when ``found`` does not match ``expected`` (names and shapes)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected and not ignore_unexpected(k)]
    bad = [f"{k} {tuple(found[k])} != {tuple(expected[k])}" for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or bad):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_short(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_short(unexpected)}")
    if bad:
        parts.append(f"{len(bad)} shape mismatch(es): {_short(bad, 4)}")
    raise ExpPortraitError(
        f"{what} weights in '{source}' do not match the model: " + "; ".join(parts)
        + ". Check that the file is the right model for this slot (and not truncated or from another version)."
    )


# ----------------------------------------------------------------------------------------------
# Wan key mapping (original <-> diffusers)
# ----------------------------------------------------------------------------------------------
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")


def strip_prefix(keys: Iterable[str], prefixes: Tuple[str, ...] = _PREFIXES) -> Dict[str, str]:
    """Map ``stripped -> original`` for keys carrying one common known prefix."""
    keys = list(keys)
    for p in prefixes:
        if keys and all(k.startswith(p) for k in keys):
            return {k[len(p):]: k for k in keys}
    return {k: k for k in keys}


def is_original_wan_transformer(keys: Iterable[str]) -> bool:
    ks = set(keys)
    return "head.modulation" in ks or "patch_embedding.weight" in ks and any(k.startswith("blocks.0.self_attn.") for k in ks)


def wan_transformer_name_map(keys: Iterable[str]) -> Dict[str, str]:
    """``diffusers_name -> file_name`` for a Wan transformer checkpoint in either naming."""
    stripped = strip_prefix(keys)
    if not is_original_wan_transformer(stripped):
        return stripped
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    # The converter only renames entries, so feeding it names as values yields the name map.
    try:
        conv = convert_wan_transformer_to_diffusers({k: k for k in stripped})
    except Exception as e:
        raise ExpPortraitError(f"unsupported Wan transformer variant (key conversion failed: {e})") from None
    return {new: stripped[old] for new, old in conv.items()}


def wan_vae_name_map(keys: Iterable[str]) -> Dict[str, str]:
    """``diffusers_name -> file_name`` for a Wan 2.1 VAE checkpoint in either naming."""
    stripped = strip_prefix(keys, ("vae.", "first_stage_model."))
    if "decoder.middle.0.residual.0.gamma" not in stripped:
        return stripped
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    conv = convert_wan_vae_to_diffusers({k: k for k in stripped})
    return {new: stripped[old] for new, old in conv.items()}


def diffusers_to_wan_transformer_names(keys: Iterable[str]) -> Dict[str, str]:
    """``original_name -> diffusers_name``: the inverse of diffusers' Wan converter (Wan 2.1 T2V/I2V)."""
    top = [
        ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
        ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
        ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
        ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
        ("condition_embedder.time_proj.", "time_projection.1."),
        ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
        ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
        ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
        ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
        ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
        ("proj_out.", "head.head."),
    ]
    block = [
        (".attn1.", ".self_attn."),
        (".attn2.", ".cross_attn."),
        (".to_out.0.", ".o."),
        (".to_q.", ".q."),
        (".to_k.", ".k."),
        (".to_v.", ".v."),
        (".add_k_proj.", ".k_img."),
        (".add_v_proj.", ".v_img."),
        (".norm_added_k.", ".norm_k_img."),
        (".ffn.net.0.proj.", ".ffn.0."),
        (".ffn.net.2.", ".ffn.2."),
        # diffusers swapped the names of the cross-attention norm (norm2) and the FFN norm (norm3)
        (".norm2.", ".norm__tmp."),
        (".norm3.", ".norm2."),
        (".norm__tmp.", ".norm3."),
    ]
    out = {}
    for k in keys:
        n = k
        if n == "scale_shift_table":
            n = "head.modulation"
        elif n.startswith("blocks."):
            if n.endswith(".scale_shift_table"):
                n = n[: -len("scale_shift_table")] + "modulation"
            for a, b in block:
                n = n.replace(a, b)
        else:
            for a, b in top:
                if n.startswith(a):
                    n = b + n[len(a):]
                    break
        out[n] = k
    return out


# ----------------------------------------------------------------------------------------------
# configs from shapes
# ----------------------------------------------------------------------------------------------
def infer_transformer_config(shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Any]:
    """``WanTransformer3DModel`` kwargs from parameter shapes (diffusers names).

    Head width is 128 in every released Wan 2.1 model (1.3B: 12 heads × 128; 14B: 40 × 128).
    """
    try:
        inner, in_ch = shapes["patch_embedding.weight"][:2]
        patch = tuple(shapes["patch_embedding.weight"][2:])
        layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
        out_ch = shapes["proj_out.weight"][0] // (patch[0] * patch[1] * patch[2])
        cfg: Dict[str, Any] = dict(
            patch_size=patch,
            num_attention_heads=inner // 128,
            attention_head_dim=128,
            in_channels=in_ch,
            out_channels=out_ch,
            text_dim=shapes["condition_embedder.text_embedder.linear_1.weight"][1],
            freq_dim=shapes["condition_embedder.time_embedder.linear_1.weight"][1],
            ffn_dim=shapes["blocks.0.ffn.net.0.proj.weight"][0],
            num_layers=layers,
            cross_attn_norm="blocks.0.norm2.weight" in shapes,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            image_dim=None,
            added_kv_proj_dim=None,
        )
    except KeyError as e:
        raise ExpPortraitError(f"not a Wan transformer checkpoint: key {e} not found") from None
    if "condition_embedder.image_embedder.norm1.weight" in shapes:
        cfg["image_dim"] = shapes["condition_embedder.image_embedder.norm1.weight"][0]
        cfg["added_kv_proj_dim"] = shapes["blocks.0.attn2.add_k_proj.weight"][1]
    if "condition_embedder.image_embedder.pos_embed" in shapes:
        cfg["pos_embed_seq_len"] = shapes["condition_embedder.image_embedder.pos_embed"][1]
    return cfg


__all__ = [
    "BUNDLE_FORMAT",
    "LazyTensors",
    "check_keys",
    "check_safetensors",
    "diffusers_to_wan_transformer_names",
    "infer_transformer_config",
    "is_original_wan_transformer",
    "save_safetensors",
    "strip_prefix",
    "wan_transformer_name_map",
    "wan_vae_name_map",
    "weight_files",
    "write_text_atomic",
]
