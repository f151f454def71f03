"""napari sample-data contributions: the synthetic nuclei of :mod:`napari_sam.workflows.samples`.

npe2 calls these functions; they return napari layer-data tuples (no napari import).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam.workflows.samples import (
    NUCLEI_2D_SCALE,
    NUCLEI_3D_SCALE,
    make_nuclei_2d,
    make_nuclei_3d,
)

__all__ = ["nuclei_2d", "nuclei_3d"]


def _contrast(data: np.ndarray) -> list[float]:
    lo, hi = np.percentile(data, (0.5, 99.8))
    return [float(lo), float(hi)]


def nuclei_2d() -> list[tuple[Any, dict, str]]:
    """npe2 sample data: 2D fluorescent nuclei, uint16."""
    data = make_nuclei_2d()
    meta = {
        "name": "nuclei 2D (synthetic)",
        "scale": NUCLEI_2D_SCALE,
        "units": ("µm", "µm"),
        "colormap": "gray",
        "contrast_limits": _contrast(data),
    }
    return [(data, meta, "image")]


def nuclei_3d() -> list[tuple[Any, dict, str]]:
    """npe2 sample data: 3D (ZYX) fluorescent nuclei, uint16, anisotropic voxels."""
    data = make_nuclei_3d()
    meta = {
        "name": "nuclei 3D (synthetic)",
        "scale": NUCLEI_3D_SCALE,
        "units": ("µm", "µm", "µm"),
        "colormap": "gray",
        "contrast_limits": _contrast(data),
    }
    return [(data, meta, "image")]
