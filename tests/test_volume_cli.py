"""``napari-sam embed``: precompute a 3D TIFF's embeddings into a cache folder.

Most tests run the command in-process with a fast stand-in model registered
under a test model type; one runs the real command in a subprocess with a
random-weight MobileSAM (vit_t) checkpoint, as a user would.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from napari_sam import cli
from napari_sam.runtime.loader import model_id_for
from napari_sam.workflows.embeddings import (
    DiskCache,
    StackEmbeddings,
    default_contrast_limits,
    encode_planes,
)
from napari_sam.workflows.samples import make_nuclei_3d
from volume_models import EncoderCalls, fast_sam


@pytest.fixture(scope="module")
def stack():
    return np.ascontiguousarray(make_nuclei_3d()[10:15, 40:80, 16:76])  # (5, 40, 60) uint16


@pytest.fixture
def tif(tmp_path, stack):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    return path


@pytest.fixture
def fast_model(monkeypatch, tmp_path):
    """Any checkpoint file gives the same fast model (as ``vit_t``)."""
    from napari_sam.runtime import loader

    model = fast_sam()
    monkeypatch.setattr(loader, "build_any", lambda *a, **k: model)
    ckpt = tmp_path / "fast.pth"
    ckpt.write_bytes(b"weights")
    return model, ckpt


def run(capsys, *args):
    code = cli.main(["embed", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_writes_the_keys_the_widget_uses_and_resumes(
    capsys, tmp_path, tif, stack, fast_model
):
    model, ckpt = fast_model
    out_dir = tmp_path / "cache"
    calls = EncoderCalls(model)
    code, out, err = run(capsys, tif, "--model", "vit_t", "--checkpoint", ckpt, "-o", out_dir)
    assert code == 0, err
    assert out.strip() == str(out_dir)
    assert "stack.tif: 5 slices, 5 encoded, 0 already cached" in err
    assert "encoding" in err and "slice" in err  # the progress bar, on stderr
    assert calls.planes == 5 and len(DiskCache(out_dir)) == 5
    # the keys a napari session makes for this stack, model file and default contrast
    later = StackEmbeddings(
        model,
        stack,
        model_id=model_id_for("vit_t", ckpt),
        contrast=default_contrast_limits(stack),
        disk=out_dir,
    )
    assert later.missing() == []
    emb = later.get(2)
    direct = encode_planes(model, [stack[2]], default_contrast_limits(stack))[0]
    assert torch.equal(emb.features, direct.features.half())

    # run again: nothing to do; other contrast limits or slices: only those
    calls.reset()
    code, out, err = run(
        capsys, tif, "--model", "vit_t", "--checkpoint", ckpt, "-o", out_dir, "--quiet"
    )
    assert code == 0 and "0 encoded, 5 already cached" in err and calls.planes == 0
    assert err.count("\n") == 1  # --quiet: no progress bar, just the summary
    code, out, err = run(
        capsys,
        *(tif, "--model", "vit_t", "--checkpoint", ckpt, "-o", out_dir),
        *("--contrast", "0", "1000", "--slices", "1:3", "--batch-size", "2", "--quiet"),
    )
    assert code == 0 and "2 slices, 2 encoded" in err and calls.batches == [2]
    assert "contrast 0–1000" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.tif"], "does not exist"),
        (["{plane}"], "is a 2D image"),
        (["{tif}", "--model", "vit_q"], "'vit_q' is not a model napari-sam knows"),
        (["{tif}", "--contrast", "10", "5"], "LOW <= HIGH"),
        (["{tif}", "--slices", "a:b"], "START:STOP"),
        (["{tif}", "--slices", "7:9"], "selects no slice"),
        (["{tif}", "--batch-size", "0"], "at least 1"),
        (["{tif}", "--checkpoint", "{missing}"], "does not exist"),
        (["{tif}", "-o", "{blocker}/x"], "cannot be created"),
    ],
)
def test_embed_bad_input_is_one_line_and_exit_1(capsys, tmp_path, tif, stack, args, message):
    tifffile.imwrite(tmp_path / "plane.tif", stack[0])
    (tmp_path / "blocker").write_text("a file, not a folder")
    values = {
        "tif": tif,
        "plane": tmp_path / "plane.tif",
        "missing": tmp_path / "none.pth",
        "blocker": tmp_path / "blocker",
    }
    argv = [a.format(**values) for a in args]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "cache")]
    argv += ["--device", "cpu"]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.startswith("napari-sam: error: ") and err.count("\n") == 1, err
    assert message in err


def test_embed_command_with_a_random_vit_t_checkpoint(tmp_path, stack):
    """The installed command, end to end, with MobileSAM weights from a file."""
    from napari_sam import sam_model_registry
    from napari_sam.runtime.loader import load_model

    torch.manual_seed(0)
    ckpt = tmp_path / "random_vit_t.pt"
    torch.save(sam_model_registry["vit_t"]().state_dict(), ckpt)
    tif = tmp_path / "three.tif"
    tifffile.imwrite(tif, stack[:3], photometric="minisblack")
    out_dir = tmp_path / "cache"
    cmd = [sys.executable, "-m", "napari_sam.cli", "embed", str(tif), "-o", str(out_dir)]
    cmd += ["--model", "vit_t", "--checkpoint", str(ckpt), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out_dir)
    assert "three.tif: 3 slices, 3 encoded, 0 already cached; model file:" in proc.stderr
    model = load_model("vit_t", ckpt, device="cpu")
    embeddings = StackEmbeddings(
        model, stack[:3], model_id=model_id_for("vit_t", ckpt), disk=out_dir
    )
    assert embeddings.missing() == []
    cached = embeddings.get(1)
    direct = encode_planes(model, [stack[1]], default_contrast_limits(stack[:3]))[0]
    torch.testing.assert_close(cached.features.float(), direct.features, atol=2e-3, rtol=2e-3)
