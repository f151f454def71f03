"""Long work of the widgets, described without Qt: jobs, how they run, how progress reads.

A controller describes each long task (loading a model, encoding a plane,
precomputing a stack, propagating, automatic segmentation) as a :class:`Job`
and hands it to a :class:`JobRunner`. The runner calls ``job.run(progress,
should_cancel)`` somewhere (a worker thread in the Qt widget, see
``napari_sam._widgets._qt.jobs``; the calling thread in :class:`SyncRunner`),
then, on the thread the controller lives on, exactly one of ``job.done(result)``
or ``job.failed(error)``, and always ``job.finished()``. A failure becomes ONE
notice (:func:`~napari_sam._widgets.notices.notice_for`, unless ``job.failed``
returns its own); a :class:`~napari_sam.errors.DeviceFallbackWarning` raised
in the work is shown every time it happens, as its own sentence.

:func:`execute` is the part every runner shares; :class:`ProgressText` turns
:class:`~napari_sam.runtime.progress.Progress` events into what a progress bar
says, with the time remaining.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from napari_sam._widgets.notices import Notice, notice_for
from napari_sam.runtime.fallbacks import relay_fallbacks
from napari_sam.runtime.progress import CancelCheck, Progress, ProgressCallback

__all__ = [
    "Job",
    "JobRunner",
    "Outcome",
    "ProgressText",
    "SyncRunner",
    "deliver",
    "execute",
    "format_duration",
    "yield_to",
]


@dataclass
class Job:
    """One long task.

    Attributes
    ----------
    kind : str
        What it is (``"load"``, ``"encode"``, ``"precompute"``, ``"propagate"``,
        ``"segment"``); one job of a kind runs at a time per runner.
    text : str
        What the progress bar says while it runs (``"Loading vit_b…"``).
    run : callable
        ``run(progress, should_cancel) -> result``, called in the worker.
    done : callable, optional
        ``done(result)``, on the controller's thread.
    failed : callable, optional
        ``failed(error) -> Notice or None`` on the controller's thread; the
        returned notice replaces the default one (:func:`notice_for`).
    finished : callable, optional
        Called last, whatever happened.
    unit : str
        What a progress step is, when the events do not say.
    background : bool
        Work done ahead of need (encoding the plane in view before a click): any other
        job started on the same runner stops it (:func:`yield_to`).
    """

    kind: str
    text: str
    run: Callable[[ProgressCallback, CancelCheck], Any]
    done: Callable[[Any], Any] | None = None
    failed: Callable[[BaseException], Notice | None] | None = None
    finished: Callable[[], Any] | None = None
    unit: str = ""
    background: bool = False
    cancel_event: threading.Event = field(default_factory=threading.Event)


@dataclass
class Outcome:
    """What a job's work returned, or raised."""

    value: Any = None
    error: BaseException | None = None


def execute(
    job: Job,
    progress: ProgressCallback,
    on_fallback: Callable[[str], Any],
) -> Outcome:
    """Run ``job.run`` in this thread, relaying its fallbacks
    (:func:`~napari_sam.runtime.fallbacks.relay_fallbacks`); never raises: the
    outcome holds the result or the error."""
    with relay_fallbacks(on_fallback):
        try:
            return Outcome(value=job.run(progress, job.cancel_event.is_set))
        except Exception as exc:  # every failure is reported once, on the controller's thread
            return Outcome(error=exc)


def deliver(job: Job, outcome: Outcome, notify: Callable[[Notice], Any]) -> None:
    """Hand an outcome to the job's callbacks (on the controller's thread)."""
    try:
        if outcome.error is None:
            if job.done is not None:
                job.done(outcome.value)
        else:
            notice = job.failed(outcome.error) if job.failed is not None else None
            notice = notice or notice_for(outcome.error)
            if notice.text:  # Notice.nothing(): nothing to say (background work stopped)
                notify(notice)
    finally:
        if job.finished is not None:
            job.finished()


def yield_to(job: Job, jobs: list[Job]) -> None:
    """A job that is not background work stops the background ``jobs`` (the user's work
    first: they would share the CPU, or the GPU, with it)."""
    if not job.background:
        for other in jobs:
            if other.background:
                other.cancel_event.set()


class JobRunner(Protocol):
    """Where a controller's jobs run (:class:`SyncRunner`, or the Qt widget's runner)."""

    def start(self, job: Job) -> None: ...

    def running(self, kind: str | None = None) -> bool: ...

    def cancel(self, kind: str | None = None) -> None: ...

    def close(self) -> None: ...


class SyncRunner:
    """Runs jobs in the calling thread: for scripts and for tests without a display.

    With ``deferred=True`` a started job waits until :meth:`run_pending` (a
    test can then change layers "while the job runs"). ``progress_log`` keeps
    every :class:`Progress` event, ``fallbacks`` every fallback sentence.
    """

    def __init__(self, notify: Callable[[Notice], Any] | None = None, deferred: bool = False):
        self.notify: Callable[[Notice], Any] = notify or (lambda notice: None)
        self.on_fallback: Callable[[str], Any] = lambda message: None
        self.on_progress: Callable[[Job, Progress], Any] = lambda job, event: None
        self.deferred = deferred
        self.pending: list[Job] = []
        self.active: list[Job] = []
        self.progress_log: list[Progress] = []
        self.fallbacks: list[str] = []

    def start(self, job: Job) -> None:
        yield_to(job, self.pending + self.active)
        self.pending.append(job)
        if not self.deferred:
            self.run_pending()

    def run_pending(self) -> None:
        """Run the waiting jobs, in the order they were started."""
        while self.pending:
            job = self.pending.pop(0)
            self.active.append(job)

            def progress(event: Progress, job: Job = job) -> None:
                self.progress_log.append(event)
                self.on_progress(job, event)

            def fallback(message: str) -> None:
                self.fallbacks.append(message)
                self.on_fallback(message)

            outcome = execute(job, progress, fallback)
            self.active.remove(job)
            deliver(job, outcome, self.notify)

    def running(self, kind: str | None = None) -> bool:
        jobs = self.pending + self.active
        return any(kind is None or job.kind == kind for job in jobs)

    def cancel(self, kind: str | None = None) -> None:
        for job in self.pending + self.active:
            if kind is None or job.kind == kind:
                job.cancel_event.set()

    def close(self) -> None:
        self.cancel()
        self.pending.clear()


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min"``, ``"1 h 20 min"``: a rounded duration for people."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class ProgressText:
    """What a progress bar says about a running job, with the time remaining.

    The time remaining is extrapolated from the steps done so far (after at
    least one step and ``min_elapsed`` seconds; none before).
    """

    def __init__(
        self, text: str, unit: str = "", clock: Callable[[], float] = time.monotonic,
        min_elapsed: float = 2.0,
    ) -> None:
        self.text = text
        self.unit = unit
        self.clock = clock
        self.min_elapsed = min_elapsed
        self.start = clock()
        self.first: tuple[float, int] | None = None  # (time, done) of the first event

    def remaining(self, event: Progress) -> float | None:
        """Seconds left at the rate since the first event, or None while unknown."""
        now = self.clock()
        if self.first is None:
            self.first = (now, event.done)
        if not event.total:
            return None
        t0, d0 = self.first
        if d0 > 0:  # the job resumed: rate from where it started
            elapsed, done = now - t0, event.done - d0
        else:
            elapsed, done = now - self.start, event.done
        if done <= 0 or elapsed < self.min_elapsed:
            return None
        return elapsed / done * max(0, event.total - event.done)

    def describe(self, event: Progress) -> str:
        """E.g. ``"slice 3: decoding prompts · 12 / 40 steps · about 2 min left"``."""
        parts = [event.stage or self.text]
        unit = event.unit or self.unit
        if event.total:
            if unit == "bytes":
                parts.append(f"{event.done / 1e6:.0f} / {event.total / 1e6:.0f} MB")
            else:
                parts.append(f"{event.done} / {event.total} {unit}".rstrip())
        left = self.remaining(event)
        if left is not None and event.total and event.done < event.total:
            parts.append(f"about {format_duration(left)} left")
        return " · ".join(parts)
