"""``--tile-shape``, ``--halo`` and ``--no-tiling`` on ``napari-sam segment`` and ``embed``.

The commands run in-process with the fast stand-in model (volume_models.py)
registered in place of any checkpoint, so large TIFFs stay quick.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_sam import cli
from napari_sam.workflows.embeddings import DiskCache
from napari_sam.workflows.io import read_tiff
from volume_models import EncoderCalls, fast_sam

RELAXED = [
    "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    "--min-area", "0", "--max-area", "1", "--quiet",
]  # fmt: skip


@pytest.fixture
def fast_model(monkeypatch, tmp_path):
    """Any checkpoint file gives the same fast model (as ``vit_t``)."""
    from napari_sam.runtime import loader

    model = fast_sam()
    monkeypatch.setattr(loader, "build_any", lambda *a, **k: model)
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "fast.pth"
    ckpt.write_bytes(b"weights")
    return model, ["--model", "vit_t", "--checkpoint", str(ckpt), "--device", "cpu"]


@pytest.fixture(scope="module")
def large_tif(tmp_path_factory):
    """A 2100 x 1300 uint16 TIFF: above the 2048-pixel threshold."""
    g = np.random.default_rng(0)
    plane = g.integers(100, 3000, (2100, 1300)).astype(np.uint16)
    path = tmp_path_factory.mktemp("large") / "large.tif"
    tifffile.imwrite(path, plane)
    return path


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_segment_tiles_a_large_tiff_by_itself(fast_model, large_tif, tmp_path, capsys):
    model, args = fast_model
    calls = EncoderCalls(model)
    dst = tmp_path / "labels.tif"
    code, _, err = run(capsys, "segment", large_tif, "-o", dst, *args, *RELAXED)
    assert code == 0, err
    assert calls.planes == 3 * 2  # 768-pixel tiles: 3 rows x 2 columns
    assert read_tiff(dst).data.shape == (2100, 1300)
    calls.reset()
    code, _, err = run(capsys, "segment", large_tif, "-o", dst, *args, *RELAXED,
                       "--tile-shape", 1024, 1024, "--halo", 64, 64)
    assert code == 0, err
    assert calls.planes == 3 * 2
    calls.reset()
    code, _, err = run(capsys, "segment", large_tif, "-o", dst, *args, *RELAXED, "--no-tiling")
    assert code == 0, err
    assert calls.planes == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tile-shape", "4096", "4096"], "larger than the image (2100 x 1300)"),
        (["--tile-shape", "512", "512", "--halo", "256", "64"], "less than half the tile shape"),
        (["--tile-shape", "0", "512"], "tile shape must be at least 64 pixels"),
        (["--halo", "-5", "8"], "halo must be zero or more pixels"),
        (["--no-tiling", "--halo", "8", "8"], "--no-tiling cannot be combined"),
    ],
)
def test_bad_tiling_options_are_one_line(fast_model, large_tif, tmp_path, capsys, flags, message):
    _, args = fast_model
    code, _, err = run(capsys, "segment", large_tif, "-o", tmp_path / "x.tif", *args, *RELAXED,
                       *flags)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-sam: error: ") and message in lines[0]
    assert not (tmp_path / "x.tif").exists()


def test_embed_precomputes_every_tile_and_resumes(fast_model, large_tif, tmp_path, capsys):
    model, args = fast_model
    calls = EncoderCalls(model)
    cache = tmp_path / "emb"
    code, out, err = run(capsys, "embed", large_tif, "-o", cache, *args, "--quiet")
    assert code == 0, err
    assert out.strip() == str(cache)
    assert "6 tiles (768x768, halo 128x128), 6 encoded, 0 already cached" in err
    assert calls.planes == 6 and len(DiskCache(cache)) == 6
    calls.reset()
    code, _, err = run(capsys, "embed", large_tif, "-o", cache, *args, "--quiet")
    assert code == 0 and "0 encoded, 6 already cached" in err and calls.planes == 0
    # a stack with tiles of its own size per slice
    stack = np.random.default_rng(1).integers(0, 999, (2, 300, 200)).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    code, _, err = run(capsys, "embed", path, "-o", tmp_path / "emb2", *args, "--quiet",
                       "--tile-shape", 128, 128, "--halo", 16, 16, "--slices", "1:2")
    assert code == 0, err
    assert "1 slice x 6 tiles (128x128, halo 16x16), 6 encoded" in err
    # a small 2D image is not tiled, and embed still wants a stack for it
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, stack[0])
    code, _, err = run(capsys, "embed", small, "-o", tmp_path / "emb3", *args, "--quiet")
    assert code == 1 and "needs a 3D stack: grayscale (Z, Y, X) or of colour planes" in err
    # a stack of colour planes is tiled plane by plane, each tile in its colours
    colour = np.random.default_rng(2).integers(0, 255, (2, 300, 200, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "colour.tif", colour, photometric="rgb")
    code, _, err = run(capsys, "embed", tmp_path / "colour.tif", "-o", tmp_path / "emb4", *args,
                       "--quiet", "--tile-shape", 128, 128, "--halo", 16, 16)
    assert code == 0 and "2 slices x 6 tiles (128x128, halo 16x16), 12 encoded" in err, err


def test_tiling_options_travel_in_batch_recipes(fast_model, large_tif):
    """The options become JSON in the recipe (manifests, cluster workers) and reach segment()."""
    import argparse
    import json

    from napari_sam.cli.tile_options import tiling_options
    from napari_sam.workflows.batch import Recipe
    from napari_sam.workflows.segment import AutoSettings, segment
    from napari_sam.workflows.tiling import Tiling

    model, _ = fast_model
    default = argparse.Namespace(tile_shape=None, halo=None, no_tiling=False)
    assert tiling_options(default) == ()
    asked = argparse.Namespace(tile_shape=[1024, 1024], halo=[64, 64], no_tiling=False)
    options = tiling_options(asked)
    assert json.loads(json.dumps(options[0][1])) == options[0][1]
    recipe = Recipe(settings=AutoSettings(points_per_side=1), options=options)
    assert recipe.identity() != Recipe(settings=AutoSettings(points_per_side=1)).identity()
    assert Tiling.coerce(recipe.kwargs()["tiling"]) == Tiling.on((1024, 1024), (64, 64))
    calls = EncoderCalls(model)
    plane = read_tiff(large_tif).data
    segment(model, plane, settings=recipe.settings, **recipe.kwargs())
    assert calls.planes == 3 * 2


def test_embed_tiles_every_plane_of_a_timelapse(fast_model, tmp_path, capsys):
    """A time-lapse of stacks (T, Z, Y, X) with tiles: every tile of every slice of every time
    point (or of --slices in each), keyed by the full (t, z) index as the dock keys them."""
    from napari_sam.runtime.loader import model_id_for
    from napari_sam.workflows.embeddings import default_contrast_limits
    from napari_sam.workflows.planes import ImagePlanes
    from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
    from napari_sam.workflows.tiling import Tiling

    model, args = fast_model
    movie = np.random.default_rng(3).integers(0, 999, (2, 3, 300, 200)).astype(np.uint16)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TZYX"})
    tiles = ["--tile-shape", 128, 128, "--halo", 16, 16]
    calls = EncoderCalls(model)
    code, _, err = run(capsys, "embed", path, "-o", tmp_path / "emb", *args, "--quiet", *tiles,
                       "--slices", "1:3")
    assert code == 0, err
    assert "2 time points x 2 slices x 6 tiles (128x128, halo 16x16), 24 encoded, 0 already" in err
    assert calls.planes == 24
    tiled = TiledEmbeddings(model, ImagePlanes(movie, contrast=default_contrast_limits(movie)),
                            model_id=model_id_for("vit_t", args[3]),
                            tiling=Tiling(mode="on", tile_shape=(128, 128), halo=(16, 16)))
    cache = DiskCache(tmp_path / "emb")
    assert len(cache) == 24 and tiled.key((1, 2), tiled.grid.tile(4)) in cache
    assert tiled.key((1, 0), tiled.grid.tile(4)) not in cache  # slice 0 was not asked for
