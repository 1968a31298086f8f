"""Held-out evaluation of transfer methods on synthetic identity pairs with known ground truth.

A pair is (driver A, target B). A performs a random motion with its own identity-dependent detail
(:class:`~.synthetic.SyntheticDetail`); the ground truth for B is B with the *same* expression
coefficients, jaw and pose and *B's own* detail for them. Each method transfers A's motion onto
B (``pose_mode="absolute"``, no neutral calibration, so the pose is the same as the ground
truth) and is scored by the vertex distance of the posed meshes on the face region (mean, RMS,
max) and on the whole bust (mean), in millimetres. The detail is sparse (most face vertices
barely move), so the mean is dominated by near-zero regions and the RMS by the folds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from .core import transfer_motion
from .geometry import face_region_ids
from .synthetic import SyntheticDetail, random_identity, synthetic_motion


@dataclass
class SyntheticPair:
    """driver_motion: A's motion (with A's detail); target: B; truth: B's ground-truth motion."""

    driver_motion: object
    target: object
    truth: object


def make_pairs(proxy, num_pairs: int, *, frames: int = 24, seed: int = 900_000,
               detail: Optional[SyntheticDetail] = None, **identity_kw) -> List[SyntheticPair]:
    """``num_pairs`` pairs of fresh random identities (seeds from ``seed``; keep them disjoint from
    the training identities' seeds). ``identity_kw`` go to :func:`random_identity`."""
    detail = detail or SyntheticDetail(proxy)
    pairs = []
    for i in range(num_pairs):
        a = random_identity(proxy, seed + 2 * i, **identity_kw)
        b = random_identity(proxy, seed + 2 * i + 1, **identity_kw)
        drv = synthetic_motion(proxy, a, frames, seed + 7919 * (i + 1), detail=detail)
        truth = synthetic_motion(proxy, b, frames, 0, detail=detail, params=drv.params)
        pairs.append(SyntheticPair(drv, b, truth))
    return pairs


def _meshes(proxy, motion, identity) -> torch.Tensor:
    dense = motion.dense_dynamic_offsets(proxy.num_vertices)
    p = motion.params.replace(betas=identity.betas.expand(motion.num_frames, -1))
    with torch.no_grad():
        return proxy(p.to(proxy.device), identity.static_offsets.to(proxy.device),
                     None if dense is None else dense.to(proxy.device)).vertices


def vertex_errors(proxy, motion, truth, identity) -> Dict[str, float]:
    """Mean vertex distance (mm) of two motions of ``identity``: face region and whole bust."""
    a, b = _meshes(proxy, motion, identity), _meshes(proxy, truth, identity)
    d = (a - b).norm(dim=-1)  # [T, N]
    ids = face_region_ids(proxy)
    return {"face_mm": float(d[:, ids].mean()) * 1e3, "face_rms_mm": float(d[:, ids].pow(2).mean().sqrt()) * 1e3,
            "all_mm": float(d.mean()) * 1e3, "face_max_mm": float(d[:, ids].max()) * 1e3}


def evaluate_methods(proxy, pairs: List[SyntheticPair], methods: Dict[str, dict]) -> Dict[str, Dict[str, float]]:
    """{label: transfer_motion keyword arguments} → {label: mean errors (mm) and ms per frame}.

    Timing excludes nothing: the first call of a pair includes the one-time factorization."""
    out: Dict[str, Dict[str, float]] = {}
    for label, kw in methods.items():
        acc = {"face_mm": 0.0, "face_rms_mm": 0.0, "all_mm": 0.0, "face_max_mm": 0.0}
        frames, secs = 0, 0.0
        for pr in pairs:
            t = time.perf_counter()
            res = transfer_motion(proxy, pr.target, pr.driver_motion, pose_mode="absolute", neutral_frame=None, **kw)
            secs += time.perf_counter() - t
            frames += pr.driver_motion.num_frames
            e = vertex_errors(proxy, res, pr.truth, pr.target)
            for k in acc:
                acc[k] += e[k] / len(pairs)
        acc["ms_per_frame"] = 1e3 * secs / max(frames, 1)
        out[label] = acc
    return out


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    """A small Markdown table of :func:`evaluate_methods` results."""
    lines = ["| method | face mean (mm) | face RMS (mm) | bust mean (mm) | face max (mm) | ms/frame |",
             "|---|---|---|---|---|---|"]
    for k, r in results.items():
        lines.append(f"| {k} | {r['face_mm']:.4f} | {r['face_rms_mm']:.4f} | {r['all_mm']:.4f} | {r['face_max_mm']:.2f} | "
                     f"{r['ms_per_frame']:.1f} |")
    return "\n".join(lines)
