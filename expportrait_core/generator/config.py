"""Configuration of the DiT generator: layouts, sub-model configs and a tiny test config.

Three layouts share one sampler (tensor layouts are documented in the README, section "Generator"):

* ``"expportrait"`` — the paper's generator (§5 of PAPER-NOTES): a Wan 2.1 image-to-video
  transformer (noisy latents ‖ 4-channel first-frame mask ‖ reference-image latent = ``2·z + 4``
  input channels, CLIP image tokens in cross-attention) plus two convolutional encoders whose
  features are *added to the transformer's patch tokens*: a 3-D encoder over the driving
  normal-map sequence and a 2-D encoder over the reference normal map.
* ``"fun_control"`` — public Wan2.1-Fun-Control checkpoints: noisy latents ‖ VAE latents of the
  control video ‖ reference-image latent in the first latent frame = ``3·z`` input channels.
* ``"i2v"`` — plain Wan 2.1 image-to-video (no control); useful as a base and for tests.

Configs are plain dataclasses saved as JSON next to the weights (in the safetensors metadata or a
``config.json``), so a tiny test model is the same code with other numbers.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from .video_rules import TEMPORAL_STRIDE

LAYOUTS = ("expportrait", "fun_control", "i2v")

#: number of mask channels in the Wan I2V condition (one per frame of a temporal VAE group)
MASK_CHANNELS = TEMPORAL_STRIDE

#: Wan pads prompt embeddings to this many tokens; diffusers' attention processor assumes it
#: whenever the transformer has an image cross-attention branch.
TEXT_LEN = 512


@dataclass
class ControlEncoderConfig:
    """The ExpPortrait normal-map encoders (3-D over the driving sequence, 2-D over the reference).

    Both downsample by 16 in space (VAE stride 8 × patch 2) so their output lies on the token grid.

    Attributes:
        channels: width of each of the 4 stride-2 stages (default ``(32, 64, 128, 256)``).
        stem_channels: width of the first convolution (default 16).
        out_dim: token width = transformer ``num_attention_heads * attention_head_dim``.
        zero_init: zero the output projections so a fresh encoder leaves the base model unchanged
            (default True; the tiny test config turns it off so the control path is live at once).
    """

    channels: Tuple[int, ...] = (32, 64, 128, 256)
    stem_channels: int = 16
    out_dim: int = 5120
    zero_init: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 4:
            raise ValueError(f"ControlEncoderConfig.channels needs 4 stages (stride 16), got {self.channels}")


@dataclass
class ClipVisionConfig:
    """A CLIP ViT image encoder (OpenCLIP ViT-H/14 for Wan 2.1 I2V by default).

    Attributes mirror Hugging Face ``CLIPVisionConfig`` names so its ``config.json`` loads as is.
    ``output_layer = -2``: Wan uses the penultimate hidden state (no final layer norm).
    """

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_attention_heads: int = 16
    num_hidden_layers: int = 32
    patch_size: int = 14
    image_size: int = 224
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    output_layer: int = -2

    @property
    def num_tokens(self) -> int:
        """Image tokens passed to the transformer: patches + class token (257 for ViT-H/14 at 224)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_hf(cls, d: Dict[str, Any]) -> "ClipVisionConfig":
        """From a Hugging Face ``CLIPVisionConfig``/``CLIPConfig`` dict (unknown keys ignored)."""
        if "vision_config" in d:
            d = d["vision_config"]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def wan21_vae_config() -> Dict[str, Any]:
    """``AutoencoderKLWan`` kwargs of the Wan 2.1 VAE (diffusers defaults = the released VAE)."""
    return {}


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild a generator's modules (weights aside).

    Attributes:
        layout: ``"expportrait"``, ``"fun_control"`` or ``"i2v"`` (see module docstring).
        transformer: ``WanTransformer3DModel`` kwargs.
        vae: ``AutoencoderKLWan`` kwargs (``{}`` = Wan 2.1 VAE).
        clip: image encoder config, or None when the transformer has no image branch.
        encoder: ExpPortrait encoders (layout ``"expportrait"`` only).
        flow_shift: default sampler shift (Wan: 3.0 at 480p, 5.0 at 720p).
        cfg_on: default branches dropped in the unconditional CFG pass, ``+``-joined from
            ``text``, ``control``, ``reference`` (default ``"text"``; the ExpPortrait layout is
            trained with control/reference dropout and defaults to ``"control+reference"``).
    """

    layout: str = "expportrait"
    transformer: Dict[str, Any] = field(default_factory=dict)
    vae: Dict[str, Any] = field(default_factory=dict)
    clip: Optional[ClipVisionConfig] = None
    encoder: Optional[ControlEncoderConfig] = None
    flow_shift: float = 3.0
    cfg_on: str = "text"

    # --- derived quantities -------------------------------------------------------------------
    @property
    def z_dim(self) -> int:
        return int(self.vae.get("z_dim", 16))

    @property
    def inner_dim(self) -> int:
        t = self.transformer
        return int(t.get("num_attention_heads", 40)) * int(t.get("attention_head_dim", 128))

    @property
    def in_channels(self) -> int:
        return int(self.transformer.get("in_channels", 16))

    @property
    def text_dim(self) -> int:
        return int(self.transformer.get("text_dim", 4096))

    @property
    def image_dim(self) -> Optional[int]:
        v = self.transformer.get("image_dim")
        return None if v is None else int(v)

    def expected_in_channels(self) -> int:
        """Transformer input channels the layout needs (``2z+4`` for I2V forms, ``3z`` for Fun-Control)."""
        z = self.z_dim
        return 3 * z if self.layout == "fun_control" else 2 * z + MASK_CHANNELS

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the parts do not fit together."""
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.in_channels != self.expected_in_channels():
            raise ValueError(
                f"layout {self.layout!r} with a VAE of z_dim={self.z_dim} needs a transformer with "
                f"in_channels={self.expected_in_channels()}, got {self.in_channels}"
            )
        if int(self.transformer.get("out_channels", self.z_dim) or self.z_dim) != self.z_dim:
            raise ValueError(f"transformer out_channels must equal the VAE z_dim {self.z_dim}")
        if self.layout == "expportrait":
            if self.encoder is None:
                raise ValueError("layout 'expportrait' needs an encoder config")
            if self.encoder.out_dim != self.inner_dim:
                raise ValueError(f"encoder out_dim {self.encoder.out_dim} != transformer width {self.inner_dim}")
        if self.clip is not None and self.image_dim is not None and self.clip.hidden_size != self.image_dim:
            raise ValueError(f"CLIP hidden_size {self.clip.hidden_size} != transformer image_dim {self.image_dim}")
        for part in self.cfg_on.split("+"):
            if part not in ("text", "control", "reference"):
                raise ValueError(f"cfg_on parts must be text/control/reference, got {self.cfg_on!r}")

    # --- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.encoder is not None:
            d["encoder"]["channels"] = list(self.encoder.channels)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GeneratorConfig":
        d = dict(d)
        clip = d.pop("clip", None)
        enc = d.pop("encoder", None)
        tr = dict(d.pop("transformer", {}) or {})
        if "patch_size" in tr:
            tr["patch_size"] = tuple(tr["patch_size"])
        cfg = cls(
            transformer=tr,
            clip=ClipVisionConfig(**clip) if clip else None,
            encoder=ControlEncoderConfig(**enc) if enc else None,
            **d,
        )
        return cfg

    @classmethod
    def from_json(cls, s: str) -> "GeneratorConfig":
        return cls.from_dict(json.loads(s))


def tiny_config(layout: str = "expportrait", with_clip: bool = True) -> GeneratorConfig:
    """A tiny random-weight config that runs end to end on a CPU in well under a second per step.

    2 transformer layers of width 128 (1 head × 128), a VAE with base width 8 and 8 latent channels,
    a 3-layer CLIP of width 24 at 32 px, and narrow normal-map encoders (not zero-initialised,
    so the control path is live in a freshly built model). Sizes/frames follow the normal Wan rules
    (e.g. 32×32 px, 9 frames → 3 latent frames of 4×4 → 12 tokens).
    """
    z = 8  # not 4: with z = 4 the I2V (2z+4) and Fun-Control (3z) layouts would have equal widths
    in_ch = 3 * z if layout == "fun_control" else 2 * z + MASK_CHANNELS
    clip = ClipVisionConfig(
        hidden_size=24, intermediate_size=48, num_attention_heads=2, num_hidden_layers=3, patch_size=8, image_size=32
    ) if with_clip else None
    transformer = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=1,
        attention_head_dim=128,  # Wan's head width, so configs can be inferred from shapes as for real files
        in_channels=in_ch,
        out_channels=z,
        text_dim=16,
        freq_dim=32,
        ffn_dim=256,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=24 if with_clip else None,
        added_kv_proj_dim=128 if with_clip else None,
        rope_max_seq_len=1024,
    )
    # Not the real Wan statistics: arbitrary values so that normalisation is exercised.
    vae = dict(
        base_dim=8,
        z_dim=z,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.05, 0.0, 0.3, -0.1, 0.0, 0.2],
        latents_std=[0.5, 0.8, 1.2, 1.0, 0.7, 1.5, 0.9, 1.1],
    )
    encoder = ControlEncoderConfig(channels=(8, 8, 16, 16), stem_channels=8, out_dim=128, zero_init=False)
    cfg = GeneratorConfig(
        layout=layout,
        transformer=transformer,
        vae=vae,
        clip=clip,
        encoder=encoder if layout == "expportrait" else None,
        flow_shift=3.0,
        cfg_on="control+reference" if layout == "expportrait" else "text",
    )
    cfg.validate()
    return cfg


__all__ = [
    "ClipVisionConfig",
    "ControlEncoderConfig",
    "GeneratorConfig",
    "LAYOUTS",
    "MASK_CHANNELS",
    "TEXT_LEN",
    "tiny_config",
    "wan21_vae_config",
]
