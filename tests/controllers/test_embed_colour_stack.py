"""``napari-sam embed`` on a stack of colour planes ``(Z, Y, X, RGB)``, and the dock using it.

Serial sections in colour are precomputed on the command line (each plane in
its colours) and the interactive dock, with its disk cache on the same
folder, finds every slice there: a click on any slice encodes nothing. The
model is a real Sam (small config, random weights) with a fast pooling
stand-in encoder; the dock runs on a plain ViewerModel (no display).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from napari.components import ViewerModel

from napari_helpers import colour_stack, settle
from napari_sam import cli
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam.runtime.loader import model_id_for
from napari_sam.workflows.embeddings import DiskCache, encode_planes, model_tag
from napari_sam.workflows.planes import ImagePlanes
from volume_models import EncoderCalls


@pytest.fixture()
def checkpoint(monkeypatch, tmp_path, fast_model):
    """Any checkpoint file loads ``fast_model`` (as vit_t)."""
    from napari_sam.runtime import loader

    monkeypatch.setattr(loader, "build_any", lambda *a, **k: fast_model)
    path = tmp_path / "fast.pth"
    path.write_bytes(b"weights")
    return path


def test_embedded_colour_slices_are_the_docks(capsys, tmp_path, nuclei, fast_model, checkpoint):
    colour = colour_stack(nuclei, slices=(8, 10, 12, 14))  # (4, 64, 80, 3) uint8
    path = tmp_path / "sections.tif"
    tifffile.imwrite(path, colour, photometric="rgb")
    cache = tmp_path / "cache"
    calls = EncoderCalls(fast_model)
    code = cli.main(["embed", str(path), "--model", "vit_t", "--checkpoint", str(checkpoint),
                     "-o", str(cache), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "sections.tif: 4 slices, 4 encoded, 0 already cached" in err and "contrast 0–255" in err
    assert calls.planes == 4 and len(DiskCache(cache)) == 4
    # each slice encoded in its colours, as SAM sees an 8-bit colour plane
    key = ImagePlanes(colour, rgb=True, contrast=(0, 255)).key(
        (2,), model_tag(fast_model, model_id_for("vit_t", checkpoint)))
    direct = encode_planes(fast_model, [colour[2]], (0.0, 255.0), rgb=True)[0].features
    assert torch.equal(DiskCache(cache).get(key).features, direct.half())
    gray = encode_planes(fast_model, [colour[2, ..., 0]], (0.0, 255.0))[0].features
    assert not torch.equal(direct, gray)

    # the dock on the same folder: a click on each slice needs no encoding
    viewer = ViewerModel()
    viewer.add_image(colour, name="sections", rgb=True)
    c = InteractiveController(viewer)
    c.set_model(fast_model, model_id_for("vit_t", checkpoint))
    c.embeddings.set_disk(True, str(cache))
    calls.reset()
    for z in range(4):
        viewer.dims.set_point(0, z)
        c.prompts.points.current.data = np.empty((0, 3))
        c.prompts.points.current.add([z, 30.0, 40.0])
        settle(c)
        assert c.preview.layer.data[z].any()
    assert calls.planes == 0 and c.embeddings.log == []
    # a run again finds all of them
    code = cli.main(["embed", str(path), "--model", "vit_t", "--checkpoint", str(checkpoint),
                     "-o", str(cache), "--quiet", "--slices", "1:3"])  # fmt: skip
    assert code == 0 and "2 slices, 0 encoded, 2 already cached" in capsys.readouterr().err
    c.close()


def test_embedded_channels_are_the_docks_channel_layers(
    capsys, tmp_path, nuclei, fast_model, checkpoint
):
    """``embed --channels 1 0`` on a (C, Z, Y, X) file precomputes what the dock encodes for
    that file opened as one layer with channels 1 and 0 of its channel axis chosen: the
    channel layers' planes are keyed by what SAM sees, not by where the channels came from."""
    czyx = np.stack([colour_stack(nuclei, slices=(8, 10, 12))[..., c] for c in range(3)])
    czyx = czyx.astype(np.uint16) * 9  # (3, 3, 64, 80)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, czyx, photometric="minisblack")
    cache = tmp_path / "cache"
    calls = EncoderCalls(fast_model)
    code = cli.main(["embed", str(path), "--channels", "1", "0", "--model", "vit_t",
                     "--checkpoint", str(checkpoint), "-o", str(cache), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "cells.tif: 3 slices, 3 encoded, 0 already cached" in err, err
    assert calls.planes == 3 and len(DiskCache(cache)) == 3

    viewer = ViewerModel()
    viewer.add_image(czyx, name="cells")
    c = InteractiveController(viewer)
    c.set_model(fast_model, model_id_for("vit_t", checkpoint))
    c.embeddings.set_disk(True, str(cache))
    c.set_channel_axis(0, "1 0")
    assert [lyr.name for lyr in c.channels.layers] == ["cells channel 1", "cells channel 0"]
    calls.reset()
    for z in range(3):
        viewer.dims.set_point(1, z)  # axis 0 is the hidden layer's channels
        c.prompts.points.current.data = np.empty((0, 3))
        c.prompts.points.current.add([z, 30.0, 40.0])
        settle(c)
        assert c.preview.layer.data[z].any()
    assert calls.planes == 0 and c.embeddings.log == []
    # another choice is another input: encoded
    c.set_channel_axis(0, "0 1")
    c.prompts.points.current.data = np.empty((0, 3))
    c.prompts.points.current.add([2, 30.0, 40.0])
    settle(c)
    assert calls.planes == 1
    c.close()


def test_embedded_timelapses_are_the_docks(capsys, tmp_path, nuclei, fast_model, checkpoint):
    """``embed`` on a time-lapse of stacks (T, Z, Y, X) precomputes every slice of every time
    point, and on an ImageJ hyperstack (T, Z, C, Y, X) with ``--channels 1 0`` those channels'
    planes; the dock on the same file (the hyperstack as one layer, channels 1 0 chosen on its
    channel axis) with its disk cache on that folder encodes nothing for a click on any."""
    tzyx = np.stack([colour_stack(nuclei, slices=(8, 10, 12))[..., c] for c in range(2)])
    tzyx = tzyx.astype(np.uint16) * 9  # (2, 3, 64, 80)
    tzcyx = np.stack([tzyx, tzyx[..., ::-1] // 2], axis=2)  # (2, 3, 2, 64, 80)
    model = ["--model", "vit_t", "--checkpoint", str(checkpoint), "--quiet"]
    cases = [("movie.tif", tzyx, "TZYX", [], None), ("hyper.tif", tzcyx, "TZCYX",
             ["--channels", "1", "0"], (2, "1 0"))]  # fmt: skip
    for name, data, axes, extra, channel_axis in cases:
        path, cache = tmp_path / name, tmp_path / f"{name}.cache"
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes})
        calls = EncoderCalls(fast_model)
        code = cli.main(["embed", str(path), *extra, *model, "-o", str(cache)])
        err = capsys.readouterr().err
        assert code == 0 and f"{name}: 2 time points x 3 slices, 6 encoded, 0" in err, err
        assert calls.planes == 6 and len(DiskCache(cache)) == 6

        viewer = ViewerModel()
        viewer.add_image(data, name=name)
        c = InteractiveController(viewer)
        c.set_model(fast_model, model_id_for("vit_t", checkpoint))
        c.embeddings.set_disk(True, str(cache))
        first = 0
        if channel_axis is not None:
            c.set_channel_axis(*channel_axis)
            first = 1  # the layer is shown channels first: (c, t, z, y, x)
        calls.reset()
        for t, z in [(0, 0), (1, 2), (1, 1)]:
            viewer.dims.set_point(first, t)
            viewer.dims.set_point(first + 1, z)
            c.prompts.points.current.data = np.empty((0, 4))
            c.prompts.points.current.add([t, z, 30.0, 40.0])
            settle(c)
            assert c.preview.layer.data[t, z].any(), (name, t, z)
        assert calls.planes == 0 and c.embeddings.log == [], name
        c.close()
