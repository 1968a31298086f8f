"""Draw a UI-format workflow as a picture (nodes as boxes, links as curves) for docs and reviews."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

TYPE_COLOURS = {"IMAGE": (100, 181, 246), "MASK": (129, 199, 132), "VIDEO": (255, 183, 77), "FLOAT": (170, 238, 136),
                "INT": (170, 238, 136), "EXPP_PROXY": (206, 147, 216), "EXPP_IDENTITY": (240, 98, 146),
                "EXPP_MOTION": (255, 241, 118), "EXPP_FACE_ANALYZER": (77, 208, 225), "EXPP_GENERATOR": (255, 138, 101)}


def draw_workflow(ui: Dict[str, Any], scale: float = 0.45) -> np.ndarray:
    """uint8 [H, W, 3] picture of ``ui`` (groups, nodes with titles, links coloured by type)."""
    from PIL import Image, ImageDraw

    nodes = {n["id"]: n for n in ui["nodes"]}
    boxes = []
    for n in ui["nodes"]:
        x, y = n["pos"]
        w, h = n.get("size", [300, 120])
        boxes.append((x, y - 30, x + w, y + h))
    for g in ui.get("groups", []):
        x, y, w, h = g["bounding"]
        boxes.append((x, y, x + w, y + h))
    x0 = min(b[0] for b in boxes) - 40
    y0 = min(b[1] for b in boxes) - 40
    x1 = max(b[2] for b in boxes) + 40
    y1 = max(b[3] for b in boxes) + 40
    W, H = int((x1 - x0) * scale), int((y1 - y0) * scale)
    img = Image.new("RGB", (W, H), (32, 32, 36))
    d = ImageDraw.Draw(img)
    tf = lambda x, y: ((x - x0) * scale, (y - y0) * scale)  # noqa: E731
    for g in ui.get("groups", []):
        x, y, w, h = g["bounding"]
        d.rectangle([tf(x, y), tf(x + w, y + h)], fill=(48, 56, 72), outline=(90, 110, 140), width=2)
        d.text(tf(x + 10, y + 8), g["title"], fill=(200, 210, 230))
    for lk in ui.get("links", []):
        _, src, s_slot, dst, d_slot, typ = lk[:6]
        a, b = nodes[src], nodes[dst]
        p0 = (a["pos"][0] + a.get("size", [300])[0], a["pos"][1] + 20 + 22 * s_slot)
        p1 = (b["pos"][0], b["pos"][1] + 20 + 22 * d_slot)
        t = np.linspace(0, 1, 24)[:, None]
        c0, c1 = (p0[0] + 120, p0[1]), (p1[0] - 120, p1[1])
        pts = ((1 - t) ** 3) * p0 + 3 * ((1 - t) ** 2) * t * c0 + 3 * (1 - t) * t * t * c1 + (t ** 3) * p1
        d.line([tf(*p) for p in pts], fill=TYPE_COLOURS.get(str(typ), (180, 180, 180)), width=2)
    for n in ui["nodes"]:
        x, y = n["pos"]
        w, h = n.get("size", [300, 120])
        note = n["type"] in ("Note", "MarkdownNote")
        d.rectangle([tf(x, y - 30), tf(x + w, y + h)], fill=(60, 60, 40) if note else (53, 53, 53), outline=(20, 20, 20))
        d.rectangle([tf(x, y - 30), tf(x + w, y)], fill=(80, 80, 50) if note else (34, 34, 34))
        title = n.get("title") or ("Note" if note else n["type"])
        d.text(tf(x + 8, y - 24), title, fill=(230, 230, 230))
    return np.asarray(img)
