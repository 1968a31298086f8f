"""insightface backend: the ONNX files of an insightface model pack, run with onnxruntime.

Packs such as ``buffalo_l`` or ``antelopev2`` are folders of ONNX files that users place in
``ComfyUI/models/insightface/models/<pack>/``: an SCRFD detector, the ``2d106det`` 106-point and
``1k3d68`` 68-point (3D) landmark regressors, an ArcFace recogniser and a gender/age model.

Why not ``insightface.app.FaceAnalysis``: it downloads a pack when the folder is missing (we must
never download), its wheel is the most common install failure of ComfyUI packs, and its API
changes between releases (2.x added manifests, CoreML session pools, liveness addons). The
pre- and post-processing of the four networks is short, so this module re-implements it on top
of ``onnxruntime`` alone, mirroring insightface's own code (``model_zoo/scrfd.py``,
``landmark.py``, ``arcface_onnx.py``, ``utils/face_align.py``): same model routing by input/output
shapes, same input normalisation rules, same letterboxing, anchor decoding, NMS and ArcFace
alignment. The tests check it against insightface's classes on small generated ONNX graphs.

Landmarks: ``landmark_model="auto"`` uses ``2d106det`` mapped to iBUG-68 (2D points, contour on
the visible silhouette like dlib's, which is what SMPL-X's dynamic contour expects) and falls
back to ``1k3d68`` (whose contour is the 3D jaw line, also occluded parts).
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ExpPortraitError, MissingModelError
from .layout import LANDMARK_WEIGHTS_68, five_points_from_68, ibug68_from_insightface106
from .types import Face, FaceAnalyzer, l2_normalise

log = logging.getLogger(__name__)

#: Files of the known packs (for error messages; routing itself is by shapes, like insightface).
KNOWN_PACKS = {
    "buffalo_l": ["det_10g.onnx", "2d106det.onnx", "1k3d68.onnx", "w600k_r50.onnx", "genderage.onnx"],
    "buffalo_m": ["det_2.5g.onnx", "2d106det.onnx", "1k3d68.onnx", "w600k_r50.onnx", "genderage.onnx"],
    "buffalo_s": ["det_500m.onnx", "2d106det.onnx", "1k3d68.onnx", "w600k_mbf.onnx", "genderage.onnx"],
    "antelopev2": ["scrfd_10g_bnkps.onnx", "2d106det.onnx", "1k3d68.onnx", "glintr100.onnx", "genderage.onnx"],
}
PACK_SOURCE = (
    "https://github.com/deepinsight/insightface/tree/master/python-package#model-zoo "
    "(download the pack's .zip and unzip it so the .onnx files sit directly in that folder; "
    "insightface's pretrained models are for non-commercial research use)"
)

# ArcFace 112x112 alignment template (insightface utils/face_align.py), pixel-index coordinates.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


@dataclass
class InsightFaceConfig:
    """Settings of the insightface backend (defaults are insightface's).

    det_size: detector input (width, height) for packs with a dynamic input size; images are
        letterboxed into it.
    det_thresh: minimum detection probability.
    nms_thresh: IoU above which overlapping detections are merged.
    landmark_model: ``"auto"`` (2d106 → 68 if present, else 1k3d68), ``"2d106"`` or ``"3d68"``.
    """

    det_size: Tuple[int, int] = (640, 640)
    det_thresh: float = 0.5
    nms_thresh: float = 0.4
    landmark_model: str = "auto"


# -- pack location -------------------------------------------------------------------------
def find_pack_dir(model_pack: str, models_dir: Optional[str]) -> Optional[Path]:
    """Folder of ``model_pack`` (holding ``*.onnx``), or None.

    Looks at ``model_pack`` itself when it is a folder, then ``<models_dir>/models/<pack>`` (the
    insightface root layout, ``ComfyUI/models/insightface``), ``<models_dir>/<pack>`` and one level
    deeper (``antelopev2.zip`` unpacks into ``antelopev2/antelopev2/``).
    """
    cands: List[Path] = []
    p = Path(model_pack).expanduser()
    if p.is_absolute() or os.sep in model_pack or "/" in model_pack:
        cands.append(p)
    if models_dir:
        root = Path(models_dir).expanduser()
        cands += [root / "models" / model_pack, root / model_pack]
    for c in cands:
        for d in (c, c / c.name):
            if d.is_dir() and glob.glob(str(d / "*.onnx")):
                return d
    return None


def list_packs(models_dir: Optional[str]) -> List[str]:
    """Names of the pack folders (holding ``*.onnx``) under ``<models_dir>/models`` and ``<models_dir>``."""
    out = set()
    if models_dir:
        root = Path(models_dir).expanduser()
        for base in (root / "models", root):
            if base.is_dir():
                for d in base.iterdir():
                    if d.is_dir() and find_pack_dir(d.name, str(root)) is not None:
                        out.add(d.name)
    return sorted(out)


def expected_pack_folder(model_pack: str, models_dir: Optional[str]) -> str:
    """Where the user should put the pack (for messages)."""
    p = Path(model_pack).expanduser()
    if p.is_absolute():
        return str(p)
    return str(Path(models_dir or "models/insightface").expanduser() / "models" / model_pack)


def resolve_providers(providers: Optional[Sequence[str]]) -> List[str]:
    """onnxruntime providers to use: CUDA (if available) then CPU by default; unavailable ones
    from a user list are dropped with a warning; short names ``cpu``/``cuda`` are accepted."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    alias = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
             "directml": "DmlExecutionProvider", "coreml": "CoreMLExecutionProvider", "rocm": "ROCMExecutionProvider"}
    if not providers or list(providers) == ["auto"]:
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        wanted = [alias.get(str(p).lower(), str(p)) for p in providers]
    out = [p for p in wanted if p in avail]
    dropped = [p for p in wanted if p not in avail]
    if dropped and providers:
        log.warning("onnxruntime providers not available here, skipped: %s (available: %s)", dropped, avail)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    if "CUDAExecutionProvider" in out:
        preload = getattr(ort, "preload_dlls", None)
        if callable(preload):  # lets pip-installed CUDA/cuDNN wheels be found
            try:
                preload()
            except Exception as e:  # pragma: no cover - depends on the machine
                log.warning("onnxruntime.preload_dlls failed: %s", e)
    return out


def _varint(buf, pos: int) -> Tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7


def _fields(buf, pos: int, end: int):
    """Iterate protobuf fields in ``buf[pos:end]``: (field number, wire type, value start, value end)."""
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            _, nxt = _varint(buf, pos)
        elif wt == 1:
            nxt = pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            nxt = pos + n
        elif wt == 5:
            nxt = pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield field, wt, pos, nxt
        pos = nxt


def onnx_first_node_names(path: str, limit: int = 8) -> List[str]:
    """Names of the first ``limit`` nodes of an ONNX file, read straight from the protobuf
    (ModelProto.graph = field 7, GraphProto.node = 1, NodeProto.name = 3) so that neither the
    ``onnx`` package nor loading hundreds of MB of weights is needed."""
    import mmap

    names: List[str] = []
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for f, wt, a, b in _fields(mm, 0, len(mm)):
            if f != 7 or wt != 2:
                continue
            for nf, nwt, na, nb in _fields(mm, a, b):
                if nf == 1 and nwt == 2:
                    name = next((bytes(mm[x:y]).decode("utf-8", "replace") for g, w, x, y in _fields(mm, na, nb)
                                 if g == 3 and w == 2), "")
                    names.append(name)
                    if len(names) >= limit:
                        return names
            break
    return names


def _input_norm(path: str, default: Tuple[float, float]) -> Tuple[float, float]:
    """insightface's rule for (mean, std): graphs converted from MXNet normalise inside the graph
    (a ``Sub`` and a ``Mul`` node, or a leading ``bn_data``, among the first 8 nodes) → (0, 1)."""
    try:
        names = onnx_first_node_names(path, 8)
    except Exception as e:  # unreadable: onnxruntime loaded it, so only the heuristic is lost
        log.warning("could not read the node names of %s (%s); assuming input mean/std %s", path, e, default)
        return default
    find_sub = find_mul = False
    for nid, name in enumerate(names):
        if name.startswith("Sub") or name.startswith("_minus"):
            find_sub = True
        if name.startswith("Mul") or name.startswith("_mul"):
            find_mul = True
        if nid < 3 and name == "bn_data":
            find_sub = find_mul = True
    return (0.0, 1.0) if (find_sub and find_mul) else default


def _dim(v) -> Optional[int]:
    return int(v) if isinstance(v, (int, np.integer)) and int(v) > 0 else None


# -- geometry helpers ------------------------------------------------------------------------
def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    src, dst: ``[N, 2]`` → ``[2, 3]`` matrix (Umeyama 1991, as ``skimage.transform.SimilarityTransform``).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (s0 ** 2).sum() / n
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]]).astype(np.float64)


def _nms(dets: np.ndarray, thresh: float) -> List[int]:
    """Greedy NMS over ``[N, 5]`` (x0, y0, x1, y1, score), insightface's +1 area convention."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: List[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


class _Net:
    """One onnxruntime session with its routing metadata."""

    def __init__(self, path: str, session) -> None:
        self.path = path
        self.session = session
        self.inputs = session.get_inputs()
        self.outputs = session.get_outputs()
        self.input_name = self.inputs[0].name
        self.output_names = [o.name for o in self.outputs]
        shape = list(self.inputs[0].shape)
        self.input_hw = (_dim(shape[2]), _dim(shape[3])) if len(shape) == 4 else (None, None)

    def run(self, blob: np.ndarray) -> List[np.ndarray]:
        try:
            return self.session.run(self.output_names, {self.input_name: blob})
        except Exception as e:
            raise ExpPortraitError(
                f"onnxruntime failed running '{os.path.basename(self.path)}' on an input of shape "
                f"{tuple(blob.shape)}: {e}. The file may be corrupt or not an insightface model; re-download the pack."
            ) from e


class InsightFaceAnalyzer(FaceAnalyzer):
    """SCRFD detection + 2d106/1k3d68 landmarks + ArcFace embeddings from an insightface pack."""

    embedding_size = 512

    def __init__(
        self,
        pack_dir: str,
        providers: Optional[Sequence[str]] = None,
        config: Optional[InsightFaceConfig] = None,
        pack_name: Optional[str] = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except Exception as e:
            raise ExpPortraitError(
                f"The insightface backend needs onnxruntime ({e}). Install it with: pip install onnxruntime "
                "(or onnxruntime-gpu on a CUDA machine), or choose backend='dlib'."
            ) from e
        self.config = config or InsightFaceConfig()
        if self.config.landmark_model not in ("auto", "2d106", "3d68"):
            raise ExpPortraitError(f"landmark_model must be 'auto', '2d106' or '3d68', got {self.config.landmark_model!r}.")
        self.pack_dir = Path(pack_dir)
        pack = pack_name or self.pack_dir.name
        self.name = f"insightface:{pack}"
        self.providers = resolve_providers(providers)
        files = sorted(glob.glob(str(self.pack_dir / "*.onnx")))
        expected = ", ".join(KNOWN_PACKS.get(pack, KNOWN_PACKS["buffalo_l"]))
        if not files:
            raise MissingModelError(f"insightface model pack '{pack}'", str(self.pack_dir), expected, PACK_SOURCE)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.detector: Optional[_Net] = None
        self.lmk106: Optional[_Net] = None
        self.lmk3d68: Optional[_Net] = None
        self.recognizer: Optional[_Net] = None
        self.ignored: Dict[str, str] = {}
        for f in files:
            try:
                sess = ort.InferenceSession(f, sess_options=opts, providers=self.providers)
            except Exception as e:
                raise ExpPortraitError(
                    f"onnxruntime could not load '{f}' with providers {self.providers} ({type(e).__name__}: {e}). "
                    "If the message is about CUDA/cuDNN, choose the 'cpu' provider or fix the CUDA install; "
                    f"otherwise the file is probably truncated or corrupt: download the pack again from {PACK_SOURCE}."
                ) from e
            self._route(_Net(f, sess))
        if self.detector is None:
            raise MissingModelError(
                f"face detector (SCRFD) of insightface pack '{pack}'", str(self.pack_dir), expected, PACK_SOURCE
            )
        want = self.config.landmark_model
        if (want == "2d106" and self.lmk106 is None) or (want == "3d68" and self.lmk3d68 is None) or (
            self.lmk106 is None and self.lmk3d68 is None
        ):
            raise MissingModelError(
                f"landmark model ({'2d106det.onnx' if want != '3d68' else '1k3d68.onnx'}) of insightface pack '{pack}'",
                str(self.pack_dir),
                expected,
                PACK_SOURCE,
            )
        self._use_106 = self.lmk106 is not None and want in ("auto", "2d106")

    # -- routing (insightface model_zoo.ModelRouter) ----------------------------------------
    def _route(self, net: _Net) -> None:
        name = os.path.basename(net.path)
        h, w = net.input_hw
        if len(net.outputs) >= 5:
            if self.detector is None:
                self._init_detector(net)
            else:
                self.ignored[name] = "second detector"
        elif h == 192 and w == 192:
            n_out = _dim(net.outputs[0].shape[1]) if len(net.outputs[0].shape) > 1 else None
            if n_out == 3309:
                if self.lmk3d68 is None:
                    net.mean, net.std = _input_norm(net.path, (127.5, 128.0))
                    self.lmk3d68 = net
                else:
                    self.ignored[name] = "second 3d68 landmark model"
            elif n_out is not None and n_out % 2 == 0 and n_out // 2 == 106:
                if self.lmk106 is None:
                    net.mean, net.std = _input_norm(net.path, (127.5, 128.0))
                    self.lmk106 = net
                else:
                    self.ignored[name] = "second 2d106 landmark model"
            else:
                self.ignored[name] = f"landmark model with {n_out} outputs (not 106 or 68 points)"
        elif h == 96 and w == 96:
            self.ignored[name] = "gender/age model (not used)"
        elif len(net.inputs) == 2 and h == 128 and w == 128:
            self.ignored[name] = "face swapper (not used)"
        elif h is not None and h == w and h >= 112 and h % 16 == 0:
            if self.recognizer is None:
                net.mean, net.std = _input_norm(net.path, (127.5, 127.5))
                self.recognizer = net
            else:
                self.ignored[name] = "second recognition model"
        else:
            self.ignored[name] = "unrecognised model"

    def _init_detector(self, net: _Net) -> None:
        n = len(net.outputs)
        layouts = {6: (3, [8, 16, 32], 2, False), 9: (3, [8, 16, 32], 2, True),
                   10: (5, [8, 16, 32, 64, 128], 1, False), 15: (5, [8, 16, 32, 64, 128], 1, True)}
        if n not in layouts:
            self.ignored[os.path.basename(net.path)] = f"detector with {n} outputs (SCRFD has 6, 9, 10 or 15)"
            return
        net.fmc, net.strides, net.num_anchors, net.use_kps = layouts[n]
        net.batched = len(net.outputs[0].shape) == 3
        self.detector = net
        self._centers: Dict[Tuple[int, int, int], np.ndarray] = {}

    # -- detection ---------------------------------------------------------------------------
    def detect_raw(self, img: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """SCRFD on an RGB uint8 image: ``([N, 5] x0, y0, x1, y1, score, [N, 5, 2] keypoints or None)``,
        continuous coordinates of ``img``, sorted by score."""
        import cv2

        net = self.detector
        h, w = img.shape[:2]
        dh, dw = net.input_hw
        if dh is None or dw is None:
            dw, dh = self.config.det_size
        im_ratio, model_ratio = h / w, dh / dw
        if im_ratio > model_ratio:
            nh, nw = dh, max(1, int(dh / im_ratio))
        else:
            nw, nh = dw, max(1, int(dw * im_ratio))
        det_scale = nh / h
        det_img = np.zeros((dh, dw, 3), np.uint8)
        det_img[:nh, :nw] = cv2.resize(img, (nw, nh))
        # insightface feeds BGR with swapRB=True, i.e. RGB: our image is RGB already.
        blob = det_img.transpose(2, 0, 1)[None].astype(np.float32)
        blob -= 127.5
        blob *= 1.0 / 128.0
        outs = net.run(blob)
        scores_l, boxes_l, kps_l = [], [], []
        for idx, stride in enumerate(net.strides):
            sc = outs[idx][0] if net.batched else outs[idx]
            bb = (outs[idx + net.fmc][0] if net.batched else outs[idx + net.fmc]) * stride
            fh, fw = dh // stride, dw // stride
            key = (fh, fw, stride)
            centers = self._centers.get(key)
            if centers is None:
                centers = (np.stack(np.mgrid[:fh, :fw][::-1], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
                if net.num_anchors > 1:
                    centers = np.repeat(centers, net.num_anchors, axis=0)
                self._centers[key] = centers
            sc = sc.reshape(-1)
            bb = bb.reshape(-1, 4)
            if sc.shape[0] != centers.shape[0] or bb.shape[0] != centers.shape[0]:
                raise ExpPortraitError(
                    f"'{os.path.basename(net.path)}' returned {sc.shape[0]} scores at stride {stride} for a "
                    f"{dw}x{dh} input, expected {centers.shape[0]}: not an SCRFD detector with this layout."
                )
            pos = np.where(sc >= self.config.det_thresh)[0]  # decode only the candidates
            c, d = centers[pos], bb[pos]
            scores_l.append(sc[pos])
            boxes_l.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            if net.use_kps:
                kp = outs[idx + 2 * net.fmc][0] if net.batched else outs[idx + 2 * net.fmc]
                kp = kp.reshape(-1, kp.shape[-1])[pos] * stride
                kps_l.append(kp.reshape(len(pos), kp.shape[-1] // 2, 2) + c[:, None, :])
        scores = np.concatenate(scores_l) if scores_l else np.zeros(0, np.float32)
        if scores.size == 0:
            return np.zeros((0, 5), np.float32), (np.zeros((0, 5, 2), np.float32) if net.use_kps else None)
        # network outputs are pixel-index coordinates of det_img: +0.5 → continuous, / scale → image
        boxes = (np.concatenate(boxes_l) + 0.5) / det_scale
        dets = np.hstack([boxes, scores[:, None]]).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        dets = dets[order]
        kps = None
        if net.use_kps:
            kps = ((np.concatenate(kps_l) + 0.5) / det_scale)[order].astype(np.float32)
        keep = _nms(dets, self.config.nms_thresh)
        return dets[keep], (kps[keep] if kps is not None else None)

    def _landmark_net(self, net: _Net, img: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Run a 192² landmark regressor on the loose crop around ``box``: ``[K, 2 or 3]`` continuous."""
        import cv2

        size = net.input_hw[0]
        w, h = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[0] + box[2]) / 2 - 0.5, (box[1] + box[3]) / 2 - 0.5  # index coordinates
        s = size / (max(w, h) * 1.5)
        m = np.array([[s, 0, size / 2 - cx * s], [0, s, size / 2 - cy * s]], np.float64)
        crop = cv2.warpAffine(img, m, (size, size), borderValue=0.0)
        blob = crop.transpose(2, 0, 1)[None].astype(np.float32)
        blob -= net.mean
        blob *= 1.0 / net.std
        pred = net.run(blob)[0][0].astype(np.float64)
        pred = pred.reshape(-1, 3) if pred.shape[0] >= 3000 else pred.reshape(-1, 2)
        n = 68 if net is self.lmk3d68 else 106
        pred = pred[-n:].copy()
        pred[:, :2] = (pred[:, :2] + 1) * (size // 2)
        if pred.shape[1] == 3:
            pred[:, 2] *= size // 2
        im = cv2.invertAffineTransform(m)
        xy = pred[:, :2] @ im[:, :2].T + im[:, 2]
        out = pred.copy()
        out[:, :2] = xy + 0.5
        if pred.shape[1] == 3:
            out[:, 2] = pred[:, 2] / s
        return out.astype(np.float32)

    def _make_face(self, img: np.ndarray, box: np.ndarray, score: float, kps: Optional[np.ndarray]) -> Face:
        extra = {}
        if self._use_106:
            p106 = self._landmark_net(self.lmk106, img, box)
            extra["landmarks_106"] = p106
            lmk = ibug68_from_insightface106(p106)
        else:
            p3d = self._landmark_net(self.lmk3d68, img, box)
            extra["landmarks_3d_68"] = p3d
            lmk = p3d[:, :2].copy()
        return Face(
            box=np.asarray(box[:4], np.float32),
            score=float(score),
            landmarks=np.ascontiguousarray(lmk, dtype=np.float32),
            landmark_weights=(LANDMARK_WEIGHTS_68 * np.float32(score)).astype(np.float32),
            embedding=None,
            backend=self.name,
            keypoints5=None if kps is None else np.asarray(kps, np.float32),
            extra=extra,
        )

    def _detect(self, image: np.ndarray, max_faces: int) -> List[Face]:
        dets, kps = self.detect_raw(image)
        area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
        order = np.argsort(-area, kind="stable")
        if max_faces > 0:
            order = order[:max_faces]
        return [self._make_face(image, dets[i, :4], float(dets[i, 4]), None if kps is None else kps[i]) for i in order]

    def _landmarks_in_box(self, image: np.ndarray, box: np.ndarray, score: float) -> Optional[Face]:
        if not np.all(np.isfinite(box)) or box[2] - box[0] < 4 or box[3] - box[1] < 4:
            return None
        return self._make_face(image, box, score, None)

    # -- identity ----------------------------------------------------------------------------
    def align_for_recognition(self, image: np.ndarray, face: Face) -> np.ndarray:
        """ArcFace-aligned crop ``[S, S, 3]`` uint8 (S = recogniser input, 112) from the 5 keypoints
        (the detector's, else derived from the 68 landmarks)."""
        import cv2

        if self.recognizer is None:
            raise MissingModelError(
                f"recognition model of insightface pack '{self.pack_dir.name}'",
                str(self.pack_dir),
                "w600k_r50.onnx (buffalo_l) or glintr100.onnx (antelopev2)",
                PACK_SOURCE,
            )
        size = self.recognizer.input_hw[0]
        kps = face.keypoints5 if face.keypoints5 is not None else five_points_from_68(face.landmarks)
        ratio, diff_x = (size / 112.0, 0.0) if size % 112 == 0 else (size / 128.0, 8.0 * size / 128.0)
        dst = ARCFACE_DST * ratio
        dst[:, 0] += diff_x
        m = similarity_transform(np.asarray(kps, np.float64) - 0.5, dst)
        return cv2.warpAffine(image, m, (size, size), borderValue=0.0)

    def _embed(self, image: np.ndarray, faces: List[Face]) -> List[np.ndarray]:
        crops = [self.align_for_recognition(image, f) for f in faces]
        net = self.recognizer
        out = []
        for c in crops:  # batch 1: exported ArcFace graphs often fix the batch dimension
            blob = c.transpose(2, 0, 1)[None].astype(np.float32)
            blob -= net.mean
            blob *= 1.0 / net.std
            out.append(l2_normalise(net.run(blob)[0][0]))
        return out


__all__ = [
    "ARCFACE_DST",
    "InsightFaceAnalyzer",
    "InsightFaceConfig",
    "KNOWN_PACKS",
    "PACK_SOURCE",
    "expected_pack_folder",
    "find_pack_dir",
    "list_packs",
    "onnx_first_node_names",
    "resolve_providers",
    "similarity_transform",
]
