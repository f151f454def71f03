"""The one progress / cancel contract of long work.

Every long function of napari-sam (downloading weights, encoding a stack,
automatic segmentation, propagation) takes the same two optional callables:

- ``progress(event)`` with a :class:`Progress` (``done`` of ``total`` steps,
  ``stage`` in words, the ``unit`` counted), called as work proceeds;
- ``should_cancel() -> bool``, polled between steps; when it returns True the
  work stops with :class:`~napari_sam.errors.Cancelled` (what was finished is kept).

Work written as a generator of :class:`Progress` events is run with
:func:`drive`, which applies both.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from napari_sam.errors import Cancelled

__all__ = ["CancelCheck", "Progress", "ProgressCallback", "check_cancel", "drive", "notify"]

R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """How far long work has come.

    Attributes
    ----------
    done : int
        Steps finished.
    total : int or None
        Steps in all (None while unknown, e.g. a download without a size).
    stage : str
        What is being done now, in words a user understands
        (``"encoding slice 3"``, ``"decoding prompts"``, ``"linking slices"``).
    unit : str
        What a step is (``"slices"``, ``"bytes"``, ``"batches"``), for display.
    """

    done: int
    total: int | None
    stage: str = ""
    unit: str = ""

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or None while the total is unknown."""
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))


#: Called with a :class:`Progress` as work proceeds.
ProgressCallback = Callable[[Progress], Any]
#: Returns True when the caller wants the work to stop.
CancelCheck = Callable[[], bool]


def notify(
    progress: ProgressCallback | None,
    done: int,
    total: int | None,
    stage: str = "",
    unit: str = "",
) -> None:
    """Call ``progress`` (if given) with a :class:`Progress` of these values."""
    if progress is not None:
        progress(Progress(int(done), None if total is None else int(total), stage, unit))


def check_cancel(should_cancel: CancelCheck | None, message: str) -> None:
    """Raise :class:`Cancelled` with ``message`` if ``should_cancel()`` says so."""
    if should_cancel is not None and should_cancel():
        raise Cancelled(message)


def drive(
    steps: Generator[Any, None, R],
    progress: Callable[[Any], Any] | None = None,
    should_cancel: CancelCheck | None = None,
    *,
    cancelled: str = "The work was cancelled.",
) -> R:
    """Run a generator of progress events to its end and return its return value.

    ``should_cancel`` is polled before each step; when it returns True, the
    generator is closed (its ``finally`` blocks run) and :class:`Cancelled`
    is raised with the sentence ``cancelled``. Each event the generator yields
    is passed to ``progress``.
    """
    try:
        while True:
            if should_cancel is not None and should_cancel():
                steps.close()
                raise Cancelled(cancelled)
            event = next(steps)
            if progress is not None:
                progress(event)
    except StopIteration as stop:
        return stop.value
