"""Tests of the ``napari-sam`` command (napari_sam.cli); no network is used."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import constant
from napari_sam import cli
from napari_sam.cli import common
from napari_sam.runtime import weights
from napari_sam.runtime.weights import CHECKPOINTS, CheckpointInfo

PAYLOAD = b"not really a SAM checkpoint\n" * 100
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def local_vit_b(monkeypatch, tmp_path) -> CheckpointInfo:
    """Point the vit_b entry at a local file:// URL with a tiny payload."""
    source = tmp_path / "remote.pth"
    source.write_bytes(PAYLOAD)
    info = CheckpointInfo(
        model_type="vit_b",
        filename="sam_vit_b_cli.pth",
        url=source.as_uri(),
        size_bytes=len(PAYLOAD),
        md5=hashlib.md5(PAYLOAD).hexdigest(),
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    )
    monkeypatch.setitem(CHECKPOINTS, "vit_b", info)
    return info


@pytest.fixture
def offline_vit_b(monkeypatch, tmp_path) -> CheckpointInfo:
    """Point the vit_b entry at a closed port on 127.0.0.1 (as if offline)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    info = CheckpointInfo(
        model_type="vit_b",
        filename="sam_vit_b_cli.pth",
        url=f"http://127.0.0.1:{port}/sam_vit_b_cli.pth",
        size_bytes=len(PAYLOAD),
    )
    monkeypatch.setitem(CHECKPOINTS, "vit_b", info)
    return info


# --------------------------------------------------------------------------- info


def test_info_lists_versions_devices_cache_and_checkpoints(cache, capsys):
    import torch

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("napari-sam ")
    assert f"PyTorch {torch.__version__}" in out
    assert "CUDA: " in out
    assert "MPS (Apple GPU): " in out
    assert "Auto device: " in out
    assert f"Cache folder: {cache}" in out
    assert "NAPARI_SAM_CACHE" in out
    for key, info in CHECKPOINTS.items():
        line = next(line for line in out.splitlines() if info.filename in line)
        assert key in line
        size = "size ?" if info.size_bytes is None else f"{info.size_bytes / 1e6:.1f} MB"
        assert size in line
        assert line.endswith("not cached")
    assert not cache.exists()  # `info` only looks


def test_info_reports_cached_and_incomplete_files(cache, capsys):
    cache.mkdir()
    vit_b = CHECKPOINTS["vit_b"]
    with open(cache / vit_b.filename, "wb") as f:  # sparse file of the published size
        f.truncate(vit_b.size_bytes)
    (cache / CHECKPOINTS["vit_t"].filename).write_bytes(b"12345")
    assert cli.main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    vit_b_line = next(line for line in lines if vit_b.filename in line)
    assert vit_b_line.endswith(" cached")
    vit_t_line = next(line for line in lines if "mobile_sam.pt" in line)
    assert "incomplete (5 of 40728226 bytes" in vit_t_line


def test_info_shows_auto_device(cache, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", constant(False))
    monkeypatch.setattr(torch.backends.mps, "is_available", constant(True))
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "Auto device: mps" in out
    assert "MPS (Apple GPU): available" in out
    assert "CUDA: not available" in out


def test_info_survives_missing_model_code(cache, capsys, monkeypatch):
    from napari_sam.runtime import loader

    def broken(*args):
        raise ImportError("no model yet")

    monkeypatch.setattr(loader, "resolve_model_type", broken)
    assert cli.main(["info"]) == 0
    assert "Auto model type: unknown" in capsys.readouterr().out


def test_info_runs_as_module(tmp_path):
    env = dict(os.environ)
    env["NAPARI_SAM_CACHE"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "napari_sam.cli", "info"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "sam_vit_b_01ec64.pth" in result.stdout
    assert str(tmp_path / "cache") in result.stdout


def test_core_modules_import_neither_gui_nor_torch():
    code = (
        "import sys, napari_sam.cli, napari_sam.runtime.weights, napari_sam.runtime.device\n"
        "heavy = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
        "'magicgui', 'vispy', 'torch') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- download


def test_download_into_cache(cache, local_vit_b, capsys):
    assert cli.main(["download", "vit_b", "--quiet"]) == 0
    target = cache / "sam_vit_b_cli.pth"
    assert target.read_bytes() == PAYLOAD
    captured = capsys.readouterr()
    assert captured.out.strip() == str(target)
    assert captured.err == ""


def test_download_shows_progress_bar(cache, local_vit_b, capsys):
    assert cli.main(["download", "vit_b"]) == 0
    assert "sam_vit_b_cli.pth" in capsys.readouterr().err


def test_download_keeps_cached_file_unless_forced(cache, local_vit_b, capsys):
    cache.mkdir()
    target = cache / "sam_vit_b_cli.pth"
    target.write_bytes(b"x" * len(PAYLOAD))  # right size: treated as cached
    assert cli.main(["download", "vit_b", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "already downloaded" in captured.err
    assert captured.out.strip() == str(target)
    assert target.read_bytes() == b"x" * len(PAYLOAD)

    assert cli.main(["download", "vit_b", "--quiet", "--force"]) == 0
    assert target.read_bytes() == PAYLOAD


def test_download_all_and_duplicates(cache, monkeypatch, tmp_path, capsys):
    for key in list(CHECKPOINTS):
        source = tmp_path / f"{key}.bin"
        source.write_bytes(key.encode() * 10)
        info = CheckpointInfo(key, f"{key}.pth", source.as_uri(), len(key) * 10)
        monkeypatch.setitem(CHECKPOINTS, key, info)
    assert cli.main(["download", "all", "vit_b", "default", "--quiet"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(cache / f"{key}.pth") for key in CHECKPOINTS]


def test_download_offline_is_one_line_without_traceback(cache, offline_vit_b, capsys):
    assert cli.main(["download", "vit_b"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("napari-sam: error: ")
    assert offline_vit_b.url in lines[0]
    assert str(cache / "sam_vit_b_cli.pth") in lines[0]
    assert "Traceback" not in captured.err
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    "argv", [["--debug", "download", "vit_b"], ["download", "vit_b", "--debug"]]
)
def test_download_offline_with_debug_shows_traceback(cache, offline_vit_b, capsys, argv):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "WeightsDownloadError" in err
    assert err.strip().splitlines()[-1].startswith("napari-sam: error: ")


def test_download_interrupted_by_ctrl_c(cache, local_vit_b, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "download", interrupted)
    assert cli.main(["download", "vit_b"]) == 130
    assert capsys.readouterr().err.strip() == "napari-sam: interrupted"


# --------------------------------------------------------------------------- usage


def test_unknown_model_type_is_a_usage_error(capsys):
    assert cli.main(["download", "vit_q"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "info" in err and "download" in err


def test_help_and_version(capsys):
    assert cli.main(["--help"]) == 0
    assert "download" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("napari-sam ")


def test_subcommands_are_extensible(capsys):
    def add_hello(subparsers):
        parser = common.add_subcommand(subparsers, "hello", help="say hello")
        parser.add_argument("name")
        parser.set_defaults(handler=lambda args: print(f"hello {args.name}") or 0)

    cli.SUBCOMMANDS.append(add_hello)
    try:
        assert cli.main(["hello", "napari"]) == 0
    finally:
        cli.SUBCOMMANDS.remove(add_hello)
    assert capsys.readouterr().out == "hello napari\n"


def test_package_version_is_text():
    version = common.package_version()
    assert isinstance(version, str) and version
