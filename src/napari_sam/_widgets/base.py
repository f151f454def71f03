"""What every controller has: the viewer, events for the Qt side, connections, a job runner.

A controller owns the state and the decisions of a widget and works on napari's
``ViewerModel`` and layer objects only. It talks to whatever shows it through
``events`` (napari's :class:`~napari.utils.events.EmitterGroup`):

- ``notice(value=Notice)``: one napari notification;
- ``status(value=str)``: the dock's status line;
- ``changed(value=str)``: something a control shows changed (its name says what).

:meth:`ControllerBase.listen` connects to them and hands over the notices raised
before (while the controller was made).

Long work goes to ``runner`` (:mod:`napari_sam._widgets.jobs`): a
:class:`~napari_sam._widgets.jobs.SyncRunner` unless the Qt widget passes its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.utils.events import EmitterGroup

from napari_sam._widgets.jobs import JobRunner, SyncRunner
from napari_sam._widgets.notices import Notice

__all__ = ["Connections", "ControllerBase"]


class Connections:
    """Callbacks connected to napari events, so they can all be disconnected."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, Callable]] = []

    def connect(self, emitter: Any, callback: Callable) -> None:
        emitter.connect(callback)
        self._items.append((emitter, callback))

    def disconnect_source(self, source: Any) -> None:
        """Disconnect every callback connected to an event of ``source`` (e.g. a layer)."""
        keep = []
        for emitter, callback in self._items:
            if getattr(emitter, "source", None) is source:
                _disconnect(emitter, callback)
            else:
                keep.append((emitter, callback))
        self._items = keep

    def disconnect_all(self) -> None:
        for emitter, callback in self._items:
            _disconnect(emitter, callback)
        self._items = []


def _disconnect(emitter: Any, callback: Callable) -> None:
    try:
        emitter.disconnect(callback)
    except (TypeError, ValueError, RuntimeError):
        pass


class ControllerBase:
    """The viewer, events, connections and job runner of a controller.

    Parameters
    ----------
    viewer : napari.Viewer or napari.components.ViewerModel
        napari hands plugin widgets a ``PublicOnlyProxy`` of the viewer, which
        wraps every layer it returns in a new proxy while layer events carry
        the layers themselves; controllers track layers by identity, so they
        keep the viewer itself (and use only its public API).
    runner : JobRunner, optional
        Where long work runs (default: a :class:`SyncRunner`, in this thread).
    """

    def __init__(self, viewer: Any, runner: JobRunner | None = None) -> None:
        self.viewer = getattr(viewer, "__wrapped__", viewer)
        self.events = EmitterGroup(source=self, notice=None, status=None, changed=None)
        self.runner: Any = runner if runner is not None else SyncRunner()
        self.runner.notify = self.notify
        self.runner.on_fallback = self.on_fallback
        self.connections = Connections()
        self.status = ""
        self.closed = False
        self._backlog: list[Notice] | None = []  # notices before the first listener

    # ------------------------------------------------------------------ telling the user
    def notify(self, notice: Notice) -> None:
        """Show one notification (nothing once the controller is closed).

        Notices raised before anyone listens (e.g. while the controller is made) are
        kept and handed to the first :meth:`listen`.
        """
        if self.closed:
            return
        if self._backlog is not None:
            self._backlog.append(notice)
        self.events.notice(value=notice)

    def listen(
        self,
        notice: Callable[[Notice], Any] | None = None,
        status: Callable[[str], Any] | None = None,
        changed: Callable[[str], Any] | None = None,
    ) -> None:
        """Connect what shows the controller (callbacks get the value); the notices raised
        so far are handed over first (the first listener only)."""
        if notice is not None:
            for earlier in self._backlog or []:
                notice(earlier)
            self._backlog = None
            self.events.notice.connect(lambda event: notice(event.value))
        if status is not None:
            status(self.status)
            self.events.status.connect(lambda event: status(event.value))
        if changed is not None:
            self.events.changed.connect(lambda event: changed(event.value))

    def info(self, text: str) -> None:
        self.notify(Notice.info(text))

    def warn(self, text: str) -> None:
        self.notify(Notice.warning(text))

    def error(self, text: str) -> None:
        self.notify(Notice.error(text))

    def set_status(self, text: str) -> None:
        """Change the dock's status line."""
        if self.closed:
            return
        self.status = text
        self.events.status(value=text)

    def changed(self, what: str) -> None:
        """Tell the controls that ``what`` changed (e.g. ``"image"``, ``"model"``)."""
        if not self.closed:
            self.events.changed(value=what)

    def on_fallback(self, message: str) -> None:
        """Work had to use less memory (smaller batches, or the CPU): say so, every time."""
        self.warn(message)
        self.set_status(message)
        self.changed("model")  # e.g. moved to the CPU: the model line says where it is now

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Disconnect from the viewer and stop the running jobs (their results are dropped)."""
        if self.closed:
            return
        self.closed = True
        self.connections.disconnect_all()
        self.runner.close()
