"""Low-rank adapters on the transformer's linear layers, without ``peft``.

``peft`` pulls in ``transformers`` and ``accelerate``; a node pack must import without them, so
LoRA is done here in ~80 lines: a forward hook adds ``scale · B(A(x))`` to each targeted
``nn.Linear``. The base weights and their state-dict keys stay untouched; the adapter lives in its
own module and is saved with peft/diffusers names (``transformer.<module>.lora_A.weight`` /
``lora_B.weight``, ``alpha`` and ``rank`` in the file metadata) so other tools can read it.
:meth:`LoRA.merge` folds it into the base weights for zero-overhead inference.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

#: default targets: attention projections and the feed-forward of every transformer block
DEFAULT_TARGETS: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")


class _Adapter(nn.Module):
    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)  # starts as the identity edit


class LoRA(nn.Module):
    """Adapters for the ``nn.Linear`` modules of ``model`` whose names end with one of ``targets``.

    Only modules under ``blocks.`` are targeted (the DiT blocks). ``scale = alpha / rank``.
    """

    def __init__(
        self,
        model: nn.Module,
        rank: int = 32,
        alpha: Optional[float] = None,
        targets: Iterable[str] = DEFAULT_TARGETS,
    ) -> None:
        super().__init__()
        self.rank = int(rank)
        self.alpha = float(alpha if alpha is not None else rank)
        self.scale = self.alpha / self.rank
        self.names: List[str] = []
        self.adapters = nn.ModuleDict()
        self._handles: list = []
        targets = tuple(targets)
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name.startswith("blocks.") and name.endswith(targets):
                self.names.append(name)
                self.adapters[name.replace(".", "__")] = _Adapter(mod, self.rank)
        if not self.names:
            raise ValueError(f"LoRA: no nn.Linear under 'blocks.' matches targets {targets}")
        self._model = [model]  # not a submodule: the adapter must not own (or save) the base
        self.attach()

    def attach(self) -> None:
        """(Re)install the forward hooks on the base model."""
        self.detach()
        mods = dict(self._model[0].named_modules())
        for name in self.names:
            ad = self.adapters[name.replace(".", "__")]
            self._handles.append(mods[name].register_forward_hook(self._hook(ad)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, ad: _Adapter):
        def fn(mod: nn.Module, inputs, output):
            x = inputs[0]
            dt = ad.lora_A.weight.dtype
            return output + (ad.lora_B(ad.lora_A(x.to(dt))) * self.scale).to(output.dtype)

        return fn

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``scale · B·A`` into the base weights and remove the hooks (irreversible)."""
        mods = dict(self._model[0].named_modules())
        for name in self.names:
            ad = self.adapters[name.replace(".", "__")]
            w = mods[name].weight
            delta = (ad.lora_B.weight.float() @ ad.lora_A.weight.float()) * self.scale
            w.copy_((w.float() + delta.to(w.device)).to(w.dtype))
        self.detach()

    def peft_state_dict(self, prefix: str = "transformer.") -> Dict[str, torch.Tensor]:
        """Adapter weights under peft/diffusers names."""
        out = {}
        for name in self.names:
            ad = self.adapters[name.replace(".", "__")]
            out[f"{prefix}{name}.lora_A.weight"] = ad.lora_A.weight
            out[f"{prefix}{name}.lora_B.weight"] = ad.lora_B.weight
        return out

    @classmethod
    def from_peft_state_dict(
        cls, model: nn.Module, sd: Dict[str, torch.Tensor], alpha: Optional[float] = None, prefix: str = "transformer."
    ) -> "LoRA":
        """Rebuild adapters for ``model`` from :meth:`peft_state_dict` output (shapes give the rank)."""
        names = sorted({k[len(prefix):].rsplit(".lora_", 1)[0] for k in sd if ".lora_A." in k})
        if not names:
            raise ValueError("no LoRA weights (keys '*.lora_A.weight') found")
        rank = sd[f"{prefix}{names[0]}.lora_A.weight"].shape[0]
        lora = cls.__new__(cls)
        nn.Module.__init__(lora)
        lora.rank, lora.alpha = int(rank), float(alpha if alpha is not None else rank)
        lora.scale = lora.alpha / lora.rank
        lora.names, lora.adapters, lora._handles = [], nn.ModuleDict(), []
        mods = dict(model.named_modules())
        missing = [n for n in names if n not in mods or not isinstance(mods[n], nn.Linear)]
        if missing:
            raise ValueError(f"LoRA targets not in the transformer: {missing[:5]}{' …' if len(missing) > 5 else ''}")
        for n in names:
            ad = _Adapter(mods[n], lora.rank)
            ad.lora_A.weight.data = sd[f"{prefix}{n}.lora_A.weight"].clone()
            ad.lora_B.weight.data = sd[f"{prefix}{n}.lora_B.weight"].clone()
            lora.names.append(n)
            lora.adapters[n.replace(".", "__")] = ad
        lora._model = [model]
        lora.attach()
        return lora


__all__ = ["DEFAULT_TARGETS", "LoRA"]
