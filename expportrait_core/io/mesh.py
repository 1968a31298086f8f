"""Mesh export (OBJ and binary glTF) for previews in ComfyUI's 3D viewer and DCC tools."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .atomic import atomic_path


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.zeros_like(v)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.clip(np.linalg.norm(n, axis=1, keepdims=True), 1e-12, None)


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """vertices: [V, 3] float; faces: [F, 3] int (0-based). Writes vertex normals too."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    n = _vertex_normals(v, f)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write("# ExpPortrait head proxy\n")
            np.savetxt(fh, v, fmt="v %.6f %.6f %.6f")
            np.savetxt(fh, n, fmt="vn %.5f %.5f %.5f")
            ff = f + 1
            np.savetxt(fh, np.repeat(ff, 2, axis=1), fmt="f %d//%d %d//%d %d//%d")
    return Path(path)


def write_glb(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Binary glTF 2.0 with positions, normals and uint32 indices (one mesh, one node)."""
    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces, dtype=np.uint32).reshape(-1)
    n = _vertex_normals(v.astype(np.float64), faces.astype(np.int64)).astype(np.float32)
    blobs = [v.tobytes(), n.tobytes(), f.tobytes()]
    offsets, pos = [], 0
    for b in blobs:
        offsets.append(pos)
        pos += (len(b) + 3) // 4 * 4
    binary = b"".join(b + b"\0" * ((4 - len(b) % 4) % 4) for b in blobs)
    gltf = {
        "asset": {"version": "2.0", "generator": "ExpPortrait"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1}, "indices": 2}]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": offsets[0], "byteLength": len(blobs[0]), "target": 34962},
            {"buffer": 0, "byteOffset": offsets[1], "byteLength": len(blobs[1]), "target": 34962},
            {"buffer": 0, "byteOffset": offsets[2], "byteLength": len(blobs[2]), "target": 34963},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": len(v), "type": "VEC3",
             "min": v.min(0).tolist(), "max": v.max(0).tolist()},
            {"bufferView": 1, "componentType": 5126, "count": len(v), "type": "VEC3"},
            {"bufferView": 2, "componentType": 5125, "count": len(f), "type": "SCALAR"},
        ],
    }
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * ((4 - len(js) % 4) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<III", 0x46546C67, 2, total))
            fh.write(struct.pack("<II", len(js), 0x4E4F534A) + js)
            fh.write(struct.pack("<II", len(binary), 0x004E4942) + binary)
    return Path(path)
