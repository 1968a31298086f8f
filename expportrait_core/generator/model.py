"""The generator: Wan 2.1 transformer + VAE (+ CLIP) + ExpPortrait normal-map encoders, and its sampler.

Tensor layouts (``z`` = VAE latent channels, 16 for Wan 2.1; ``L = (F - 1) // 4 + 1``;
``h, w = H / 8, W / 8``; ``D`` = transformer width):

* latents: ``[1, z, L, h, w]`` float32, normalised ``(mu - latents_mean) / latents_std``.
* transformer input (``hidden_states``), concatenated on channels:

  - ``expportrait`` / ``i2v``: noisy ``z`` ‖ mask ``4`` (1 on latent frame 0) ‖ latent of the video
    ``[reference, gray, gray, …]`` ``z`` → ``2z + 4`` (36 for Wan 2.1 I2V).
  - ``fun_control``: noisy ``z`` ‖ control-video latent ``z`` ‖ reference latent in latent frame 0,
    zeros elsewhere ``z`` → ``3z`` (48).

* text: ``[1, 512, text_dim]`` (zero-padded, as Wan does); image: CLIP ``[1, 257, 1280]``.
* ExpPortrait token features: ``[1, D, L, h/2, w/2]`` (driving normals) + ``[1, D, 1, h/2, w/2]``
  (reference normal, broadcast over time), added to the output of ``patch_embedding`` through a
  forward hook, i.e. to the patch tokens before the first block.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ExpPortraitError
from ..progress import ProgressFn, report
from .config import MASK_CHANNELS, TEXT_LEN, GeneratorConfig
from .encoders import NormalVideoEncoder, ReferenceNormalEncoder, group_window_frames, resize_frames
from .sampling import make_scheduler, plan_windows, window_latents, window_weights
from .video_rules import latent_frames, pixel_frames, snap_frame_count, snap_video_size

log = logging.getLogger("expportrait.generator")

DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
BRANCHES = ("text", "control", "reference")


def parse_dtype(dtype: Union[str, torch.dtype]) -> Tuple[torch.dtype, torch.dtype]:
    """``"bf16"`` etc. → ``(storage_dtype, compute_dtype)``; fp8 stores weights in fp8, computes in bf16."""
    if isinstance(dtype, torch.dtype):
        return dtype, (torch.bfloat16 if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else dtype)
    if dtype not in DTYPES:
        raise ExpPortraitError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    st = DTYPES[dtype]
    return st, (torch.bfloat16 if dtype.startswith("fp8") else st)


def parse_branches(spec: Union[str, Sequence[str], None]) -> Set[str]:
    """``"control+reference"`` / ``["text"]`` → a set of branch names (validated)."""
    if spec is None:
        return set()
    parts = spec.split("+") if isinstance(spec, str) else list(spec)
    parts = [p.strip() for p in parts if p and p.strip() and p.strip() != "none"]
    bad = [p for p in parts if p not in BRANCHES]
    if bad:
        raise ExpPortraitError(f"cfg_on parts must be among {BRANCHES} (joined with '+'), got {spec!r}")
    return set(parts)


def to_bcthw(image: Any, what: str) -> torch.Tensor:
    """An image batch → ``[B, 3, H, W]`` float 0..1.

    Accepts ComfyUI IMAGE ``[B, H, W, C]``, ``[B, 3, H, W]``, a single ``[H, W, C]`` image, numpy
    arrays and uint8 data (scaled by 1/255).
    """
    if not torch.is_tensor(image):
        import numpy as np

        image = torch.from_numpy(np.ascontiguousarray(np.asarray(image)))
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ExpPortraitError(f"{what}: expected an image tensor [B, H, W, 3] or [B, 3, H, W], got shape {tuple(image.shape)}")
    if image.shape[-1] in (1, 3, 4) and image.shape[1] not in (1, 3):
        image = image[..., :3].permute(0, 3, 1, 2)
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
    return image.float()


def fit_cover(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize ``[B, 3, H, W]`` to cover ``height × width`` and centre-crop (aspect kept, like ComfyUI's "center")."""
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    x = F.interpolate(image, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[..., top : top + height, left : left + width]


def pad_text(embeds: Optional[torch.Tensor], text_dim: int, length: int = TEXT_LEN) -> torch.Tensor:
    """Prompt embeddings ``[L, D]``/``[1, L, D]`` → ``[1, length, D]`` (zero pad/truncate); None → zeros."""
    if embeds is None:
        return torch.zeros(1, length, text_dim)
    e = embeds.float()
    if e.ndim == 2:
        e = e[None]
    if e.ndim != 3 or e.shape[-1] != text_dim:
        raise ExpPortraitError(
            f"prompt embeddings must be [tokens, {text_dim}] for this transformer, got {tuple(embeds.shape)}; "
            "use embeddings of the text encoder the model was trained with (UMT5-XXL for Wan 2.1)"
        )
    e = e[:1, :length]
    if e.shape[1] < length:
        e = torch.cat([e, e.new_zeros(1, length - e.shape[1], text_dim)], dim=1)
    return e


@dataclass
class Conditions:
    """Per-clip conditioning, prepared once by :meth:`Generator.prepare` (all on CPU or device).

    Attributes:
        text, negative_text: ``[1, 512, text_dim]``.
        image_embeds: CLIP tokens ``[1, N, image_dim]`` or None (no image branch).
        ref_concat: reference part of the transformer input for one window ``[1, C, Lw, h, w]``
            (I2V forms: mask ‖ latent; Fun-Control: reference latent in frame 0).
        control_latents: Fun-Control only, ``[1, z, L, h, w]``.
        control_pixels: ExpPortrait only, normal maps ``[1, 3, F, H, W]`` in ``[-1, 1]``.
        ref_normal_feat: ExpPortrait only, ``[1, D, 1, h/2, w/2]`` or None.
        n_latent: latent frames of the clip; window: ``(Lw, Lo)``.
    """

    text: torch.Tensor
    negative_text: torch.Tensor
    image_embeds: Optional[torch.Tensor]
    ref_concat: torch.Tensor
    n_latent: int
    window: Tuple[int, int]
    control_latents: Optional[torch.Tensor] = None
    control_pixels: Optional[torch.Tensor] = None
    ref_normal: Optional[torch.Tensor] = None
    ref_normal_feat: Optional[torch.Tensor] = None
    feature_cache: Dict[Tuple[int, int], torch.Tensor] = field(default_factory=dict)


class Generator:
    """A loaded generator. Build with :func:`~expportrait_core.generator.loading.load_generator` or
    :func:`build_generator`; sample with :meth:`sample`.

    ``offload``: ``False`` (everything on ``device``), ``"model"``/``True`` (each module is moved to
    the device only while it runs) or ``"blocks"`` (additionally streams transformer blocks through
    diffusers group offloading; slowest, least memory).
    """

    def __init__(
        self,
        config: GeneratorConfig,
        transformer: nn.Module,
        vae: nn.Module,
        clip: Optional[nn.Module] = None,
        pose_encoder: Optional[NormalVideoEncoder] = None,
        ref_encoder: Optional[ReferenceNormalEncoder] = None,
        lora: Optional[nn.Module] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        device: Union[str, torch.device] = "cpu",
        dtype: Union[str, torch.dtype] = "fp32",
        vae_dtype: Union[str, torch.dtype, None] = None,
        offload: Union[bool, str] = False,
    ) -> None:
        config.validate()
        if config.layout == "expportrait" and (pose_encoder is None or ref_encoder is None):
            raise ExpPortraitError("the ExpPortrait layout needs both normal-map encoders")
        self.config = config
        self.transformer = transformer
        self.vae = vae
        self.clip = clip
        self.pose_encoder = pose_encoder
        self.ref_encoder = ref_encoder
        self.lora = lora
        self.prompt_embeds = prompt_embeds
        self.negative_prompt_embeds = negative_prompt_embeds
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.storage_dtype, self.dtype = parse_dtype(dtype)
        # the VAE follows the transformer on a GPU; on the CPU it stays float32: PyTorch's bf16
        # Conv3d on the CPU is ~20x slower than float32 (tiny VAE, 9 frames at 480x512: 273 s vs 14 s)
        self.vae_dtype = parse_dtype(vae_dtype)[1] if vae_dtype is not None else (
            torch.float32 if self.dtype == torch.float32 or self.device.type == "cpu" else torch.bfloat16
        )
        self.offload = "model" if offload is True else (offload or False)
        if self.offload not in (False, "model", "blocks"):
            raise ExpPortraitError(f"offload must be False/True, 'model' or 'blocks', got {offload!r}")
        self._residual: Optional[torch.Tensor] = None
        self._hook = transformer.patch_embedding.register_forward_hook(self._add_residual)
        for m in self.modules().values():
            m.eval()
            m.requires_grad_(False)
        self._place()

    # ------------------------------------------------------------------------------------------
    # modules, devices, dtypes
    # ------------------------------------------------------------------------------------------
    def modules(self) -> Dict[str, nn.Module]:
        """Named sub-modules that exist: transformer, vae, clip, pose_encoder, ref_encoder, lora."""
        out = {"transformer": self.transformer, "vae": self.vae}
        for k in ("clip", "pose_encoder", "ref_encoder", "lora"):
            m = getattr(self, k)
            if m is not None:
                out[k] = m
        return out

    def _module_dtype(self, name: str) -> torch.dtype:
        if name == "vae":
            return self.vae_dtype
        if name == "clip":
            return torch.float32 if self.device.type == "cpu" else self.dtype
        if name == "lora":
            return torch.float32
        return self.dtype

    def _place(self) -> None:
        home = torch.device("cpu") if self.offload else self.device
        for name, m in self.modules().items():
            if name == "transformer":
                self._cast_transformer()
                if self.offload == "blocks" and self.device.type != "cpu":
                    m.enable_group_offload(onload_device=self.device, offload_type="block_level", num_blocks_per_group=1)
                    continue
            else:
                dt = self._module_dtype(name)
                # cast tensors in place: ModelMixin.to(dtype) warns on every call
                for t in list(m.parameters()) + list(m.buffers()):
                    if t.dtype.is_floating_point and t.dtype != dt:
                        t.data = t.data.to(dt)
            m.to(home)

    def _cast_transformer(self) -> None:
        """Cast like diffusers: modules listed in ``_keep_in_fp32_modules`` stay fp32; fp8 = layerwise casting."""
        tr = self.transformer
        keep = set(getattr(tr, "_keep_in_fp32_modules", None) or [])
        target = self.dtype
        for name, p in tr.named_parameters():
            dt = torch.float32 if keep & set(name.split(".")) else target
            if p.dtype != dt and p.dtype.is_floating_point:
                p.data = p.data.to(dt)
        if self.storage_dtype != self.dtype and not getattr(tr, "_expp_layerwise", False):
            tr.enable_layerwise_casting(storage_dtype=self.storage_dtype, compute_dtype=self.dtype)
            tr._expp_layerwise = True

    @contextlib.contextmanager
    def _on_device(self, *names: str) -> Iterator[None]:
        """With model offload, keep the named modules on the compute device for the block."""
        if "transformer" in names and self.lora is not None:
            names = names + ("lora",)
        mods = [self.modules()[n] for n in names if n in self.modules()]
        movable = [m for m in mods if self.offload and not (self.offload == "blocks" and m is self.transformer)]
        for m in movable:
            m.to(self.device)
        try:
            yield
        finally:
            for m in movable:
                m.to("cpu")
            if movable and self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _add_residual(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if self._residual is None:
            return output
        return output + self._residual.to(output.dtype)

    def has_image_branch(self) -> bool:
        return self.config.image_dim is not None

    # ------------------------------------------------------------------------------------------
    # VAE
    # ------------------------------------------------------------------------------------------
    def _latent_stats(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        c = self.vae.config
        mean = torch.tensor(c.latents_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        std = torch.tensor(c.latents_std, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        return mean, std

    def _streamable(self) -> bool:
        v = self.vae
        return (
            getattr(v.config, "patch_size", None) is None
            and not getattr(v, "use_tiling", False)
            and all(hasattr(v, a) for a in ("clear_cache", "encoder", "decoder", "quant_conv", "post_quant_conv"))
        )

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """``video [B, 3, F, H, W]`` in ``[-1, 1]`` (any device) → normalised latents ``[B, z, L, h, w]`` float32.

        Streams the causal VAE one temporal chunk at a time (1 frame, then 4 by 4), moving only the
        current chunk to the device, so long control videos encode in bounded memory.
        """
        vae = self.vae
        with self._on_device("vae"):
            dt = self.vae_dtype
            if self._streamable():
                vae.clear_cache()
                outs = []
                n = video.shape[2]
                for i in range(latent_frames(n)):
                    vae._enc_conv_idx = [0]
                    chunk = video[:, :, :1] if i == 0 else video[:, :, 1 + 4 * (i - 1) : 1 + 4 * i]
                    outs.append(vae.encoder(chunk.to(self.device, dt), feat_cache=vae._enc_feat_map, feat_idx=vae._enc_conv_idx))
                h = vae.quant_conv(torch.cat(outs, 2))
                vae.clear_cache()
                mu = h[:, : self.config.z_dim]
            else:
                mu = vae.encode(video.to(self.device, dt)).latent_dist.mode()
            mean, std = self._latent_stats(mu.device)
            return (mu.float() - mean) / std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, out_device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """Normalised latents ``[1, z, L, h, w]`` → frames ``[F, H, W, 3]`` float 0..1 on ``out_device``.

        Decodes one latent frame at a time (the VAE's own causal loop) and moves each decoded chunk
        off the device at once, so a long clip never sits in device memory in pixel form.
        """
        vae = self.vae
        with self._on_device("vae"):
            mean, std = self._latent_stats(self.device)
            z = (latents.to(self.device, torch.float32) * std + mean).to(self.vae_dtype)
            chunks = []
            if self._streamable():
                vae.clear_cache()
                for i in range(z.shape[2]):
                    vae._conv_idx = [0]
                    x = vae.post_quant_conv(z[:, :, i : i + 1])
                    out = vae.decoder(x, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=(i == 0))
                    chunks.append(out.clamp(-1, 1).float().to(out_device))
                vae.clear_cache()
                video = torch.cat(chunks, 2)
            else:
                video = vae.decode(z).sample.float().to(out_device)
        return ((video[0].permute(1, 2, 3, 0) + 1.0) * 0.5).clamp(0, 1)

    # ------------------------------------------------------------------------------------------
    # conditions
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def image_embeds(self, reference: torch.Tensor) -> Optional[torch.Tensor]:
        """CLIP tokens of ``reference [1, 3, H, W]`` (0..1), zeros without a CLIP model, None without an image branch."""
        if not self.has_image_branch():
            return None
        if self.clip is None:
            n = self.config.clip.num_tokens if self.config.clip else 257
            return torch.zeros(1, n, self.config.image_dim)
        with self._on_device("clip"):
            dt = self._module_dtype("clip")
            return self.clip(reference.to(self.device, dt)).float()

    @torch.no_grad()
    def reference_concat(self, reference: torch.Tensor, n_latent: int) -> torch.Tensor:
        """Reference channels of the transformer input for a window of ``n_latent`` latent frames.

        reference ``[1, 3, H, W]`` in 0..1 → I2V forms ``[1, 4 + z, n, h, w]``; Fun-Control ``[1, z, n, h, w]``.
        """
        ref = reference * 2.0 - 1.0
        if self.config.layout == "fun_control":
            lat = self.encode_video(ref[:, :, None])
            out = lat.new_zeros(lat.shape[0], lat.shape[1], n_latent, *lat.shape[-2:])
            out[:, :, :1] = lat
            return out
        n_pix = pixel_frames(n_latent)
        video = torch.cat([ref[:, :, None], ref.new_zeros(ref.shape[0], 3, n_pix - 1, *ref.shape[-2:])], dim=2)
        lat = self.encode_video(video)
        mask = lat.new_zeros(lat.shape[0], MASK_CHANNELS, n_latent, *lat.shape[-2:])
        mask[:, :, 0] = 1.0
        return torch.cat([mask, lat], dim=1)

    def prepare(
        self,
        reference: torch.Tensor,
        control: torch.Tensor,
        reference_normal: Optional[torch.Tensor] = None,
        window: Tuple[int, int] = (21, 4),
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
    ) -> Conditions:
        """Conditions for a clip (sizes must already follow the rules; see :meth:`sample`).

        reference ``[1, 3, H, W]`` 0..1; control ``[1, 3, F, H, W]`` 0..1 with ``F = 4k + 1``;
        reference_normal ``[1, 3, H, W]`` 0..1 or None; window ``(Lw, Lo)`` in latent frames.
        """
        n_lat = latent_frames(control.shape[2])
        lw = min(window[0], n_lat)
        pe = prompt_embeds if prompt_embeds is not None else self.prompt_embeds
        ne = negative_prompt_embeds if negative_prompt_embeds is not None else self.negative_prompt_embeds
        cond = Conditions(
            text=pad_text(pe, self.config.text_dim),
            negative_text=pad_text(ne, self.config.text_dim),
            image_embeds=self.image_embeds(reference),
            ref_concat=self.reference_concat(reference, lw),
            n_latent=n_lat,
            window=(lw, min(window[1], max(lw - 1, 0))),
        )
        layout = self.config.layout
        if layout == "fun_control":
            cond.control_latents = self.encode_video(control * 2.0 - 1.0)
        elif layout == "expportrait":
            cond.control_pixels = control * 2.0 - 1.0
            if reference_normal is not None:
                cond.ref_normal = reference_normal * 2.0 - 1.0
        return cond

    def _pose_features(self, cond: Conditions, s: int, e: int, cache: bool) -> torch.Tensor:
        key = (s, e)
        if key in cond.feature_cache:
            return cond.feature_cache[key]
        frames = group_window_frames(cond.control_pixels, s, e - s)
        with self._on_device("pose_encoder"):
            feat = self.pose_encoder(frames.to(self.device, self.dtype))
        if cache:
            cond.feature_cache[key] = feat
        return feat

    def _ref_features(self, cond: Conditions, cache: bool) -> Optional[torch.Tensor]:
        if cond.ref_normal is None:
            return None
        if cond.ref_normal_feat is not None:
            return cond.ref_normal_feat
        with self._on_device("ref_encoder"):
            feat = self.ref_encoder(cond.ref_normal.to(self.device, self.dtype))
        if cache:
            cond.ref_normal_feat = feat
        return feat

    def model_inputs(
        self, latents: torch.Tensor, s: int, e: int, cond: Conditions, drop: Set[str] = frozenset(), cache: bool = True
    ) -> Dict[str, Any]:
        """Transformer inputs for latent frames ``[s, e)`` of ``latents [1, z, L, h, w]``.

        ``drop``: branches replaced by their null value (CFG's unconditional pass, training dropout):
        ``text`` → negative/neutral prompt; ``control`` → no control latents / features;
        ``reference`` → no reference latent, mask, CLIP tokens or reference-normal features.
        Returns kwargs for the transformer plus ``residual`` (token features or None).
        """
        dev, dt = self.device, self.dtype
        x = latents[:, :, s:e].to(dev)
        n = e - s
        ref = cond.ref_concat[:, :, :n].to(dev)
        if "reference" in drop:
            ref = torch.zeros_like(ref)
        parts = [x]
        if self.config.layout == "fun_control":
            ctrl = cond.control_latents[:, :, s:e].to(dev)
            parts.append(torch.zeros_like(ctrl) if "control" in drop else ctrl)
        parts.append(ref)
        hidden = torch.cat(parts, dim=1).to(dt)
        text = (cond.negative_text if "text" in drop else cond.text).to(dev, dt)
        img = cond.image_embeds
        if img is not None:
            img = (torch.zeros_like(img) if "reference" in drop else img).to(dev, dt)
        residual = None
        if self.config.layout == "expportrait":
            feats = []
            if "control" not in drop:
                feats.append(self._pose_features(cond, s, e, cache))
            if "reference" not in drop:
                rf = self._ref_features(cond, cache)
                if rf is not None:
                    feats.append(rf)
            if feats:
                residual = feats[0] if len(feats) == 1 else feats[0] + feats[1]
        return dict(hidden_states=hidden, encoder_hidden_states=text, encoder_hidden_states_image=img, residual=residual)

    def velocity(self, inputs: Dict[str, Any], t: torch.Tensor) -> torch.Tensor:
        """One transformer call: flow-matching velocity ``[B, z, n, h, w]`` (float32)."""
        kw = dict(inputs)
        self._residual = kw.pop("residual")
        try:
            timestep = t.reshape(-1).to(self.device).expand(kw["hidden_states"].shape[0])
            out = self.transformer(timestep=timestep, return_dict=False, **kw)[0]
        finally:
            self._residual = None
        return out.float()

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(
        self,
        noise: torch.Tensor,
        cond: Conditions,
        steps: int = 30,
        cfg: float = 5.0,
        cfg_on: Union[str, Sequence[str], None] = None,
        shift: Optional[float] = None,
        scheduler: str = "unipc",
        blend: str = "linear",
        progress: Optional[ProgressFn] = None,
        feature_cache_bytes: int = 2 << 30,
    ) -> torch.Tensor:
        """Denoise ``noise [1, z, L, h, w]`` (float32) → clean latents of the same shape.

        One scheduler step per timestep on the whole latent; velocities of overlapping windows are
        blended (:func:`window_weights`). With ``cfg > 1`` each window runs a second, unconditional
        pass with the ``cfg_on`` branches dropped: ``v = v_u + cfg · (v_c − v_u)``.
        """
        if steps < 1:
            raise ExpPortraitError(f"steps must be >= 1, got {steps}")
        sched = make_scheduler(scheduler, self.config.flow_shift if shift is None else shift)
        sched.set_timesteps(steps, device=self.device)
        drop = parse_branches(self.config.cfg_on if cfg_on is None else cfg_on)
        if cfg > 1.0 and drop == {"text"} and torch.equal(cond.text, cond.negative_text):
            log.warning("cfg=%.2f on text alone with identical prompt/negative embeddings has no effect; "
                        "running one pass per step (give prompt embeddings or set cfg_on)", cfg)
            drop = set()
        guided = cfg > 1.0 and bool(drop)
        n_lat = cond.n_latent
        windows = plan_windows(n_lat, *cond.window)
        weights = [w.to(self.device).view(1, 1, -1, 1, 1) for w in window_weights(windows, blend)]
        # token features per window are constant across steps: cache them when they fit
        d = self.config.inner_dim
        est = len(windows) * cond.window[0] * d * noise.shape[-2] * noise.shape[-1] // 4 * torch.finfo(self.dtype).bits // 8
        cache = est <= feature_cache_bytes
        latents = noise.to(self.device, torch.float32)
        total = len(sched.timesteps) * len(windows)
        done = 0
        with self._on_device("transformer"):
            for t in sched.timesteps:
                if len(windows) == 1:
                    v = self._guided(latents, 0, n_lat, cond, t, cfg, drop, guided, cache)
                    done += 1
                    report(progress, done, total)
                else:
                    v = torch.zeros_like(latents)
                    for (s, e), w in zip(windows, weights):
                        v[:, :, s:e] += w * self._guided(latents, s, e, cond, t, cfg, drop, guided, cache)
                        done += 1
                        report(progress, done, total)
                latents = sched.step(v, t, latents, return_dict=False)[0]
        cond.feature_cache.clear()
        return latents

    def _guided(self, latents, s, e, cond, t, cfg, drop, guided, cache) -> torch.Tensor:
        v = self.velocity(self.model_inputs(latents, s, e, cond, cache=cache), t)
        if guided:
            vu = self.velocity(self.model_inputs(latents, s, e, cond, drop=drop, cache=cache), t)
            # in place: same values as vu + cfg·(v − vu), without two latent-sized temporaries
            v = v.sub_(vu).mul_(cfg).add_(vu)
        return v

    @torch.no_grad()
    def sample(
        self,
        reference: torch.Tensor,
        control: torch.Tensor,
        reference_normal: Optional[torch.Tensor] = None,
        steps: int = 30,
        cfg: float = 5.0,
        seed: int = 0,
        shift: Optional[float] = None,
        window: int = 81,
        overlap: int = 16,
        scheduler: str = "unipc",
        cfg_on: Union[str, Sequence[str], None] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        size: Optional[Tuple[int, int]] = None,
        blend: str = "linear",
        progress: Optional[ProgressFn] = None,
    ) -> torch.Tensor:
        """Generate a portrait video that follows ``control`` with the identity of ``reference``.

        Args:
            reference: ComfyUI IMAGE ``[1, H, W, 3]`` or ``[1, 3, H, W]``, 0..1 (numpy/uint8 ``[H, W, 3]`` too).
            control: normal maps as ComfyUI IMAGE ``[F, H, W, 3]``, 0..1 (or uint8), any F and size.
            reference_normal: normal map of the reference, IMAGE ``[1, H, W, 3]`` (ExpPortrait layout).
            steps, cfg, seed, shift, scheduler: sampler settings (``shift`` None → model default).
            window, overlap: temporal window and overlap in frames (long clips; window snapped to 4k+1).
            cfg_on: branches dropped in the unconditional pass (``"text"``, ``"control"``,
                ``"reference"``, joined by ``+``); None → model default.
            prompt_embeds, negative_prompt_embeds: ``[tokens, text_dim]`` overriding the loaded ones.
            size: output ``(height, width)``; None → the control size snapped to multiples of 16.
        Returns:
            frames ``[F, H', W', 3]`` float 0..1 on the CPU, one per control frame, at the snapped size.
        """
        ctrl = to_bcthw(control, "control")  # [F, 3, H, W]
        n_in = ctrl.shape[0]
        if n_in < 1:
            raise ExpPortraitError("control video has no frames")
        h, w = snap_video_size(*(size or ctrl.shape[-2:]), what="generator output")
        n = snap_frame_count(n_in, "up", what="control video")
        if n > n_in:
            ctrl = torch.cat([ctrl, ctrl[-1:].expand(n - n_in, -1, -1, -1)], dim=0)
        ctrl = resize_frames(ctrl.permute(1, 0, 2, 3)[None], h, w).clamp(0, 1)  # [1, 3, F, H, W]
        ref = fit_cover(to_bcthw(reference, "reference")[:1], h, w).clamp(0, 1)
        ref_n = None
        if reference_normal is not None:
            ref_n = fit_cover(to_bcthw(reference_normal, "reference_normal")[:1], h, w).clamp(0, 1)
        elif self.config.layout == "expportrait":
            log.warning("no reference normal map given: the reference-normal branch is left out")
        if self.config.layout == "i2v":
            log.warning("this generator has no control input (plain image-to-video); the control video only sets length and size")
        lw, lo = window_latents(window, overlap)
        cond = self.prepare(ref, ctrl, ref_n, (lw, lo), prompt_embeds, negative_prompt_embeds)
        g = torch.Generator("cpu").manual_seed(int(seed))
        noise = torch.randn((1, self.config.z_dim, cond.n_latent, h // 8, w // 8), generator=g, dtype=torch.float32)
        latents = self.denoise(noise, cond, steps, cfg, cfg_on, shift, scheduler, blend, progress)
        frames = self.decode_latents(latents)
        return frames[:n_in]


def build_generator(
    config: GeneratorConfig, seed: int = 0, device: str = "cpu", dtype: str = "fp32", offload: Union[bool, str] = False
) -> Generator:
    """A generator with freshly initialised (seeded) weights for ``config`` — tests, benchmarks, training from scratch."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from .clip_vision import ClipVisionEncoder

    config.validate()
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**config.transformer)
    vae = AutoencoderKLWan(**config.vae)
    clip = ClipVisionEncoder(config.clip) if (config.clip is not None and config.image_dim is not None) else None
    pose = ref = None
    if config.layout == "expportrait":
        pose = NormalVideoEncoder(config.encoder)
        ref = ReferenceNormalEncoder(config.encoder)
    return Generator(config, transformer, vae, clip, pose, ref, device=device, dtype=dtype, offload=offload)


__all__ = ["Conditions", "DTYPES", "Generator", "build_generator", "fit_cover", "pad_text", "parse_branches", "parse_dtype", "to_bcthw"]
