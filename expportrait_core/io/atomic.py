"""Atomic file writes: every output file of the pack goes through here.

A file is written to a temp file in the destination folder and renamed onto its final name only
when writing succeeded, so an interrupted or failing write never leaves a half-written output
(``os.replace`` is atomic within one file system).
"""
from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from ..errors import ExpPortraitError

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic", "save_safetensors_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: Optional[str] = None, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it onto ``path`` only if the block succeeds.

    ``suffix`` (default: ``path``'s own) matters to writers that pick a format from the name.
    With ``make_parents=False`` a missing destination folder is an error instead of being created.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        if make_parents:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise ExpPortraitError(f"Output folder does not exist: '{folder}'. Create it or choose another path.")
        fd, tmp = _create_temp(folder, "." + path.stem + ".", suffix or path.suffix or ".tmp")
    except OSError as exc:
        raise ExpPortraitError(f"Cannot write to '{folder}': {exc.strerror or exc}.") from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _create_temp(folder: Path, prefix: str, suffix: str) -> Tuple[int, str]:
    """Create a new, uniquely named file like ``tempfile.mkstemp``, but with the permissions a
    normal file gets (0666 minus the umask), not mkstemp's 0600: it becomes the user's output."""
    for _ in range(100):
        name = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in '{folder}'")


def write_text_atomic(path: str | os.PathLike, text: str, make_parents: bool = True) -> Path:
    """Write UTF-8 text atomically. Returns ``Path(path)``."""
    with atomic_path(path, make_parents=make_parents) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 2, sort_keys: bool = False,
                      make_parents: bool = True) -> Path:
    """Write ``data`` as JSON (trailing newline) atomically. Returns ``Path(path)``."""
    return write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n", make_parents)


def save_safetensors_atomic(tensors: Mapping[str, Any], path: str | os.PathLike,
                            metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write tensors as ``.safetensors`` atomically. Returns ``Path(path)``.

    Tensors are detached and moved to the CPU; a tensor whose storage an earlier one already uses is
    cloned, since safetensors refuses shared storage (e.g. a parameter container whose two fields
    view one buffer). Nothing else is copied, so saving a large state dict does not double memory.
    """
    from safetensors.torch import save_file

    cpu: Dict[str, Any] = {}
    seen: set = set()
    for name, value in tensors.items():
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        cpu[name] = t
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)
    return Path(path)
