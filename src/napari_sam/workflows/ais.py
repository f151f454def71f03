"""Automatic instance segmentation (AIS) with micro-sam's instance decoder.

Instead of prompting SAM with a grid of ~1,000 points
(:mod:`napari_sam.predictors.automatic`), AIS runs one convolutional decoder
(:class:`~napari_sam.model.decoders.instance.InstanceDecoder`) on the image
embedding SAM's encoder already computed, and cuts the objects out of its three
per-pixel maps with a seeded watershed:

1. the **foreground** map is smoothed (Gaussian, ``foreground_smoothing``) and
   thresholded (``> foreground_threshold``): the pixels that belong to some object;
2. the **centre-distance** and **boundary-distance** maps are smoothed
   (Gaussian, ``distance_smoothing``); a pixel is a seed where both are small
   (``< center_distance_threshold`` and ``< boundary_distance_threshold``: near
   an object's centre *and* far from its edge) inside the foreground; touching
   seed pixels (8-neighbourhood in 2D) form one seed per object;
3. a seeded watershed on the boundary-distance map (4-neighbourhood), limited to
   the foreground, grows each seed to its object; foreground not reached from
   any seed stays background;
4. objects smaller than ``min_size`` pixels are removed and the rest numbered
   ``1 .. N`` (``uint32``) in the order of their seeds (row by row).

The parameters and their defaults are micro-sam's (``InstanceSegmentationWithDecoder
.generate`` in micro-sam 1.8): see :class:`AISSettings`. Gaussian smoothing here
treats the image border by mirroring and cuts the kernel at 3 sigma, as micro-sam's
does; its watershed orders pixels of equal height differently from scikit-image's,
which can move a handful of boundary pixels.

The embedding comes from :class:`~napari_sam.workflows.embeddings.EmbeddingStore` /
:class:`~napari_sam.workflows.embeddings.DiskCache` when a plane was encoded
before (interactively, by ``napari-sam embed``, or by a grid run): one encoder
pass serves prompts, the grid generator and AIS alike.

:func:`napari_sam.workflows.segment.segment` runs AIS on a 2D image or on each
slice of a stack (``mode="ais"``, or ``"auto"`` with a model that has a decoder).

No napari or Qt here.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.errors import NoDecoderError, SettingsError

if TYPE_CHECKING:
    from napari_sam.predictors.predictor import ImageEmbedding
    from napari_sam.workflows.embeddings import DiskCache, EmbeddingStore

__all__ = [
    "AISSettings",
    "decoder_of",
    "instance_maps",
    "instances_from_maps",
    "no_decoder_error",
    "plane_embedding",
    "segment_plane_steps",
]

#: The stages of one plane, in order (for progress messages).
STAGES = ("encoding", "decoding", "watershed")


@dataclass(frozen=True)
class AISSettings:
    """Post-processing of the decoder's maps; defaults are micro-sam's.

    Attributes
    ----------
    center_distance_threshold : float in [0, 1]
        Seeds are where the (smoothed) distance to the object centre is below
        this. Lower: fewer, more central seeds (touching objects merge more
        easily); higher: more seeds (large objects may split). micro-sam: 0.5.
    boundary_distance_threshold : float in [0, 1]
        ... and where the (smoothed) distance map to the boundary is below this
        (far enough from the edge). micro-sam: 0.5.
    foreground_threshold : float in [0, 1]
        Pixels whose (smoothed) foreground probability is above this belong to
        objects. Lower: objects grow, faint ones appear. micro-sam: 0.5.
    foreground_smoothing : float >= 0
        Gaussian sigma (pixels) applied to the foreground map first (removes
        the decoder's checkerboard artefacts); 0 turns it off. micro-sam: 1.0.
    distance_smoothing : float >= 0
        Gaussian sigma (pixels) applied to both distance maps; 0 turns it off.
        micro-sam: 1.6.
    min_size : int >= 0
        Objects with fewer pixels are removed. micro-sam's ``generate``: 0
        (its napari annotator uses 100).
    """

    # The help of each field is written once, here: the widgets' tooltips are made from it
    # (napari_sam.runtime.settings.field_help).
    center_distance_threshold: float = field(default=0.5, metadata={
        "label": "Centre-distance threshold", "min": 0.0, "max": 1.0,
        "help": "Objects grow from seeds where the distance to the object centre is below this "
        "(0-1); lower gives fewer, more central seeds (touching objects merge more easily), "
        "higher more seeds (large objects may split)."})
    boundary_distance_threshold: float = field(default=0.5, metadata={
        "label": "Boundary-distance threshold", "min": 0.0, "max": 1.0,
        "help": "Seeds must also be far enough from the object's edge: the boundary-distance "
        "map below this (0-1)."})
    foreground_threshold: float = field(default=0.5, metadata={
        "label": "Foreground threshold", "min": 0.0, "max": 1.0,
        "help": "Pixels whose foreground probability is above this (0-1) belong to objects; "
        "lower lets objects grow and faint ones appear."})
    foreground_smoothing: float = field(default=1.0, metadata={
        "label": "Foreground smoothing (px)", "min": 0.0, "max": 50.0,
        "help": "Gaussian sigma in pixels applied to the foreground map first (0: none)."})
    distance_smoothing: float = field(default=1.6, metadata={
        "label": "Distance smoothing (px)", "min": 0.0, "max": 50.0,
        "help": "Gaussian sigma in pixels applied to both distance maps (0: none)."})
    min_size: int = field(default=0, metadata={
        "label": "Minimum size (px)", "min": 0, "max": 10**7,
        "help": "Objects with fewer pixels than this are removed (micro-sam's default 0; its "
        "napari annotator uses 100)."})

    def check(self) -> None:
        """Raise :class:`SettingsError` for a value out of range."""
        for name, value in (
            ("centre-distance threshold", self.center_distance_threshold),
            ("boundary-distance threshold", self.boundary_distance_threshold),
            ("foreground threshold", self.foreground_threshold),
        ):
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise SettingsError(f"The {name} must be a number from 0 to 1, not {value!r}.")
        for name, value in (
            ("foreground smoothing", self.foreground_smoothing),
            ("distance smoothing", self.distance_smoothing),
        ):
            if not _is_number(value) or not 0.0 <= value <= 50.0:
                raise SettingsError(
                    f"The {name} must be a number of pixels from 0 to 50, not {value!r}."
                )
        if (
            not isinstance(self.min_size, (int, np.integer))
            or isinstance(self.min_size, bool)
            or self.min_size < 0
        ):
            raise SettingsError(
                f"The minimum object size must be a whole number >= 0, not {self.min_size!r}."
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


# --------------------------------------------------------------------------- the decoder
def no_decoder_error(name: str | None = None) -> NoDecoderError:
    """The one-sentence error for AIS asked of a model without an instance decoder."""
    from napari_sam.runtime.weights import models_with_decoder

    which = f"The model {name}" if name else "This model"
    return NoDecoderError(
        f"{which} has no instance decoder, so automatic instance segmentation (AIS) is not "
        f"possible; choose one of micro-sam's models {', '.join(models_with_decoder())}, "
        "a checkpoint exported with its decoder, or the grid mode (amg)."
    )


def decoder_of(model: Any, decoder: Any = None) -> Any:
    """The instance decoder to use: ``decoder``, else a LoadedModel's ``decoder``, or None."""
    if decoder is not None:
        return decoder
    return getattr(model, "decoder", None)


def instance_maps(decoder: Any, embedding: ImageEmbedding) -> np.ndarray:
    """Run the instance decoder on one image embedding.

    Parameters
    ----------
    decoder : InstanceDecoder
    embedding : ImageEmbedding
        From the SAM encoder (``(1, 256, 64, 64)`` features, with the sizes of the image).

    Returns
    -------
    ndarray ``(3, H, W)`` float32
        Foreground probability, centre distance and boundary distance at the image's
        original size ``(H, W)``, row by column.

    If the decoder's GPU runs out of memory, the decoder moves to the CPU
    (warning :class:`~napari_sam.errors.DeviceFallbackWarning`).
    """
    from napari_sam.runtime.memory import run_batches

    def decode(batch: Sequence[ImageEmbedding]) -> list[np.ndarray]:
        emb = batch[0]
        maps = decoder(emb.features, emb.input_size, emb.original_size)
        return [maps[0].float().cpu().numpy()]

    (maps,) = run_batches(
        [embedding],
        decode,
        1,
        what="planes",
        to_cpu=lambda: decoder.to("cpu"),
        device=lambda: decoder.device,
    )
    return maps


# --------------------------------------------------------------------------- post-processing
def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing, border mirrored, kernel cut at 3 sigma (micro-sam's convention)."""
    from skimage.filters import gaussian

    return gaussian(image, sigma=sigma, mode="mirror", truncate=3.0, preserve_range=True)


def instances_from_maps(
    foreground: np.ndarray,
    center_distances: np.ndarray,
    boundary_distances: np.ndarray,
    settings: AISSettings | None = None,
) -> tuple[np.ndarray, int]:
    """Objects from the decoder's three maps (seeded watershed; see the module docstring).

    Parameters
    ----------
    foreground, center_distances, boundary_distances : ndarray ``(H, W)`` (or ``(Z, H, W)``)
        The decoder's maps, values in [0, 1], all of one shape.
    settings : AISSettings, optional

    Returns
    -------
    labels : ndarray uint32, the maps' shape
        Background 0, objects ``1 .. N`` in the order of their seeds (row-major).
    n_seeds : int
        Objects found before the ``min_size`` filter.

    Raises
    ------
    SettingsError
        For settings out of range.
    ImageFormatError
        If the maps differ in shape or are not 2D/3D.
    """
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    from napari_sam.errors import ImageFormatError

    settings = settings or AISSettings()
    settings.check()
    maps = [np.asarray(m, dtype=np.float32) for m in (foreground, center_distances,
                                                      boundary_distances)]
    if len({m.shape for m in maps}) != 1 or maps[0].ndim not in (2, 3):
        raise ImageFormatError(
            "The foreground, centre- and boundary-distance maps must be 2D or 3D arrays of one "
            f"shape; got {', '.join(str(m.shape) for m in maps)}."
        )
    fg, center, boundary = maps
    if settings.foreground_smoothing > 0:
        fg = _smooth(fg, settings.foreground_smoothing)
    if settings.distance_smoothing > 0:
        center = _smooth(center, settings.distance_smoothing)
        boundary = _smooth(boundary, settings.distance_smoothing)
    mask = fg > settings.foreground_threshold
    seeds = (center < settings.center_distance_threshold) & (
        boundary < settings.boundary_distance_threshold
    )
    seeds &= mask
    markers = label(seeds, connectivity=seeds.ndim)
    n_seeds = int(markers.max()) if markers.size else 0
    if n_seeds == 0:
        return np.zeros(fg.shape, np.uint32), 0
    labels = watershed(boundary, markers, connectivity=1, mask=mask)
    if settings.min_size > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < settings.min_size
        small[0] = False
        labels[small[labels]] = 0
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.uint32, copy=False), n_seeds


# --------------------------------------------------------------------------- one plane
def plane_embedding(
    model: Any,
    plane: np.ndarray,
    contrast: Sequence[float] | None,
    *,
    rgb: bool = False,
    slice: int | None = None,
    model_id: str | None = None,
    store: EmbeddingStore | None = None,
    disk: DiskCache | None = None,
) -> ImageEmbedding:
    """The SAM embedding of one plane: from the memory store or disk cache, or encoded now.

    Parameters
    ----------
    model : Sam
    plane : ndarray ``(H, W)`` or ``(H, W, 3|4)`` with ``rgb``
    contrast : (low, high) or None
        Contrast limits for :func:`~napari_sam.workflows.image.to_sam_rgb`.
    slice : int or None
        The plane's index in its stack (part of the cache key; None for a 2D image).
    model_id : str, optional
        Identity of the weights (:attr:`~napari_sam.runtime.loader.LoadedModel.model_id`);
        without it nothing is looked up or kept.
    store, disk : optional
        Where embeddings are looked up and kept (the same keys as
        :class:`~napari_sam.workflows.embeddings.StackEmbeddings`).
    """
    from napari_sam.predictors.predictor import embed_images
    from napari_sam.runtime.files import content_hash
    from napari_sam.workflows.embeddings import EmbeddingKey, model_tag
    from napari_sam.workflows.image import to_sam_rgb

    key = None
    lims = None if contrast is None else (float(contrast[0]), float(contrast[1]))
    if model_id is not None and (store is not None or disk is not None):
        key = EmbeddingKey(content_hash(plane), slice, model_tag(model, model_id), lims)
        emb = store.get(key) if store is not None else None
        if emb is None and disk is not None:
            emb = disk.get(key)
            if emb is not None and store is not None:
                store.put(key, emb)
        if emb is not None:
            return emb
    (emb,) = embed_images(model, [to_sam_rgb(plane, lims, rgb=rgb)], batch_size=1)
    if key is not None:
        if store is not None:
            store.put(key, emb)
        if disk is not None:
            disk.put(key, emb)
    return emb


def segment_plane_steps(
    model: Any,
    decoder: Any,
    plane: np.ndarray,
    contrast: Sequence[float] | None,
    settings: AISSettings,
    *,
    rgb: bool = False,
    slice: int | None = None,
    model_id: str | None = None,
    store: EmbeddingStore | None = None,
    disk: DiskCache | None = None,
) -> Generator[str, None, tuple[np.ndarray, int]]:
    """AIS of one plane, step by step.

    Yields the name of each stage (:data:`STAGES`) before running it, so that a
    caller can report progress and stop between stages (close the generator).

    Returns
    -------
    labels : ndarray ``(H, W)`` uint32
        Objects ``1 .. N``.
    n_seeds : int
        Objects found before the size filter.
    """
    yield STAGES[0]
    emb = plane_embedding(
        model, plane, contrast, rgb=rgb, slice=slice, model_id=model_id, store=store, disk=disk
    )
    yield STAGES[1]
    maps = instance_maps(decoder, emb)
    yield STAGES[2]
    return instances_from_maps(maps[0], maps[1], maps[2], settings)
