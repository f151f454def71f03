"""Batch pieces without a model: job planning, recipe identity, the manifest of finished
outputs, slice linking in two steps, folder outputs, which GPU a worker takes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from napari_sam.distributed.worker import ModelPlugin, ModelSpec, worker_device
from napari_sam.errors import InputFileError, OutputFileError
from napari_sam.runtime.files import replace_dir, temporary_dir
from napari_sam.workflows import io
from napari_sam.workflows.batch import Manifest, Recipe, SegmentJob, plan_jobs
from napari_sam.workflows.linking import SliceLinker, offset_luts, overlap_pairs, plane_areas
from napari_sam.workflows.segment import AutoSettings, link_slices


def _tif(path):
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    return path


def test_plan_jobs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _tif(folder / "a.ome.tif")
    io.write_labels(folder / "v.zarr", np.zeros((2, 4, 4), np.uint32))
    (folder / "x.txt").write_text("x")
    plan = plan_jobs([str(folder)], str(tmp_path / "out"))
    assert [(j.source.name, j.output.name) for j in plan.jobs] == [
        ("a.ome.tif", "a_labels.tif"),
        ("v.zarr", "v_labels.zarr"),
    ]
    assert [p.name for p, _ in plan.skipped] == ["x.txt"]
    assert plan.new_folders == [tmp_path / "out"]
    assert [j.output.name for j in plan_jobs([str(folder)], str(tmp_path), output_format="zarr")
            .jobs] == ["a_labels.zarr", "v_labels.zarr"]  # fmt: skip
    # one input: the output name; an existing zarr output is replaced, not written into
    one = plan_jobs([str(folder / "v.zarr")], str(folder / "v.zarr") + "_copy.zarr").jobs
    assert one[0].output.name == "v.zarr_copy.zarr" and one[0].is_zarr
    io.write_labels(tmp_path / "old.zarr", np.zeros((4, 4), np.uint32))
    assert plan_jobs([str(folder / "a.ome.tif")], str(tmp_path / "old.zarr")).jobs[0].output == (
        tmp_path / "old.zarr"
    )
    with pytest.raises(OutputFileError, match=r"must be a \.tif file name or a \.zarr"):
        plan_jobs([str(folder / "a.ome.tif")], str(tmp_path / "labels.png"))
    with pytest.raises(InputFileError, match="holds no image napari-sam reads"):
        (tmp_path / "empty").mkdir()
        plan_jobs([str(tmp_path / "empty")], str(tmp_path / "o"))


def test_a_rerun_into_the_input_folder_skips_the_earlier_outputs(tmp_path):
    _tif(tmp_path / "a.tif")
    _tif(tmp_path / "a_labels.tif")
    plan = plan_jobs([str(tmp_path)], str(tmp_path))
    assert [j.source.name for j in plan.jobs] == ["a.tif"]
    assert plan.skipped == [(tmp_path / "a_labels.tif", "the output of a.tif in this run")]


def test_recipe_identity_and_manifest(tmp_path):
    src = _tif(tmp_path / "a.tif")
    (tmp_path / "out").mkdir()
    out = _tif(tmp_path / "out" / "a_labels.tif")
    job = SegmentJob(src, out)
    base = Recipe(AutoSettings(), model="vit_t")
    assert base.identity() == Recipe(AutoSettings(), model="vit_t").identity()
    others = [
        Recipe(AutoSettings(points_per_side=16), model="vit_t"),
        Recipe(AutoSettings(), contrast=(0, 1), model="vit_t"),
        Recipe(AutoSettings(), options=(("mode", "ais"),), model="vit_t"),
        Recipe(AutoSettings(), model="vit_b"),
        Recipe(AutoSettings(), model="vit_t", precision="bf16"),
    ]
    assert len({r.identity() for r in [base, *others]}) == 6
    manifest = Manifest(out.parent)
    assert not manifest.finished(job, base.identity())
    manifest.record(job, base.identity(), coco=[(None, (8, 8), [{"label": 1}])], n_objects=3)
    assert manifest.finished(job, base.identity())
    assert manifest.finished(job, base.identity(), coco=True)
    assert manifest.coco(job) == [(None, (8, 8), [{"label": 1}])]
    assert manifest.n_objects(job) == 3
    assert not manifest.finished(job, others[0].identity())
    os.utime(out, ns=(5, 5))  # the output was replaced or edited
    assert not manifest.finished(job, base.identity())
    manifest.record(job, base.identity())
    os.utime(src, ns=(5, 5))  # the input changed
    assert not manifest.finished(job, base.identity())
    manifest.path.write_text("{broken")
    assert not manifest.finished(job, base.identity())  # a damaged record means "not finished"


def test_two_step_linking_equals_link_slices():
    rng = np.random.default_rng(3)
    for _ in range(100):
        stack = rng.integers(0, rng.integers(2, 7), (rng.integers(2, 6), 9, 11))
        threshold = float(rng.choice([0.05, 0.2, 0.5]))
        linked, _ = link_slices(stack, threshold)
        linker = SliceLinker()
        out = np.zeros(stack.shape, np.uint32)
        for z in range(stack.shape[0]):
            areas = plane_areas(stack[z])
            pairs = [] if z == 0 else overlap_pairs(stack[z - 1], stack[z], threshold)
            lut = linker.add(areas, pairs)
            for raw, new in lut.items():
                out[z][stack[z] == raw] = new
        np.testing.assert_array_equal(out, linked)
    assert offset_luts([3, 0, 2]) == [0, 3, 3]


def test_folder_outputs_replace_whole(tmp_path):
    dest = tmp_path / "x.zarr"
    dest.mkdir()
    (dest / "old").write_text("old")
    with temporary_dir(dest) as tmp:
        (tmp / "new").write_text("new")
        replace_dir(tmp, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]
    with pytest.raises(RuntimeError), temporary_dir(dest) as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]


def test_each_worker_of_a_multi_gpu_machine_takes_its_own_gpu():
    assert worker_device("auto", 0, 4) == "cuda:0"
    assert worker_device("auto", 5, 4) == "cuda:1"
    assert worker_device("cuda", "3", 2) == "cuda:1"
    assert worker_device("auto", "tcp://a:1", 4) == "auto"  # a name that is no number
    assert worker_device("auto", 1, 1) == "auto"
    assert worker_device("cuda:2", 1, 4) == "cuda:2"
    assert worker_device("cpu", 1, 4) == "cpu"


def test_model_plugin_travels_without_its_model():
    import pickle

    plugin = ModelPlugin(ModelSpec("vit_t"), torch_threads=2)
    plugin.loaded = object()
    copy = pickle.loads(pickle.dumps(plugin))
    assert copy.loaded is None and copy.spec == plugin.spec and copy.torch_threads == 2
    assert copy.name == plugin.name != ModelPlugin(ModelSpec("vit_b")).name
