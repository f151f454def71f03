"""The command line that replays the dock's SAM 2 session: ``napari-sam propagate``'s options.

*Export prompts* writes the clicks of the objects followed with SAM 2 memory;
the sentence it shows names the command that follows them again from the
image's file: the line of a time-lapse of stacks (``--along``, ``--at``), the
channels SAM saw when they were made from the file's channel axis
(``--channels``; of a stack or of a time-lapse of stacks), and the contrast
limits SAM saw (``--contrast``, per channel), so that the command sees what
the dock saw. Channel layers chosen from separate layers have no one file to
replay from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["replay_options"]


def replay_options(owner: Any, line: tuple[int, tuple[int, ...]] | None) -> str | None:
    """The options (with a leading space) that replay the session of the interactive
    controller ``owner`` along ``line`` (``(axis, a full index on it)``, None: a stack);
    None when no one image file holds what SAM saw."""
    image = owner.image
    if image is None:
        return None
    channels = owner.channels
    where = _line_options(image, line)
    if not channels.active_for(image):
        return where + _contrast([image.contrast_limits])
    numbers = channels.numbers()
    if numbers is None:  # separate layers: no one file holds them
        return None
    # the command reads the file's channel axis first: (C, Z, Y, X) or (C, T, Z, Y, X)
    return (where + f" --channels {' '.join(map(str, numbers))}"
            + _contrast(channels.contrasts()))


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
