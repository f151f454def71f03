"""Tests of napari_sam.runtime.device: device choice with monkeypatched availability."""

from __future__ import annotations

import pytest
import torch

from fakes import constant
from napari_sam.errors import DeviceError
from napari_sam.runtime.device import describe_devices, resolve_device


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Pretend a machine with the given CUDA GPU count and MPS availability."""

    def configure(*, cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", constant(cuda > 0))
        monkeypatch.setattr(torch.cuda, "device_count", constant(cuda))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
        monkeypatch.setattr(torch.backends.mps, "is_available", constant(mps))

    return configure


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(0, False, "cpu"), (0, True, "mps"), (1, False, "cuda"), (2, True, "cuda")],
)
@pytest.mark.parametrize("request_", ["auto", None, " AUTO "])
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, expected, request_):
    machine(cuda=cuda, mps=mps)
    dev = resolve_device(request_)
    assert isinstance(dev, torch.device)
    assert dev.type == expected


def test_default_argument_is_auto(machine):
    machine(cuda=0, mps=True)
    assert resolve_device() == torch.device("mps")


@pytest.mark.parametrize("request_", ["cpu", "CPU", torch.device("cpu")])
def test_cpu_always_works(machine, request_):
    machine(cuda=2, mps=True)
    assert resolve_device(request_) == torch.device("cpu")


def test_explicit_cuda_when_available(machine):
    machine(cuda=2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda:0")


def test_explicit_mps_when_available(machine):
    machine(mps=True)
    assert resolve_device("mps") == torch.device("mps")


@pytest.mark.parametrize("request_", ["cuda", "cuda:0", torch.device("cuda:0")])
def test_cuda_missing_raises_plain_sentence(machine, request_):
    machine(cuda=0, mps=True)
    with pytest.raises(DeviceError, match="no usable NVIDIA GPU") as info:
        resolve_device(request_)
    message = str(info.value)
    assert "device='cpu'" in message
    assert "\n" not in message


def test_cuda_index_out_of_range(machine):
    machine(cuda=1)
    with pytest.raises(DeviceError, match=r"GPU number 3 .* has 1 GPU \(numbered from 0\)"):
        resolve_device("cuda:3")


def test_mps_missing_raises(machine):
    machine(cuda=1, mps=False)
    with pytest.raises(DeviceError, match="no usable Apple-silicon GPU"):
        resolve_device("mps")


@pytest.mark.parametrize("request_", ["gpu", "cuda:x", "", "banana"])
def test_unknown_names_raise(machine, request_):
    machine(cuda=1, mps=True)
    with pytest.raises(DeviceError, match="is not a device napari-sam knows"):
        resolve_device(request_)


@pytest.mark.parametrize("request_", ["meta", "xla", torch.device("meta")])
def test_unsupported_torch_device_types_raise(machine, request_):
    machine(cuda=1, mps=True)
    with pytest.raises(DeviceError, match="not supported by napari-sam"):
        resolve_device(request_)


def test_wrong_argument_type_raises(machine):
    machine()
    with pytest.raises(DeviceError, match=r"text or a torch\.device"):
        resolve_device(0)  # type: ignore[arg-type]


def test_device_error_is_runtime_error(machine):
    machine()
    with pytest.raises(RuntimeError):
        resolve_device("cuda")


def test_broken_cuda_query_counts_as_no_gpu(monkeypatch):
    def broken() -> bool:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    monkeypatch.setattr(torch.backends.mps, "is_available", constant(False))
    assert resolve_device("auto") == torch.device("cpu")


def test_describe_devices(machine):
    machine(cuda=2, mps=False)
    info = describe_devices()
    assert info["cuda_available"] is True
    assert info["cuda_devices"] == ["Fake GPU", "Fake GPU"]
    assert info["mps_available"] is False
    assert info["auto"] == "cuda"
    assert info["torch_version"] == torch.__version__

    machine(cuda=0, mps=False)
    info = describe_devices()
    assert info["cuda_available"] is False
    assert info["cuda_devices"] == []
    assert info["auto"] == "cpu"
