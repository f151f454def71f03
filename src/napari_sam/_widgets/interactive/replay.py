"""The command line that replays the dock's SAM 2 session: ``napari-sam propagate``'s options.

*Export prompts* writes the clicks of the objects followed with SAM 2 memory;
the sentence it shows names the command that follows them again from the
image's file: the line of a time-lapse of stacks (``--along``, ``--at``), the
channels SAM saw when they were made from the file's channel axis
(``--channels``; of a stack or of a time-lapse of stacks), and the contrast
limits SAM saw (``--contrast``, per channel), so that the command sees what
the dock saw. Channel layers opened one per file (Fiji's *Split Channels*) are
replayed from those files (``--with``); channel layers made in napari have no
file to replay from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["replay_options"]


def replay_options(
    owner: Any, line: tuple[int, tuple[int, ...]] | None
) -> tuple[str, str] | None:
    """``(input, options)`` of the command that replays the session of the interactive
    controller ``owner`` along ``line`` (``(axis, a full index on it)``, None: a stack): the
    input is ``"STACK"`` (the image's file) or, for channel layers opened from one file each,
    the red channel's file; the options have a leading space. None when no files hold what
    SAM saw (channel layers made in napari, or channels of one file not made here)."""
    image = owner.image
    if image is None:
        return None
    channels = owner.channels
    where = _line_options(image, line)
    if not channels.active_for(image):
        return "STACK", where + _contrast([image.contrast_limits])
    contrast = _contrast(channels.contrasts())
    numbers = channels.numbers()
    if numbers is not None:
        # the command reads the file's channel axis first: (C, Z, Y, X) or (C, T, Z, Y, X)
        return "STACK", where + f" --channels {' '.join(map(str, numbers))}" + contrast
    files = [getattr(getattr(layer, "source", None), "path", None) for layer in channels.layers]
    if len(files) < 2 or None in files or len(set(files)) != len(files):
        return None
    return _quoted(files[0]), where + " --with " + " ".join(map(_quoted, files[1:])) + contrast


def _quoted(path: str) -> str:
    """A file path as a shell word."""
    import shlex

    return shlex.quote(str(path))


def _line_options(image: Any, line: tuple[int, tuple[int, ...]] | None) -> str:
    """``--along``/``--at`` for a line of a (T, Z, Y, X) image, grayscale or a channel layer
    ("" for a stack)."""
    if line is None or image.rgb or image.data.ndim != 4:
        return ""
    axis, first = line
    if axis not in (0, 1) or len(first) != 2:
        return ""
    return f" --along {'t' if axis == 0 else 'z'} --at {int(first[1 - axis])}"


def _contrast(pairs: Sequence[Sequence[float]]) -> str:
    return " --contrast " + " ".join(f"{float(v):.10g}" for pair in pairs for v in pair)
