"""Where :class:`~napari_sam.errors.DeviceFallbackWarning` goes: one relay for the CLI and the GUI.

Work that had to retry with less memory (smaller batches, or the CPU) says so
with a ``DeviceFallbackWarning`` (``warnings.warn``): the result is correct,
only slower. :func:`relay_fallbacks` hands each one to a function of the
caller — the command line prints it as one line, the napari docks show it as a
notification — every time it happens (the warning filter for it is set to
"always", process-wide, so a repeated fallback is never swallowed). Other
warnings go where they went before.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from napari_sam.errors import DeviceFallbackWarning

__all__ = ["relay_fallbacks"]


@contextlib.contextmanager
def relay_fallbacks(
    on_fallback: Callable[[str], Any], *, this_thread_only: bool = True
) -> Iterator[None]:
    """Send each ``DeviceFallbackWarning`` raised inside the block to ``on_fallback``.

    With ``this_thread_only`` (the default), only warnings raised in the thread
    that entered the block are relayed: several workers may relay at once,
    each its own. Python's ``warnings.showwarning`` is process-wide, so the
    relay is chained in front of the one in place and removed on exit if it is
    still the one in place.
    """
    thread = threading.get_ident()
    active = [True]
    previous = warnings.showwarning
    warnings.filterwarnings("always", category=DeviceFallbackWarning)

    def show(message, category, filename, lineno, file=None, line=None):
        mine = active[0] and (not this_thread_only or threading.get_ident() == thread)
        if mine and issubclass(category, DeviceFallbackWarning):
            on_fallback(str(message))
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        active[0] = False
        if warnings.showwarning is show:
            warnings.showwarning = previous
