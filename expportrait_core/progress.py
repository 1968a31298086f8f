"""Progress reporting that keeps the core ComfyUI-free.

Long loops in the core take ``progress: ProgressFn | None`` and call ``progress(i, n, preview)``
after each step. The ComfyUI nodes pass a callback that drives ``comfy.utils.ProgressBar`` and
checks for interruption (raising from inside the callback stops the loop); the CLI passes a tqdm
bar. ``preview`` is an optional ``[H, W, 3]`` float image in 0..1 that UIs may show.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

ProgressFn = Callable[[int, int, Optional[Any]], None]


def report(progress: Optional[ProgressFn], i: int, n: int, preview: Any = None) -> None:
    """Call ``progress`` if given (``i`` steps done out of ``n``)."""
    if progress is not None:
        progress(i, n, preview)


class TqdmProgress:
    """A ``ProgressFn`` backed by tqdm, for the CLI. Use as a context manager."""

    def __init__(self, desc: str, leave: bool = True) -> None:
        self.desc = desc
        self.leave = leave
        self._bar = None

    def __call__(self, i: int, n: int, preview: Any = None) -> None:
        from tqdm.auto import tqdm

        if self._bar is None or self._bar.total != n:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=n, desc=self.desc, leave=self.leave, dynamic_ncols=True)
        self._bar.n = i
        self._bar.refresh()

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()
