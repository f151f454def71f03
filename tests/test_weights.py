"""Tests of napari_sam.runtime.weights: checkpoint table, cache, download, loading.

Everything is served from the local disk (``file://``) or from an HTTP server
on 127.0.0.1; a guard fails any test that tries to reach another host.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from fakes import constant
from napari_sam.errors import (
    Cancelled,
    CheckpointError,
    DeviceError,
    ModelTypeMismatchError,
    NapariSamError,
    UnknownModelTypeError,
    WeightsDownloadError,
)
from napari_sam.runtime import config, loader, weights
from napari_sam.runtime.weights import CHECKPOINTS, CheckpointInfo

PAYLOAD = bytes(range(256)) * 40 + b"the end"  # 10247 bytes
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
CHUNK = 1000


# --------------------------------------------------------------------------- helpers


class _Handler(BaseHTTPRequestHandler):
    """Serves ``files``; ``/truncated/<name>`` stops halfway, ``/nolength/<name>``
    sends no Content-Length."""

    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        mode, _, name = self.path.lstrip("/").partition("/")
        if not name:
            mode, name = "full", mode
        data = self.files.get(name)
        if data is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if mode != "nolength":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "truncated":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of an HTTP server on 127.0.0.1 that serves ``_Handler.files``."""
    handler = type("Handler", (_Handler,), {"files": {"weights.pth": PAYLOAD}})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights.pth"


@pytest.fixture
def source_file(tmp_path: Path) -> Path:
    path = tmp_path / "remote" / "weights.pth"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "weights.pth"


def leftovers(dest: Path) -> list[Path]:
    """Files the download may have left next to ``dest``."""
    if not dest.parent.exists():
        return []
    return sorted(dest.parent.glob(dest.name + "*"))


def assert_failed_cleanly(error: BaseException, url: str, dest: Path) -> None:
    message = str(error)
    assert url in message
    assert str(dest) in message
    assert "\n" not in message
    assert leftovers(dest) == []


# --------------------------------------------------------------------------- table


def test_checkpoint_table_lists_the_published_files():
    sam = {"vit_h", "vit_l", "vit_b", "vit_t"}
    assert sam <= set(CHECKPOINTS)
    sam2 = {"sam2_tiny", "sam2_small", "sam2_base_plus", "sam2_large"}  # SAM 2.1
    assert set(CHECKPOINTS) - sam - sam2 == set(weights.models_with_decoder())  # micro-sam's
    assert CHECKPOINTS["vit_h"].filename == "sam_vit_h_4b8939.pth"
    assert CHECKPOINTS["vit_l"].filename == "sam_vit_l_0b3195.pth"
    assert CHECKPOINTS["vit_b"].filename == "sam_vit_b_01ec64.pth"
    assert CHECKPOINTS["vit_t"].filename == "mobile_sam.pt"
    assert CHECKPOINTS["vit_b"].size_bytes == 375_042_383
    assert CHECKPOINTS["vit_l"].size_bytes == 1_249_524_607
    assert CHECKPOINTS["vit_h"].size_bytes == 2_564_550_879
    assert CHECKPOINTS["vit_t"].size_bytes == 40_728_226
    assert CHECKPOINTS["vit_t"].url == (
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
    )


@pytest.mark.parametrize("key", sorted(k for k, i in CHECKPOINTS.items() if i.decoder is None))
def test_checkpoint_entries_are_consistent(key):
    info = CHECKPOINTS[key]
    assert info.model_type == key
    assert info.url.startswith("https://")
    assert info.url.rsplit("/", 1)[1] == info.filename
    assert info.size_bytes is not None and info.size_bytes > 0
    assert info.md5 is not None or info.sha256 is not None
    if info.md5 is not None:
        assert re.fullmatch(r"[0-9a-f]{32}", info.md5)
    if info.sha256 is not None:
        assert re.fullmatch(r"[0-9a-f]{64}", info.sha256)
    # Meta named its files after the first six hex digits of their MD5.
    tag = re.fullmatch(r"sam_vit_[hlb]_([0-9a-f]{6})\.pth", info.filename)
    if tag is not None:
        assert info.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
        assert info.md5 is not None and info.md5.startswith(tag.group(1))
    assert info.size_mb == pytest.approx(info.size_bytes / 1e6)


def test_checkpoint_info_is_frozen():
    with pytest.raises(AttributeError):
        CHECKPOINTS["vit_b"].url = "http://elsewhere"  # type: ignore[misc]


def test_checkpoint_info_lookup_and_alias():
    assert weights.checkpoint_info("vit_b") is CHECKPOINTS["vit_b"]
    assert weights.checkpoint_info("default") is CHECKPOINTS["vit_h"]
    with pytest.raises(UnknownModelTypeError, match="vit_b") as info:
        weights.checkpoint_info("vit_x")
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- cache dir


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    target = tmp_path / "my cache" / "napari-sam"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(target))
    assert config.cache_dir(create=False) == target
    assert not target.exists()
    assert config.cache_dir() == target
    assert target.is_dir()


def test_cache_dir_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    monkeypatch.setenv("NAPARI_SAM_CACHE", "~/sam-weights")
    assert config.cache_dir() == tmp_path / "sam-weights"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_cache_dir_default_uses_platformdirs(monkeypatch, tmp_path, value):
    import platformdirs

    calls = []

    def fake_user_cache_dir(appname, *args, **kwargs):
        calls.append(appname)
        return str(tmp_path / "platform" / appname)

    monkeypatch.setattr(platformdirs, "user_cache_dir", fake_user_cache_dir)
    if value is None:
        monkeypatch.delenv("NAPARI_SAM_CACHE", raising=False)
    else:
        monkeypatch.setenv("NAPARI_SAM_CACHE", value)
    assert config.cache_dir() == tmp_path / "platform" / "napari-sam"
    assert calls == ["napari-sam"]
    assert (tmp_path / "platform" / "napari-sam").is_dir()


def test_cache_dir_that_cannot_be_created(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(blocker / "sub"))
    with pytest.raises(WeightsDownloadError, match="NAPARI_SAM_CACHE"):
        config.cache_dir()


# --------------------------------------------------------------------------- download: success


def test_download_from_file_url(source_file, dest):
    calls: list[tuple[int, int | None]] = []
    result = weights.download(
        source_file.as_uri(),
        dest,
        expected_size=len(PAYLOAD),
        md5=PAYLOAD_MD5,
        sha256=PAYLOAD_SHA256,
        progress=False,
        chunk_size=CHUNK,
        progress_callback=lambda e: calls.append((e.done, e.total)),
    )
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest) == [dest]
    assert calls[0] == (0, len(PAYLOAD))
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert len(calls) == 1 + -(-len(PAYLOAD) // CHUNK)


def test_download_over_http_with_progress_bar(server, dest, capsys):
    result = weights.download(
        f"{server}/weights.pth",
        dest,
        expected_size=len(PAYLOAD),
        md5=PAYLOAD_MD5.upper(),  # case does not matter
        sha256=PAYLOAD_SHA256,
        progress=True,
        chunk_size=CHUNK,
    )
    assert result.read_bytes() == PAYLOAD
    assert leftovers(dest) == [dest]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert dest.name in captured.err  # the tqdm bar went to stderr


def test_download_without_content_length_and_without_checks(server, dest):
    weights.download(f"{server}/nolength/weights.pth", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_download_replaces_existing_file_and_creates_folders(source_file, tmp_path):
    dest = tmp_path / "deep" / "er" / "weights.pth"
    weights.download(source_file.as_uri(), dest, progress=False)
    dest.write_bytes(b"old")
    weights.download(source_file.as_uri(), dest, expected_size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_progress_callback_gets_none_when_size_unknown(server, dest):
    totals = set()
    weights.download(
        f"{server}/nolength/weights.pth",
        dest,
        progress=False,
        progress_callback=lambda e: totals.add(e.total),
    )
    assert totals == {None}


# --------------------------------------------------------------------------- download: failures


@pytest.mark.parametrize("where", ["file", "http"])
def test_size_mismatch(where, source_file, server, dest):
    url = source_file.as_uri() if where == "file" else f"{server}/weights.pth"
    with pytest.raises(WeightsDownloadError, match="bytes") as info:
        weights.download(url, dest, expected_size=len(PAYLOAD) + 1, progress=False)
    assert_failed_cleanly(info.value, url, dest)


@pytest.mark.parametrize("expected_size", [len(PAYLOAD) + 1, len(PAYLOAD) - 1])
def test_size_mismatch_found_after_download(server, dest, expected_size):
    url = f"{server}/nolength/weights.pth"
    with pytest.raises(WeightsDownloadError, match="failed verification") as info:
        weights.download(url, dest, expected_size=expected_size, progress=False, chunk_size=CHUNK)
    assert_failed_cleanly(info.value, url, dest)


@pytest.mark.parametrize("which", ["md5", "sha256"])
@pytest.mark.parametrize("where", ["file", "http"])
def test_hash_mismatch(which, where, source_file, server, dest):
    url = source_file.as_uri() if where == "file" else f"{server}/weights.pth"
    hashes = {"md5": PAYLOAD_MD5, "sha256": PAYLOAD_SHA256}
    hashes[which] = "0" * len(hashes[which])
    with pytest.raises(WeightsDownloadError, match="checksum") as info:
        weights.download(url, dest, expected_size=len(PAYLOAD), progress=False, **hashes)
    assert_failed_cleanly(info.value, url, dest)
    assert ("MD5" if which == "md5" else "SHA-256") in str(info.value)


def test_http_404(server, dest):
    url = f"{server}/missing.pth"
    with pytest.raises(WeightsDownloadError, match="HTTP 404 Not Found; try again later") as info:
        weights.download(url, dest, progress=False)
    assert_failed_cleanly(info.value, url, dest)


def test_connection_refused(closed_port_url, dest):
    with pytest.raises(WeightsDownloadError, match=r"refused|could not be reached") as info:
        weights.download(closed_port_url, dest, progress=False, timeout=5)
    assert_failed_cleanly(info.value, closed_port_url, dest)
    assert not isinstance(info.value, Cancelled)


@pytest.mark.parametrize("expected_size", [None, len(PAYLOAD)])
def test_server_closes_halfway(server, dest, expected_size):
    url = f"{server}/truncated/weights.pth"
    with pytest.raises(WeightsDownloadError, match="broke off") as info:
        weights.download(
            url, dest, expected_size=expected_size, progress=False, chunk_size=CHUNK, timeout=5
        )
    assert_failed_cleanly(info.value, url, dest)


def test_missing_local_file(tmp_path, dest):
    url = (tmp_path / "nowhere.pth").as_uri()
    with pytest.raises(WeightsDownloadError, match="does not exist") as info:
        weights.download(url, dest, progress=False)
    assert_failed_cleanly(info.value, url, dest)


def test_unsupported_scheme(dest):
    url = "ftp://example.org/weights.pth"
    with pytest.raises(WeightsDownloadError, match="only http, https and file") as info:
        weights.download(url, dest, progress=False)
    assert_failed_cleanly(info.value, url, dest)
    assert not dest.parent.exists()


@pytest.mark.parametrize("where", ["file", "http"])
def test_should_cancel_stops_and_cleans_up(where, source_file, server, dest):
    url = source_file.as_uri() if where == "file" else f"{server}/weights.pth"
    seen: list[str] = []
    asked = 0

    def should_cancel() -> bool:
        nonlocal asked
        asked += 1
        seen.extend(p.name for p in leftovers(dest))
        return asked >= 3  # after two chunks

    with pytest.raises(Cancelled, match="cancelled") as info:
        weights.download(url, dest, progress=False, chunk_size=CHUNK, should_cancel=should_cancel)
    assert not isinstance(info.value, WeightsDownloadError)  # a cancel is no failure
    assert_failed_cleanly(info.value, url, dest)
    # the partial data really was in a temporary file next to dest
    assert seen and all(name.startswith("weights.pth.part-") for name in seen)


def test_keyboard_interrupt_cleans_up(server, dest):
    url = f"{server}/weights.pth"

    def interrupt(event) -> None:
        if event.done > 0:
            raise KeyboardInterrupt

    with pytest.raises(Cancelled, match="interrupted") as info:
        weights.download(url, dest, progress=False, chunk_size=CHUNK, progress_callback=interrupt)
    assert isinstance(info.value.__cause__, KeyboardInterrupt)
    assert_failed_cleanly(info.value, url, dest)


def test_failure_leaves_existing_destination_alone(server, dest):
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"keep me")
    url = f"{server}/weights.pth"
    with pytest.raises(WeightsDownloadError):
        weights.download(url, dest, sha256="0" * 64, progress=False)
    assert dest.read_bytes() == b"keep me"
    assert leftovers(dest) == [dest]


def test_bad_chunk_size(dest):
    with pytest.raises(ValueError, match="chunk_size"):
        weights.download("file:///x", dest, chunk_size=0)


# --------------------------------------------------------------------------- checkpoint_path


@pytest.fixture
def local_checkpoint(monkeypatch, source_file, cache) -> CheckpointInfo:
    """Point the vit_b entry of CHECKPOINTS at a local file:// URL."""
    info = CheckpointInfo(
        model_type="vit_b",
        filename="sam_vit_b_test.pth",
        url=source_file.as_uri(),
        size_bytes=len(PAYLOAD),
        md5=PAYLOAD_MD5,
        sha256=PAYLOAD_SHA256,
    )
    monkeypatch.setitem(CHECKPOINTS, "vit_b", info)
    return info


def test_checkpoint_path_downloads_once(local_checkpoint, source_file, cache):
    assert not weights.is_cached("vit_b")
    path = weights.checkpoint_path("vit_b", progress=False)
    assert path == cache / "sam_vit_b_test.pth"
    assert path.read_bytes() == PAYLOAD
    assert weights.is_cached("vit_b")
    source_file.unlink()  # a second call must not download again
    assert weights.checkpoint_path("vit_b", progress=False) == path
    assert weights.checkpoint_path("vit_b", download=False) == path


def test_checkpoint_path_without_download(local_checkpoint, cache):
    with pytest.raises(WeightsDownloadError) as info:
        weights.checkpoint_path("vit_b", download=False)
    message = str(info.value)
    assert str(cache / "sam_vit_b_test.pth") in message
    assert local_checkpoint.url in message
    assert not (cache / "sam_vit_b_test.pth").exists()


def test_wrong_size_cached_file_is_downloaded_again(local_checkpoint, cache):
    cache.mkdir()
    stale = cache / "sam_vit_b_test.pth"
    stale.write_bytes(PAYLOAD[:100])
    assert not weights.is_cached("vit_b")
    with pytest.raises(WeightsDownloadError, match="100 bytes instead of"):
        weights.checkpoint_path("vit_b", download=False)
    assert weights.checkpoint_path("vit_b", progress=False) == stale
    assert stale.read_bytes() == PAYLOAD


def test_checkpoint_path_download_failure_names_cache_path(monkeypatch, local_checkpoint, cache):
    broken = CheckpointInfo("vit_b", "sam_vit_b_test.pth", "file:///no/such/file.pth", 10)
    monkeypatch.setitem(CHECKPOINTS, "vit_b", broken)
    with pytest.raises(WeightsDownloadError) as info:
        weights.checkpoint_path("vit_b", progress=False)
    assert_failed_cleanly(info.value, broken.url, cache / "sam_vit_b_test.pth")


def test_checkpoint_path_alias_and_unknown(monkeypatch, local_checkpoint, cache):
    monkeypatch.setitem(CHECKPOINTS, "vit_h", local_checkpoint)
    assert weights.checkpoint_path("default", progress=False).read_bytes() == PAYLOAD
    with pytest.raises(UnknownModelTypeError):
        weights.checkpoint_path("vit_q")


# --------------------------------------------------------------------------- load_model


class FakeBuilder:
    """Stands in for ``build_any``: records calls, returns a small module."""

    def __init__(self) -> None:
        self.fail: dict[str, BaseException] = {}
        self.calls: list[dict[str, object]] = []

    def __call__(self, model_type, checkpoint=None) -> torch.nn.Module:
        self.calls.append({"model_type": model_type, "checkpoint": str(checkpoint)})
        if model_type in self.fail:
            raise self.fail[model_type]
        module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
        module.built_as = model_type  # type: ignore[attr-defined]
        return module


@pytest.fixture
def builder(monkeypatch) -> FakeBuilder:
    fake = FakeBuilder()
    monkeypatch.setattr(loader, "build_any", fake)
    return fake


@pytest.fixture
def cpu_only(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", constant(False))
    monkeypatch.setattr(torch.backends.mps, "is_available", constant(False))


def test_load_model_downloads_and_returns_eval_model(builder, local_checkpoint, cache, cpu_only):
    sam = loader.load_model("vit_b", progress=False)
    assert sam.built_as == "vit_b"
    assert sam.training is False
    assert all(not m.training for m in sam.modules())
    assert next(sam.parameters()).device == torch.device("cpu")
    assert builder.calls == [
        {"model_type": "vit_b", "checkpoint": str(cache / "sam_vit_b_test.pth")}
    ]


def test_load_knows_the_model_its_weights_and_its_device(builder, local_checkpoint, cpu_only):
    loaded = loader.load("vit_b", progress=False)
    assert (loaded.model_type, loaded.model_id, loaded.name) == ("vit_b", "vit_b", "vit_b")
    assert loaded.device == loaded.loaded_on == torch.device("cpu") and not loaded.moved
    assert loaded.describe() == "vit_b on cpu"


def test_load_model_with_explicit_checkpoint(builder, monkeypatch, tmp_path, cache, cpu_only):
    broken = CheckpointInfo("vit_l", "x.pth", "file:///no/such/file.pth", 10)
    monkeypatch.setitem(CHECKPOINTS, "vit_l", broken)  # must not be used
    ckpt = tmp_path / "my weights.pth"
    ckpt.write_bytes(b"weights")
    loaded = loader.load("vit_l", ckpt, device="cpu")
    assert loaded.sam.built_as == "vit_l"
    assert loaded.name == "my weights.pth" and loaded.model_id.startswith("file:")
    assert builder.calls == [{"model_type": "vit_l", "checkpoint": str(ckpt)}]
    assert not cache.exists()


def test_load_model_empty_checkpoint_means_published(builder, local_checkpoint, cache, cpu_only):
    loader.load_model("vit_b", "  ", progress=False)
    assert builder.calls == [
        {"model_type": "vit_b", "checkpoint": str(cache / "sam_vit_b_test.pth")}
    ]


def test_load_model_missing_checkpoint_file(builder, tmp_path, cpu_only):
    missing = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        loader.load_model("vit_b", str(missing))
    assert builder.calls == []


def test_load_model_offline_without_download(builder, local_checkpoint, cache, cpu_only):
    with pytest.raises(WeightsDownloadError, match="not downloaded yet"):
        loader.load_model("vit_b", download=False)
    assert builder.calls == []


def test_load_model_unknown_type(builder, cpu_only):
    with pytest.raises(UnknownModelTypeError, match="vit_z"):
        loader.load_model("vit_z")


def test_load_model_unavailable_device(builder, tmp_path, cpu_only):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"w")
    with pytest.raises(DeviceError, match="CUDA"):
        loader.load_model("vit_b", ckpt, device="cuda")
    assert builder.calls == []


def test_load_model_auto_on_cpu_prefers_mobile_sam(builder, tmp_path, cpu_only):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"w")
    assert loader.load_model("auto", ckpt).built_as == "vit_t"


@pytest.mark.parametrize(("cuda", "mps"), [(True, False), (False, True)])
def test_auto_model_type_on_gpu_is_vit_b(monkeypatch, cuda, mps):
    monkeypatch.setattr(torch.cuda, "is_available", constant(cuda))
    monkeypatch.setattr(torch.cuda, "device_count", constant(int(cuda)))
    monkeypatch.setattr(torch.backends.mps, "is_available", constant(mps))
    assert loader.resolve_model_type("auto", "auto") == "vit_b"
    assert loader.resolve_model_type("auto", "cpu") == "vit_t"
    assert loader.resolve_model_type("vit_h", "auto") == "vit_h"
    assert loader.resolve_model_type("default", "auto") == "vit_h"


def test_auto_with_checkpoint_of_another_type(builder, tmp_path, cpu_only):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"w")
    builder.fail["vit_t"] = ModelTypeMismatchError("holds vit_h weights", "vit_t", "vit_h")
    loaded = loader.load("auto", ckpt)
    assert loaded.sam.built_as == loaded.model_type == "vit_h"
    # an explicit model type is never second-guessed
    with pytest.raises(ModelTypeMismatchError):
        loader.load_model("vit_t", ckpt)


def test_errors_are_napari_sam_errors():
    for cls in (WeightsDownloadError, Cancelled, UnknownModelTypeError):
        assert issubclass(cls, NapariSamError)


# --------------------------------------------------------------------------- real builder
# These use the real builder, but never build a full-size model: the builder checks a
# checkpoint's keys and shapes before allocating any weights.


def test_every_model_type_has_a_published_checkpoint():
    assert {"vit_h", "vit_l", "vit_b", "vit_t", "default"} <= set(loader.model_names())
    for model_type in loader.model_names():
        assert weights.checkpoint_info(model_type).filename


def test_real_builder_rejects_a_broken_checkpoint(tmp_path, cpu_only):
    ckpt = tmp_path / "interrupted.pth"
    ckpt.write_bytes(PAYLOAD)  # not a PyTorch file
    with pytest.raises(CheckpointError, match="could not be read"):
        loader.load_model("vit_b", ckpt, device="cpu")


def _fake_state_of(model_type: str) -> dict[str, torch.Tensor]:
    """A tiny state dict whose shapes identify ``model_type`` (but has few keys)."""
    width = {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}[model_type]
    depth = {"vit_b": 12, "vit_l": 24, "vit_h": 32}[model_type]
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(width, 1, 1, 1)}
    for index in range(depth):
        state[f"image_encoder.blocks.{index}.norm1.weight"] = torch.zeros(1)
    return state


def test_real_builder_auto_switches_to_the_checkpoint_model_type(tmp_path, cpu_only):
    ckpt = tmp_path / "some_vit_l.pth"
    torch.save(_fake_state_of("vit_l"), ckpt)
    # explicit type: the mismatch is reported as is
    with pytest.raises(ModelTypeMismatchError) as info:
        loader.load_model("vit_b", ckpt, device="cpu")
    assert (info.value.expected, info.value.found) == ("vit_b", "vit_l")
    # "auto" picks vit_t on this CPU, then follows the file to vit_l, which
    # then complains about the missing keys of this deliberately incomplete file
    with pytest.raises(CheckpointError, match="'vit_l' model") as info:
        loader.load_model("auto", ckpt, device="cpu")
    assert not isinstance(info.value, ModelTypeMismatchError)
