"""What the widgets tell the user: notices (shown as napari notifications by the Qt side).

Controllers never call :mod:`napari.utils.notifications`; they emit
:class:`Notice` objects, which the Qt widget shows (one notification each) and
tests collect. :func:`notice_for` is the one mapping of an exception to what
the user sees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from napari_sam.errors import Cancelled, NapariSamError

__all__ = ["ERROR", "INFO", "WARNING", "Notice", "notice_for"]

log = logging.getLogger(__name__)

INFO, WARNING, ERROR = "info", "warning", "error"


@dataclass(frozen=True)
class Notice:
    """One message for the user.

    Attributes
    ----------
    level : str
        ``"info"``, ``"warning"`` or ``"error"``.
    text : str
        One or more plain sentences.
    """

    level: str
    text: str

    @classmethod
    def info(cls, text: str) -> Notice:
        return cls(INFO, text)

    @classmethod
    def warning(cls, text: str) -> Notice:
        return cls(WARNING, text)

    @classmethod
    def error(cls, text: str) -> Notice:
        return cls(ERROR, text)

    @classmethod
    def nothing(cls) -> Notice:
        """Nothing to tell (a job's ``failed`` returns it to keep a failure quiet)."""
        return cls(INFO, "")


def notice_for(exc: BaseException) -> Notice:
    """What the user is told about a failure.

    Work the user stopped (:class:`~napari_sam.errors.Cancelled`) is an info;
    napari-sam's own errors are their one sentence; anything else is an
    unexpected error, named by its type (and logged with its traceback).
    """
    if isinstance(exc, Cancelled):
        return Notice.info(str(exc))
    if isinstance(exc, NapariSamError):
        return Notice.error(str(exc))
    log.error("napari-sam: unexpected error", exc_info=exc)
    return Notice.error(f"{type(exc).__name__}: {exc}")
