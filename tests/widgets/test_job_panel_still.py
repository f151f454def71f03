"""Nothing animates while a plane is encoded: the dock's bar stands still while a job's
total is unknown, and an encoding has no entry in napari's activity (whose spinner
runs while any entry exists); other jobs keep theirs, except where OpenGL is
rendered in software.

Animations repaint the window many times a second; without a GPU that painting took
the CPU from the encoding (benchmarks/bench_dock_preview.py).
"""

from __future__ import annotations

import threading

import pytest

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


@pytest.mark.parametrize("activity", [True, False], ids=["GPU-drawn", "software OpenGL"])
def test_other_jobs_have_a_napari_activity_entry_unless_drawn_in_software(
    qtbot, activity
) -> None:
    panel = JobPanel()
    qtbot.addWidget(panel)
    runner = QtJobRunner(panel, activity=activity)
    go_on = threading.Event()
    results: list = []

    def run(progress, should_cancel) -> bool:
        progress(Progress(1, 4, "segmenting"))
        return go_on.wait(TIMEOUT / 1000)

    runner.start(Job("segment", "Segmenting…", run, done=results.append))
    try:
        assert (runner._running[0].pbar is not None) == activity
        qtbot.waitUntil(lambda: "segmenting" in panel.bar.format(), timeout=TIMEOUT)
        assert (panel.bar.maximum(), panel.bar.value()) == (1000, 250)  # the dock's bar
    finally:
        go_on.set()
    qtbot.waitUntil(lambda: results == [True], timeout=TIMEOUT)


def test_software_opengl_is_read_from_the_renderer(qtbot) -> None:
    from napari_sam._widgets._qt.rendering import (
        is_software_renderer,
        opengl_renderer,
        software_opengl,
    )

    assert is_software_renderer("llvmpipe (LLVM 15.0.6, 256 bits)")
    assert is_software_renderer("Microsoft Basic Render Driver")
    assert not is_software_renderer("NVIDIA GeForce RTX 3060/PCIe/SSE2")
    assert not is_software_renderer("Apple M2")
    assert not is_software_renderer("Mesa Intel(R) UHD Graphics 620 (KBL GT2)")
    assert software_opengl() is is_software_renderer(opengl_renderer())
    # The runner asks once, when its first job starts.
    runner = QtJobRunner(JobPanel())
    assert runner._napari_activity() is (not software_opengl())
