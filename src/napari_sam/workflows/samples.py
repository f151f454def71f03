"""Synthetic fluorescence samples (generated here, nothing is downloaded).

Two generators, shown in napari as sample data (``File > Open Sample > SAM for microscopy``,
see :mod:`napari_sam._widgets.sample_data`) and used by tests and benchmarks:

- ``nuclei_2d``: ``(256, 256)`` uint16, ~30 stained nuclei: textured ellipses
  with soft edges and bright nucleoli on a dim, uneven background, with
  shot and read noise; pixel size 0.5 µm.
- ``nuclei_3d``: ``(32, 192, 192)`` uint16 ZYX stack of ellipsoidal nuclei,
  voxel size 1.0 × 0.25 × 0.25 µm (anisotropic, as in a confocal stack:
  the layer's ``scale`` is ``(1.0, 0.25, 0.25)``), with the axial blur of a
  widefield/confocal point-spread function.

The generators are deterministic (seeded) and take well under a second. No napari import.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NUCLEI_2D_SCALE",
    "NUCLEI_2D_SHAPE",
    "NUCLEI_3D_SCALE",
    "NUCLEI_3D_SHAPE",
    "make_nuclei_2d",
    "make_nuclei_3d",
]

NUCLEI_2D_SHAPE = (256, 256)
NUCLEI_2D_SCALE = (0.5, 0.5)
NUCLEI_3D_SHAPE = (32, 192, 192)
NUCLEI_3D_SCALE = (1.0, 0.25, 0.25)


def _place_centres(
    g: np.random.Generator, n: int, lo: np.ndarray, hi: np.ndarray, min_dist: np.ndarray
) -> np.ndarray:
    """Up to ``n`` random centres in the box ``lo..hi``, at least ``min_dist`` apart (scaled)."""
    centres: list[np.ndarray] = []
    for _ in range(n * 40):
        c = g.uniform(lo, hi)
        if all(np.sum(((c - o) / min_dist) ** 2) >= 1.0 for o in centres):
            centres.append(c)
            if len(centres) == n:
                break
    return np.array(centres)


def _finish(img: np.ndarray, g: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """Add background, shot noise (Poisson-like) and read noise; clip to uint16."""
    signal = img + background
    noisy = signal + g.normal(0.0, 1.0, img.shape) * np.sqrt(np.maximum(signal, 1.0))
    noisy += g.normal(0.0, 6.0, img.shape)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def _nucleus(
    g: np.random.Generator,
    grid: list[np.ndarray],
    centre: np.ndarray,
    radii: np.ndarray,
    edge: np.ndarray,
) -> np.ndarray:
    """Intensity of one textured, soft-edged ellipsoidal nucleus on a coordinate grid."""
    ndim = len(grid)
    # a random rotation in the last two axes (the imaging plane)
    angle = g.uniform(0, np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    d = [grid[i] - centre[i] for i in range(ndim)]
    u = ca * d[-2] + sa * d[-1]
    v = -sa * d[-2] + ca * d[-1]
    rot = [*d[:-2], u, v]
    r = np.sqrt(sum((rot[i] / radii[i]) ** 2 for i in range(ndim)))
    # soft edge: the distance to the surface in pixels along the steepest axis, blurred
    width = float(np.min(radii / edge))
    body = 1.0 / (1.0 + np.exp(-(1.0 - r) * width * 2.5))
    # chromatin texture: smooth random clumps, and two or three dimmer nucleoli
    texture = np.full(r.shape, 0.8)
    for _ in range(8):
        off = g.uniform(-0.6, 0.6, ndim) * radii
        width2 = (g.uniform(0.2, 0.35) * radii) ** 2
        dist2 = sum((rot[i] - off[i]) ** 2 / width2[i] for i in range(ndim))
        texture = texture + g.uniform(0.1, 0.3) * np.exp(-dist2)
    for _ in range(int(g.integers(2, 4))):
        off = g.uniform(-0.4, 0.4, ndim) * radii
        dist2 = sum(((rot[i] - off[i]) / (0.15 * radii[i])) ** 2 for i in range(ndim))
        texture = texture - 0.3 * np.exp(-dist2)
    return body * texture


def make_nuclei_2d(
    seed: int = 0, shape: tuple[int, int] = NUCLEI_2D_SHAPE, n: int = 30
) -> np.ndarray:
    """A 2D uint16 image of fluorescent nuclei (see the module docstring)."""
    g = np.random.default_rng(seed)
    h, w = shape
    img = np.zeros(shape)
    centres = _place_centres(
        g, n, np.array([12.0, 12.0]), np.array([h - 12.0, w - 12.0]), np.array([26.0, 26.0])
    )
    for c in centres:
        radii = g.uniform(8, 14, 2)
        lo = np.maximum(np.floor(c - 20).astype(int), 0)
        hi = np.minimum(np.ceil(c + 20).astype(int), shape)
        grid = list(np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].astype(float))
        brightness = g.uniform(900, 2600)
        patch = _nucleus(g, grid, c, radii, np.array([1.5, 1.5])) * brightness
        img[lo[0] : hi[0], lo[1] : hi[1]] = np.maximum(img[lo[0] : hi[0], lo[1] : hi[1]], patch)
    yy, xx = np.mgrid[0:h, 0:w]
    background = 110 + 40 * np.exp(-((yy - 0.3 * h) ** 2 + (xx - 0.7 * w) ** 2) / (0.5 * h * w))
    return _finish(img, g, background)


def make_nuclei_3d(
    seed: int = 1, shape: tuple[int, int, int] = NUCLEI_3D_SHAPE, n: int = 24
) -> np.ndarray:
    """A 3D ZYX uint16 stack of fluorescent nuclei, voxels :data:`NUCLEI_3D_SCALE` µm."""
    g = np.random.default_rng(seed)
    z, h, w = shape
    sz, sy, _ = NUCLEI_3D_SCALE
    img = np.zeros(shape)
    # nuclei ~ 7-10 µm across: 14-20 px in-plane radius, 3.5-5 slices axially
    centres = _place_centres(
        g,
        n,
        np.array([5.0, 16.0, 16.0]),
        np.array([z - 5.0, h - 16.0, w - 16.0]),
        np.array([9.0, 34.0, 34.0]),
    )
    for c in centres:
        r_xy = g.uniform(3.5, 5.0)  # µm
        radii = np.array(
            [r_xy * g.uniform(0.8, 1.0) / sz, r_xy / sy, r_xy * g.uniform(0.7, 1.0) / sy]
        )
        half = np.ceil(radii * 1.6 + 2).astype(int)
        lo = np.maximum(np.floor(c).astype(int) - half, 0)
        hi = np.minimum(np.floor(c).astype(int) + half + 1, shape)
        grid = list(np.mgrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(float))
        brightness = g.uniform(700, 2200)
        # axial blur is ~3x the lateral one, in µm
        patch = _nucleus(g, grid, c, radii, np.array([1.2, 2.0, 2.0])) * brightness
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        img[sl] = np.maximum(img[sl], patch)
    zz = np.arange(z)[:, None, None]
    background = 100 + 30 * np.exp(-((zz - z / 2) ** 2) / (z * z / 4)) * np.ones(shape)
    return _finish(img, g, background)
