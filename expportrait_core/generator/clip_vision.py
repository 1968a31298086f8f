"""A minimal CLIP ViT image encoder (no ``transformers`` dependency).

Wan 2.1 image-to-video feeds the penultimate hidden state of OpenCLIP ViT-H/14 (257 tokens × 1280)
to its image cross-attention. This module reproduces that encoder with Hugging Face
``CLIPVisionModel`` parameter names (``vision_model.*``), so it reads:

* ComfyUI ``models/clip_vision`` files in Hugging Face layout (``clip_vision_h.safetensors``),
* OpenCLIP-layout files (``visual.*`` keys; the fused ``in_proj`` is split),
* a diffusers ``image_encoder/`` folder (``config.json`` + ``model.safetensors``).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ClipVisionConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(o.transpose(1, 2).reshape(b, n, d))


class _MLP(nn.Module):
    def __init__(self, d: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x) if self.act == "quick_gelu" else F.gelu(x)
        return self.fc2(x)


class _Layer(nn.Module):
    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.layer_norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.self_attn = _Attention(d, cfg.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = _MLP(d, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.class_embedding = nn.Parameter(torch.randn(d) * 0.02)
        self.patch_embedding = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.num_tokens, d)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight.to(x.dtype)


class _Encoder(nn.Module):
    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class _VisionModel(nn.Module):
    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # sic: HF spelling
        self.encoder = _Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class ClipVisionEncoder(nn.Module):
    """CLIP ViT returning the hidden state Wan uses.

    forward(image): ``image [B, 3, H, W]`` float in 0..1 (any size; resized and centre-cropped to
    ``image_size``) → ``[B, num_tokens, hidden_size]`` = hidden state ``output_layer`` (``-2``:
    after the second-to-last layer, Hugging Face ``hidden_states[-2]``).
    """

    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_model = _VisionModel(cfg)

    def preprocess(self, image: torch.Tensor, crop: str = "center") -> torch.Tensor:
        """0..1 ``[B, 3, H, W]`` → normalised ``[B, 3, S, S]`` (shorter side to S, centre crop; or squash)."""
        s = self.cfg.image_size
        x = image.float()
        h, w = x.shape[-2:]
        if crop == "center":
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[..., top : top + s, left : left + s]
        else:
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x.clamp(0, 1) - mean) / std

    def forward(self, image: torch.Tensor, crop: str = "center") -> torch.Tensor:
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(self.preprocess(image, crop)))
        n_layers = len(vm.encoder.layers)
        # hidden_states[k] is the output after k layers (k = 0: embeddings); index like HF.
        stop = self.cfg.output_layer % (n_layers + 1)
        for layer in vm.encoder.layers[:stop]:
            x = layer(x)
        if stop == n_layers:
            x = vm.post_layernorm(x)
        return x


def convert_openclip_visual(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """OpenCLIP ``visual.*`` keys → Hugging Face ``vision_model.*`` keys (fused q/k/v split)."""
    out: Dict[str, torch.Tensor] = {}
    ren = {
        "class_embedding": "embeddings.class_embedding",
        "conv1.weight": "embeddings.patch_embedding.weight",
        "positional_embedding": "embeddings.position_embedding.weight",
        "ln_pre.weight": "pre_layrnorm.weight",
        "ln_pre.bias": "pre_layrnorm.bias",
        "ln_post.weight": "post_layernorm.weight",
        "ln_post.bias": "post_layernorm.bias",
    }
    for k, v in sd.items():
        if not k.startswith("visual."):
            continue
        k = k[len("visual."):]
        if k in ren:
            out["vision_model." + ren[k]] = v
        elif k.startswith("transformer.resblocks."):
            i, rest = k[len("transformer.resblocks."):].split(".", 1)
            p = f"vision_model.encoder.layers.{i}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                    out[f"{p}self_attn.{name}.{kind}"] = part
            else:
                rest = (
                    rest.replace("ln_1", "layer_norm1")
                    .replace("ln_2", "layer_norm2")
                    .replace("attn.out_proj", "self_attn.out_proj")
                    .replace("mlp.c_fc", "mlp.fc1")
                    .replace("mlp.c_proj", "mlp.fc2")
                )
                out[p + rest] = v
        # visual.proj (the joint-embedding projection) is not used by Wan.
    return out


def normalise_clip_keys(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Any supported CLIP vision state dict → our (HF) key names; drops keys Wan does not use."""
    if any(k.startswith("visual.") for k in sd):
        sd = convert_openclip_visual(sd)
    # transformers >= 5 names CLIPVisionModel weights without the "vision_model." prefix
    bare = ("embeddings.", "encoder.layers.", "pre_layrnorm.", "post_layernorm.")
    if not any(".vision_model." in k or k.startswith("vision_model.") for k in sd):
        sd = {("vision_model." + k if k.startswith(bare) else k): v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        for prefix in ("clip_vision.", "model.", "image_encoder."):
            if k.startswith(prefix) and k[len(prefix):].startswith("vision_model."):
                k = k[len(prefix):]
        if k.startswith("vision_model.") and not k.endswith("position_ids"):
            out[k] = v
    return out


def infer_clip_config(sd: Dict[str, Tuple[int, ...]]) -> ClipVisionConfig:
    """Guess a :class:`ClipVisionConfig` from parameter shapes (HF key names).

    Head count is not visible in shapes: OpenCLIP ViT-L/H/bigG all use 16 heads; smaller widths
    assume 64-wide heads.
    """
    d, _, p, _ = sd["vision_model.embeddings.patch_embedding.weight"]
    n_tok = sd["vision_model.embeddings.position_embedding.weight"][0]
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("vision_model.encoder.layers."))
    inter = sd["vision_model.encoder.layers.0.mlp.fc1.weight"][0]
    heads = 16 if d >= 1024 else max(1, d // 64)
    return ClipVisionConfig(
        hidden_size=d,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        patch_size=p,
        image_size=int(round(math.sqrt(n_tok - 1))) * p,
    )


__all__ = ["ClipVisionEncoder", "convert_openclip_visual", "infer_clip_config", "normalise_clip_keys"]
