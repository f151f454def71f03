"""THE background job runner of the docks: every long task runs through it.

:class:`QtJobRunner` runs a :class:`~napari_sam._widgets.jobs.Job` in a napari
``thread_worker``, passing it ``progress`` and ``should_cancel``; it owns the
dock's progress bar (stage, steps, time remaining), napari's progress indicator
and the Cancel button; fallback warnings of the work
(:class:`~napari_sam.errors.DeviceFallbackWarning`) are shown every time, as
one sentence; failures become ONE notification each
(:func:`~napari_sam._widgets.notices.notice_for`); results are delivered on the
main thread. The work never raises into napari's worker machinery (which would
add a notification of its own): :func:`~napari_sam._widgets.jobs.execute`
returns the outcome instead.

Nothing animates while a plane is encoded for a preview: the dock's bar is never
"busy" (while a job's total is unknown it stands still, empty, with the job's
text), and encoding jobs (:data:`QUIET_KINDS`) get no entry in napari's activity,
whose "in progress" spinner runs while any entry exists. Where OpenGL is
rendered in software (:func:`~napari_sam._widgets._qt.rendering.software_opengl`)
no job gets one: the dock's bar shows the progress. Animations repaint the
window many times a second; without a GPU (software OpenGL: remote desktops,
virtual machines) that painting took the CPU from the encoding, and ViT-B's
first preview on a 2-core CPU took ~1.7x as long as the encoding alone
(``benchmarks/bench_dock_preview.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from napari.qt.threading import thread_worker
from napari.utils.progress import progress as napari_progress
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QWidget

from napari_sam._widgets._qt.rendering import software_opengl
from napari_sam._widgets.jobs import Job, Outcome, ProgressText, deliver, execute, yield_to
from napari_sam._widgets.notices import Notice
from napari_sam.runtime.progress import Progress

__all__ = ["QUIET_KINDS", "JobPanel", "QtJobRunner"]

#: Job kinds without an entry in napari's activity (its spinner would run meanwhile):
#: encoding the plane the user just prompted on or looks at, shown by the dock's own bar.
QUIET_KINDS = frozenset({"encode", "ahead"})

log = logging.getLogger(__name__)


@thread_worker(start_thread=False)
def _work(job: Job, progress: Callable[[Progress], Any], fallback: Callable[[str], Any]) -> Outcome:
    return execute(job, progress, fallback)


def _still(bar: QProgressBar) -> None:
    """An empty bar that does not move (the total is unknown): never Qt's busy animation."""
    bar.setRange(0, 1)
    bar.setValue(0)


class JobPanel(QWidget):
    """The progress bar and Cancel button of a dock (hidden while nothing runs)."""

    def __init__(self) -> None:
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the work shown in the progress bar.")
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        self.setVisible(False)


class _Running:
    """A job in a worker, with its napari progress and what its bar says."""

    def __init__(self, job: Job, worker: Any, activity: bool = True) -> None:
        self.job = job
        self.worker = worker
        self.text = ProgressText(job.text, job.unit)
        self.pbar = (napari_progress(total=0, desc=f"napari-sam: {job.text}")
                     if activity and job.kind not in QUIET_KINDS else None)
        self.last = job.text


class QtJobRunner(QObject):
    """Runs jobs in napari thread workers and shows them in a :class:`JobPanel`.

    ``notify`` (a notice) and ``on_fallback`` (a sentence) are set by the
    controller that uses the runner (:class:`~napari_sam._widgets.base.ControllerBase`).
    ``activity``: whether jobs other than :data:`QUIET_KINDS` get an entry in
    napari's activity; by default, unless OpenGL is rendered in software.
    """

    _progressed = Signal(object, object)  # (job, Progress), from worker threads
    _fell_back = Signal(str)

    def __init__(
        self,
        panel: JobPanel,
        notify: Callable[[Notice], Any] | None = None,
        activity: bool | None = None,
    ) -> None:
        super().__init__()
        self.panel = panel
        self._activity = activity
        self.notify: Callable[[Notice], Any] = notify or (lambda notice: None)
        self.on_fallback: Callable[[str], Any] = lambda message: None
        self.closed = False
        self._running: list[_Running] = []
        self._progressed.connect(self._on_progress)
        self._fell_back.connect(lambda message: self.on_fallback(message))
        panel.cancel_button.clicked.connect(lambda: self.cancel())
        panel.destroyed.connect(self._panel_gone)

    def _panel_gone(self, *args: Any) -> None:
        self.closed = True  # the dock was deleted: results are still delivered, not shown

    # ------------------------------------------------------------------ the JobRunner contract
    def start(self, job: Job) -> None:
        yield_to(job, [r.job for r in self._running])
        worker = _work(job, lambda event: self._progressed.emit(job, event), self._fell_back.emit)
        running = _Running(job, worker, self._napari_activity())
        worker.returned.connect(lambda outcome: self._finished(running, outcome))
        worker.errored.connect(lambda exc: self._finished(running, Outcome(error=exc)))
        self._running.append(running)
        self._show()
        worker.start()

    def _napari_activity(self) -> bool:
        if self._activity is None:
            self._activity = not software_opengl()
        return self._activity

    def running(self, kind: str | None = None) -> bool:
        return any(kind is None or r.job.kind == kind for r in self._running)

    def cancel(self, kind: str | None = None) -> None:
        for r in self._running:
            if kind is None or r.job.kind == kind:
                r.job.cancel_event.set()

    def close(self) -> None:
        """Stop every job (their results are still delivered, for shared state)."""
        self.closed = True
        self.cancel()

    # ------------------------------------------------------------------ main thread
    def _on_progress(self, job: Job, event: Progress) -> None:
        running = next((r for r in self._running if r.job is job), None)
        if running is None:
            return
        running.last = running.text.describe(event)
        total = int(event.total or 0)
        pbar = running.pbar
        if pbar is not None:
            if pbar.total != total:
                pbar.total = total
            pbar.n = min(int(event.done), total) if total else int(event.done)
            pbar.set_description(f"napari-sam: {running.last}")  # may process Qt events
        if self._running and running is self._running[-1] and not self.closed:
            bar = self.panel.bar
            if total:
                scale = 1000 / total  # bytes overflow a QProgressBar's int range
                bar.setRange(0, 1000)
                bar.setValue(int(min(event.done, total) * scale))
            else:
                _still(bar)
            bar.setFormat(running.last.replace("%", "%%"))

    def _finished(self, running: _Running, outcome: Outcome) -> None:
        if running in self._running:
            self._running.remove(running)
        if running.pbar is not None:
            running.pbar.close()
        if not self.closed:
            self._show()
        try:
            deliver(running.job, outcome, self.notify)
        except Exception:  # a callback failed: log it, keep the dock alive
            log.exception("napari-sam: a job's result could not be shown")

    def _show(self) -> None:
        """The panel shows the latest job still running (hidden when none is)."""
        if not self._running:
            self.panel.setVisible(False)
            return
        latest = self._running[-1]
        bar = self.panel.bar
        _still(bar)
        bar.setFormat(latest.last.replace("%", "%%"))
        self.panel.setVisible(True)
