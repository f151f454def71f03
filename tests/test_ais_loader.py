"""Loading micro-sam's models and instance decoders: catalogue, files, checks, failures.

The SAM part is replaced by a stand-in builder (as in test_weights.py) so that
no large network is built; decoders are real (random, seeded) and written in
micro-sam's formats.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from napari_sam.errors import (
    CheckpointError,
    ModelTypeMismatchError,
    NoDecoderError,
    WeightsDownloadError,
)
from napari_sam.model.build import CONFIGS
from napari_sam.model.decoders.instance import InstanceDecoder
from napari_sam.runtime import loader, weights
from napari_sam.runtime.weights import CHECKPOINTS, CheckpointInfo, file_xxh128
from napari_sam.workflows.segment import resolve_mode


@pytest.fixture(scope="module")
def decoder_state():
    torch.manual_seed(0)
    return InstanceDecoder("transposed").state_dict()


@pytest.fixture
def decoder_file(tmp_path, decoder_state) -> Path:
    path = tmp_path / "vit_b_decoder.pt"
    torch.save(decoder_state, path)  # micro-sam's decoder files: the plain state dict
    return path


def fake_sam_state(arch: str) -> dict[str, torch.Tensor]:
    """Just the tensors that tell a SAM state dict's architecture."""
    cfg = CONFIGS[arch]
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(cfg.encoder_embed_dim, 3, 1, 1)}
    for i in range(cfg.encoder_depth):
        state[f"image_encoder.blocks.{i}.norm1.weight"] = torch.zeros(1)
    return state


@pytest.fixture
def export(tmp_path, decoder_state) -> Path:
    """A micro-sam single-file export of a vit_b model."""
    path = tmp_path / "my_vit_b_lm_export.pt"
    torch.save({"model_state": fake_sam_state("vit_b"), "decoder_state": decoder_state}, path)
    return path


class FakeBuilder:
    """Stands in for ``build_any``: records calls, returns a small module."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def __call__(self, model_type, checkpoint=None) -> torch.nn.Module:
        self.calls.append({"model_type": model_type, "checkpoint": str(checkpoint)})
        return torch.nn.Sequential(torch.nn.Linear(2, 2))


@pytest.fixture
def builder(monkeypatch) -> FakeBuilder:
    fake = FakeBuilder()
    monkeypatch.setattr(loader, "build_any", fake)
    return fake


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(path))
    return path


def equal_states(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    ours = module.state_dict()
    return set(ours) == set(state) and all(torch.equal(ours[k], state[k]) for k in state)


# --------------------------------------------------------------------------- catalogue
def test_micro_sam_models_are_in_the_catalogue_with_their_decoders():
    names = weights.models_with_decoder()
    assert set(names) == {
        "vit_t_lm", "vit_b_lm", "vit_l_lm",
        "vit_t_em_organelles", "vit_b_em_organelles", "vit_l_em_organelles",
        "vit_b_histopathology", "vit_l_histopathology", "vit_h_histopathology",
        "vit_b_medical_imaging",
    }
    files = set()
    for name in names:
        info = CHECKPOINTS[name]
        assert info.arch == name[:5] and info.arch in CONFIGS
        assert loader.architecture_of(name) == info.arch
        assert loader.resolve_model_type(name, "cpu") == name
        for item in (info, info.decoder):
            assert item.url.startswith("https://")
            assert re.fullmatch(r"[0-9a-f]{32}", item.xxh128)
            assert item.arch == info.arch
            files.add(item.filename)
    assert len(files) == 2 * len(names)  # no two entries share a cache file
    # facts from micro-sam's registry
    assert CHECKPOINTS["vit_b_lm"].xxh128 == "fe9252a29f3f4ea53c15a06de471e186"
    assert CHECKPOINTS["vit_b_lm"].decoder.xxh128 == "708b15ac620e235f90bb38612c4929ba"
    assert CHECKPOINTS["vit_b_lm"].decoder.url.endswith("diplomatic-bug/1.2/files/vit_b_decoder.pt")
    for sam in ("vit_t", "vit_b", "vit_l", "vit_h"):
        assert CHECKPOINTS[sam].decoder is None
    assert set(names) <= set(loader.model_names())


# --------------------------------------------------------------------------- local files
def test_single_file_export_brings_its_decoder(builder, export, decoder_state):
    loaded = loader.load("vit_b", export, device="cpu")
    assert loaded.has_decoder and equal_states(loaded.decoder, decoder_state)
    assert loaded.decoder.encoder == "vit_b" and not loaded.decoder.training
    assert resolve_mode("auto", loaded) == "ais"
    assert loader.load("vit_b", export, device="cpu", decoder=False).decoder is None


def test_plain_checkpoint_has_no_decoder(builder, tmp_path):
    ckpt = tmp_path / "sam.pth"
    torch.save(fake_sam_state("vit_b"), ckpt)
    loaded = loader.load("vit_b", ckpt, device="cpu")
    assert loaded.decoder is None
    assert resolve_mode("auto", loaded) == "amg"
    with pytest.raises(NoDecoderError, match="vit_b_lm"):
        resolve_mode("ais", loaded)


def test_decoder_file_added_to_a_model(builder, tmp_path, decoder_file, decoder_state):
    ckpt = tmp_path / "sam.pth"
    torch.save(fake_sam_state("vit_b"), ckpt)
    loaded = loader.load("vit_b", ckpt, device="cpu", decoder=decoder_file)
    assert equal_states(loaded.decoder, decoder_state)


def test_decoder_keys_that_do_not_fit_are_named_in_one_sentence(builder, tmp_path, decoder_state):
    broken = dict(decoder_state)
    del broken["out_conv.bias"]
    broken["head.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken_export.pt"
    torch.save({"model_state": fake_sam_state("vit_b"), "decoder_state": broken}, path)
    with pytest.raises(CheckpointError) as info:
        loader.load("vit_b", path, device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert "1 missing key(s): out_conv.bias" in message
    assert "1 unexpected key(s): head.extra.weight" in message
    assert str(path) in message


def test_decoder_of_another_encoder_size_is_refused_by_its_file(builder, tmp_path, decoder_state):
    other = tmp_path / "vit_l_export.pt"
    torch.save({"model_state": fake_sam_state("vit_l"), "decoder_state": decoder_state}, other)
    ckpt = tmp_path / "sam.pth"
    torch.save(fake_sam_state("vit_b"), ckpt)
    with pytest.raises(ModelTypeMismatchError) as info:
        loader.load("vit_b", ckpt, device="cpu", decoder=other)
    assert (info.value.expected, info.value.found) == ("vit_b", "vit_l")
    assert "'vit_l' encoder" in str(info.value) and "\n" not in str(info.value)


def test_published_decoder_of_another_encoder_size_is_recognised(
    builder, monkeypatch, tmp_path, decoder_file
):
    """A decoder file is identified by its xxHash-128 among the published ones."""
    entry = CHECKPOINTS["vit_l_lm"]
    fake = CheckpointInfo(
        entry.model_type, entry.filename, entry.url, None, architecture="vit_l",
        xxh128=entry.xxh128,
        decoder=CheckpointInfo(
            entry.model_type, entry.decoder.filename, entry.decoder.url, None,
            architecture="vit_l", xxh128=file_xxh128(decoder_file),
        ),
    )
    monkeypatch.setitem(CHECKPOINTS, "vit_l_lm", fake)
    ckpt = tmp_path / "sam.pth"
    torch.save(fake_sam_state("vit_b"), ckpt)
    with pytest.raises(ModelTypeMismatchError, match="'vit_l' encoder"):
        loader.load("vit_b", ckpt, device="cpu", decoder=decoder_file)
    assert loader.load("vit_l", ckpt, device="cpu", decoder=decoder_file).has_decoder


def test_sam_weights_given_as_decoder(builder, tmp_path):
    ckpt = tmp_path / "sam.pth"
    torch.save(fake_sam_state("vit_b"), ckpt)
    with pytest.raises(CheckpointError, match="holds SAM weights but no instance decoder"):
        loader.load("vit_b", ckpt, device="cpu", decoder=ckpt)


# --------------------------------------------------------------------------- published files
@pytest.fixture
def published(monkeypatch, tmp_path, decoder_file) -> CheckpointInfo:
    """Point vit_b_lm at local file:// URLs (encoder bytes + a real decoder), right hashes."""
    encoder = tmp_path / "served_vit_b.pt"
    encoder.write_bytes(b"encoder weights")
    info = CheckpointInfo(
        "vit_b_lm", "vit_b_lm.pt", encoder.as_uri(), None, architecture="vit_b",
        xxh128=file_xxh128(encoder),
        decoder=CheckpointInfo(
            "vit_b_lm", "vit_b_lm_decoder.pt", decoder_file.as_uri(), None,
            architecture="vit_b", xxh128="xxh128:" + file_xxh128(decoder_file),
        ),
    )
    monkeypatch.setitem(CHECKPOINTS, "vit_b_lm", info)
    return info


def test_published_model_downloads_encoder_and_decoder(
    builder, published, cache, decoder_state
):
    assert not weights.is_cached("vit_b_lm")
    loaded = loader.load("vit_b_lm", device="cpu", progress=False)
    assert sorted(p.name for p in cache.iterdir()) == ["vit_b_lm.pt", "vit_b_lm_decoder.pt"]
    assert weights.is_cached("vit_b_lm")
    assert builder.calls == [{"model_type": "vit_b", "checkpoint": str(cache / "vit_b_lm.pt")}]
    assert (loaded.model_type, loaded.name, loaded.model_id) == ("vit_b", "vit_b_lm", "vit_b_lm")
    assert equal_states(loaded.decoder, decoder_state) and loaded.decoder.encoder == "vit_b"


def test_decoder_failing_its_hash_is_not_kept(builder, monkeypatch, published, cache):
    wrong = dataclasses.replace(published.decoder, xxh128="0" * 32)
    monkeypatch.setitem(CHECKPOINTS, "vit_b_lm", dataclasses.replace(published, decoder=wrong))
    with pytest.raises(WeightsDownloadError, match="xxHash-128 checksum") as info:
        loader.load("vit_b_lm", device="cpu", progress=False)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in cache.iterdir()) == ["vit_b_lm.pt"]  # no decoder, no .part


def test_damaged_cached_decoder_is_deleted(builder, published, cache):
    cache.mkdir()
    damaged = cache / "vit_b_lm_decoder.pt"
    damaged.write_bytes(b"PK\x03\x04 half a zip file")
    with pytest.raises(CheckpointError) as info:
        loader.load("vit_b_lm", device="cpu", progress=False)
    message = str(info.value)
    assert str(damaged) in message and "deleted" in message and "\n" not in message
    assert not damaged.exists()
    # the next load downloads it again
    assert loader.load("vit_b_lm", device="cpu", progress=False).has_decoder
    assert damaged.exists()


def test_offline_without_decoder_says_where_to_put_it(builder, published, cache):
    cache.mkdir()
    (cache / "vit_b_lm.pt").write_bytes(b"encoder weights")
    with pytest.raises(WeightsDownloadError, match="decoder are not downloaded yet") as info:
        loader.load("vit_b_lm", device="cpu", download=False)
    assert str(cache / "vit_b_lm_decoder.pt") in str(info.value)


def test_xxh128_prefix_and_case_are_accepted(tmp_path):
    source = tmp_path / "file.bin"
    source.write_bytes(b"abc" * 1000)
    digest = file_xxh128(source)
    dest = weights.download(source.as_uri(), tmp_path / "out.bin", progress=False,
                            xxh128="XXH128:" + digest.upper())
    assert dest.read_bytes() == source.read_bytes()
