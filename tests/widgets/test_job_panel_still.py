"""Nothing animates while a plane is encoded: the dock's bar stands still while a job's
total is unknown, and an encoding has no entry in napari's activity (whose spinner
runs while any entry exists); other jobs keep theirs.

Animations repaint the window many times a second; without a GPU that painting took
the CPU from the encoding (benchmarks/bench_dock_preview.py).
"""

from __future__ import annotations

import threading

from napari_helpers import TIMEOUT
from napari_sam._widgets._qt.jobs import JobPanel, QtJobRunner
from napari_sam._widgets.jobs import Job
from napari_sam.runtime.progress import Progress


def test_encoding_animates_nothing(qtbot) -> None:
    panel = JobPanel()
    qtbot.addWidget(panel)
    runner = QtJobRunner(panel)
    go_on, events_sent = threading.Event(), threading.Event()
    results: list = []

    def run(progress, should_cancel) -> str:
        progress(Progress(3, None, "encoding"))  # steps without a total
        events_sent.set()
        go_on.wait(TIMEOUT / 1000)
        return "ok"

    runner.start(Job("encode", "Encoding slice 2…", run, done=results.append))
    try:
        assert runner.running("encode")
        bar = panel.bar
        assert (bar.minimum(), bar.maximum(), bar.value()) == (0, 1, 0)  # empty, not busy
        assert runner._running[0].pbar is None  # no entry (and spinner) in napari's activity
        qtbot.waitUntil(events_sent.is_set, timeout=TIMEOUT)
        qtbot.waitUntil(lambda: "encoding" in bar.format(), timeout=TIMEOUT)
        assert (bar.maximum(), bar.value()) == (1, 0)
    finally:
        go_on.set()
    qtbot.waitUntil(lambda: results == ["ok"], timeout=TIMEOUT)
    assert not runner.running()


def test_other_jobs_keep_their_napari_activity_entry(qtbot) -> None:
    panel = JobPanel()
    qtbot.addWidget(panel)
    runner = QtJobRunner(panel)
    go_on = threading.Event()
    results: list = []
    runner.start(Job("precompute", "Encoding the stack…",
                     lambda progress, should_cancel: go_on.wait(TIMEOUT / 1000),
                     done=results.append))
    try:
        assert runner._running[0].pbar is not None
        assert panel.bar.maximum() == 1  # still, not busy
    finally:
        go_on.set()
    qtbot.waitUntil(lambda: results == [True], timeout=TIMEOUT)
