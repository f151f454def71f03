"""The parts under the controllers (no display): jobs, progress text, notices, settings file,
help text written once for the command line and the docks."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import pytest

from napari_sam import cli
from napari_sam._widgets.jobs import Job, ProgressText, SyncRunner, format_duration
from napari_sam._widgets.notices import Notice, notice_for
from napari_sam.errors import Cancelled, CheckpointError, DeviceFallbackWarning, SettingsError
from napari_sam.runtime import settings as user_settings
from napari_sam.runtime.config import settings_file
from napari_sam.runtime.progress import Progress
from napari_sam.workflows.segment import AutoSettings


def test_one_notice_per_failure_and_every_fallback_relayed():
    shown: list[Notice] = []
    runner = SyncRunner(notify=shown.append)
    fallbacks: list[str] = []
    runner.on_fallback = fallbacks.append
    calls = []

    def work(progress, should_cancel):
        for _ in range(2):  # the same warning, from the same line, twice: both relayed
            warnings.warn("fell back", DeviceFallbackWarning, stacklevel=1)
        progress(Progress(1, 2, "half", "steps"))
        raise CheckpointError("The checkpoint file x.pth could not be read.")

    runner.start(Job("load", "Loading…", work, done=calls.append,
                     finished=lambda: calls.append("finished")))
    assert fallbacks == ["fell back", "fell back"]
    assert shown == [Notice.error("The checkpoint file x.pth could not be read.")]
    assert calls == ["finished"] and runner.progress_log == [Progress(1, 2, "half", "steps")]
    assert not runner.running()

    # a job's own notice replaces the default one; Cancelled is an info; others name the type
    runner.start(Job("x", "", lambda p, c: 1 / 0, failed=lambda exc: Notice.warning("mine")))
    assert shown[-1] == Notice.warning("mine")
    assert notice_for(Cancelled("Stopped.")) == Notice.info("Stopped.")
    assert notice_for(ValueError("odd")) == Notice.error("ValueError: odd")

    # cancel: should_cancel says so inside the job; deferred jobs wait for run_pending
    deferred = SyncRunner(deferred=True)
    seen = []
    deferred.start(Job("encode", "", lambda p, cancel: seen.append(cancel())))
    assert deferred.running("encode") and seen == []
    deferred.cancel("encode")
    deferred.run_pending()
    assert seen == [True] and not deferred.running()


def test_progress_text_names_the_stage_and_the_time_left():
    now = [100.0]
    text = ProgressText("Segmenting…", "steps", clock=lambda: now[0])
    assert text.describe(Progress(0, 40, "slice 1: encoding", "steps")) == (
        "slice 1: encoding · 0 / 40 steps")
    now[0] += 30.0
    assert text.describe(Progress(10, 40, "slice 1: decoding prompts", "steps")) == (
        "slice 1: decoding prompts · 10 / 40 steps · about 2 min left")
    assert ProgressText("Loading…").describe(Progress(5_000_000, 40_000_000, unit="bytes")) == (
        "Loading… · 5 / 40 MB")
    assert [format_duration(s) for s in (0.2, 44, 90, 3 * 3600 + 60)] == [
        "1 s", "44 s", "2 min", "3 h 01 min"]


def test_settings_file_round_trip_and_problems(tmp_path):
    assert settings_file().parent.name.startswith("settings")  # the test's own (conftest)
    assert user_settings.read_settings() == ({}, None)
    assert user_settings.save_section("model", {"choice": "vit_b"}) is None
    assert user_settings.save_section("automatic", {"points_per_side": 8}) is None
    sections, problem = user_settings.read_settings()
    assert problem is None and sections["model"] == {"choice": "vit_b"}
    assert json.loads(settings_file().read_text())["version"] == user_settings.VERSION

    settings_file().write_text("[1, 2")
    sections, problem = user_settings.read_settings()
    assert sections == {} and "could not be read (not valid JSON" in problem
    settings_file().write_text(json.dumps({"version": 99}))
    assert "has another format (version 99" in user_settings.read_settings()[1]
    folder = tmp_path / "a file"
    folder.write_text("")
    problem = user_settings.save_section("model", {}, folder / "settings.json")
    assert problem is not None and "cannot be" in problem  # said, never raised

    restored, bad = user_settings.restore(AutoSettings, {"points_per_side": 0, "unknown": 1})
    assert restored == AutoSettings() and "could not be used" in bad
    restored, bad = user_settings.restore(AutoSettings, {"min_area": 5, "from_the_future": 1})
    assert restored == AutoSettings(min_area=5) and bad is None
    with pytest.raises(SettingsError):
        AutoSettings(points_per_side=0).check()


def test_help_is_written_once_for_the_command_line_and_the_docks(capsys):
    @dataclass(frozen=True)
    class Example:
        speed: float = field(default=0.5, metadata={"help": "How fast.", "label": "Speed"})

    assert user_settings.field_help(Example, "speed") == "How fast."
    assert user_settings.field_help(Example, "speed", default=True) == "How fast (default: 0.5)"
    assert user_settings.field_meta(Example, "speed")["label"] == "Speed"
    assert cli.main(["segment", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in ("points_per_side", "pred_iou_thresh", "min_area", "link_iou"):
        assert user_settings.field_help(AutoSettings, name, default=True) in out


def test_docks_pass_the_precision_choice_to_the_loader(monkeypatch):
    """The docks' "auto" is the loader's "auto" (bf16 on a CPU where it is measured fast,
    as in Python and the command line); explicit choices pass through unchanged."""
    from napari_sam._widgets import model_session

    asked = []
    monkeypatch.setattr(model_session, "load",
                        lambda *a, precision, **k: asked.append(precision) or "loaded")
    for choice in ("auto", "fp32", "bf16"):
        assert model_session.load_sam("vit_t", None, "cpu", precision=choice) == "loaded"
    assert asked == ["auto", "fp32", "bf16"]
