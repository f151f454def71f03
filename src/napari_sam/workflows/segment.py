"""Automatic segmentation of a 2D image or of every slice of a 3D stack.

Two modes (``mode=``):

- ``"amg"``: SAM's automatic mask generator, prompted with a grid of points
  (steps 1-3 below); works with every SAM model.
- ``"ais"``: automatic instance segmentation with micro-sam's instance decoder
  (:mod:`napari_sam.workflows.ais`): one encoder and one decoder pass per plane,
  then a seeded watershed; needs a model with a decoder (micro-sam's models).
- ``"auto"`` (default): ``"ais"`` when the model has a decoder, else ``"amg"``.

Step 4 (ids per slice, linking) is the same for both.

The logic that the ``napari-sam segment`` command and the napari widget
"Automatic segmentation (SAM)" share:

1. Each plane is converted to SAM's 8-bit RGB with the given contrast limits
   (:func:`~napari_sam.workflows.image.to_sam_rgb`; by default the limits napari gives a
   newly opened image, i.e. its minimum and maximum).
2. :class:`~napari_sam.predictors.automatic.SamAutomaticMaskGenerator` proposes masks
   (settings: :class:`AutoSettings`).
3. Masks larger than ``max_area_fraction`` of the plane (SAM often proposes the
   whole background as one "object") and smaller than ``min_area`` pixels are
   dropped; the rest is painted into a ``uint32`` label plane, larger objects
   first so that small objects lying on them stay visible
   (:func:`~napari_sam.workflows.labels.records_to_labels`).
4. In a stack, every slice's objects get their own ids (unique in the stack),
   or, with ``link_slices``, :func:`link_slices` gives an object the same id in
   consecutive slices.

Linking rule (:func:`link_slices`)
----------------------------------
Slices are visited from the first to the last. Each object of slice ``z`` is
compared with the objects of slice ``z - 1`` (after their ids were decided) by
the intersection over union (IoU) of their pixels. All pairs with
``IoU >= iou_threshold`` are sorted by IoU, highest first, and matched
greedily, one to one: a pair is taken if neither object is matched yet, and the
object of slice ``z`` takes the id of its partner. Objects left without a
partner start a new id. Ids are numbered ``1, 2, ...`` in order of first
appearance. An object missing from one slice is therefore a new object after
the gap, and of two objects that split from one, the one overlapping more keeps
the id.

Progress and cancellation follow :mod:`napari_sam.predictors.automatic`:
:func:`segment_iter` is a generator of :class:`SegmentProgress` (close it to
stop) whose return value is the :class:`SegmentationResult`; :func:`segment`
takes ``progress`` / ``should_cancel`` callables.

No napari or Qt here.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from napari_sam.errors import SettingsError
from napari_sam.runtime.progress import CancelCheck, Progress, ProgressCallback, drive
from napari_sam.workflows.ais import (
    STAGES,
    AISSettings,
    decoder_of,
    no_decoder_error,
    segment_plane_steps,
)
from napari_sam.workflows.image import ImageLayout, get_plane, stack_layout, to_sam_rgb
from napari_sam.workflows.linking import SliceLinker, overlap_pairs, plane_areas
from napari_sam.workflows.spill import labels_into
from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
from napari_sam.workflows.tiling import Tiling

__all__ = [
    "MODES",
    "SAM2_REFUSAL",
    "AISSettings",
    "AutoSettings",
    "SegmentProgress",
    "SegmentationResult",
    "link_slices",
    "refuse_sam2",
    "resolve_mode",
    "segment",
    "segment_instances",
    "segment_iter",
]

#: Automatic segmentation modes: ``"auto"`` (AIS if the model has a decoder, else the
#: grid), ``"ais"`` (instance decoder), ``"amg"`` (grid of point prompts).
MODES = ("auto", "ais", "amg")


def resolve_mode(mode: str, model: Any = None, decoder: Any = None) -> str:
    """``"ais"`` or ``"amg"``: what ``mode`` means for a model (and decoder).

    ``model`` may be a :class:`~napari_sam.runtime.loader.LoadedModel` (its
    ``decoder`` counts) or a bare SAM with ``decoder`` given separately.

    Raises
    ------
    SettingsError
        For an unknown mode.
    NoDecoderError
        For ``"ais"`` with a model that has no instance decoder (the sentence names
        the models that have one).
    """
    name = mode.strip().lower() if isinstance(mode, str) else mode
    if name not in MODES:
        raise SettingsError(
            f"The automatic segmentation mode must be one of {', '.join(MODES)}, not {mode!r}."
        )
    has_decoder = decoder_of(model, decoder) is not None
    if name == "auto":
        return "ais" if has_decoder else "amg"
    if name == "ais" and not has_decoder:
        raise no_decoder_error(getattr(model, "name", None))
    return name


#: Why automatic segmentation refuses a SAM 2.1 model (one sentence).
SAM2_REFUSAL = (
    "Automatic segmentation needs a SAM (ViT) model; SAM 2.1 models follow clicked objects "
    "through a stack: choose vit_b_lm or vit_t."
)


def refuse_sam2(model: Any) -> None:
    """Raise :class:`SettingsError` if ``model`` (a LoadedModel or a bare model) is SAM 2.1.

    Both automatic modes need a SAM (ViT) model: the grid generator prompts SAM 1's
    mask decoder, and the AIS decoders were trained on SAM 1 encoder features.
    """
    from napari_sam.model.sam2 import Sam2

    if isinstance(getattr(model, "sam", model), Sam2):
        raise SettingsError(SAM2_REFUSAL)


@dataclass(frozen=True)
class AutoSettings:
    """Settings of automatic segmentation.

    The defaults suit fluorescence microscopy (nuclei, cells): slightly more
    permissive thresholds than SAM's defaults for photographs (0.88 and 0.95),
    small specks and whole-background masks dropped.

    Attributes
    ----------
    points_per_side : int
        The grid of ``points_per_side**2`` point prompts per plane (and crop).
        Objects smaller than the grid spacing may be missed; more points find
        smaller objects and take longer (time grows with the square).
    pred_iou_thresh : float in [0, 1]
        Keep masks whose predicted quality (SAM's own IoU estimate) is above this.
    stability_score_thresh : float in [0, 1]
        Keep masks that barely change when SAM's mask threshold is moved
        (stability score at least this).
    box_nms_thresh : float in [0, 1]
        Of two masks whose bounding boxes overlap more than this (IoU), keep
        the better one.
    crop_n_layers : int >= 0
        Also run on overlapping crops (layer ``i`` has ``(2**i)**2`` crops):
        finds smaller objects in large images, multiplies the time.
    min_area : int >= 0
        Objects smaller than this (pixels) are dropped; holes and islands
        smaller than this are removed from each mask.
    max_area_fraction : float in (0, 1]
        Masks covering more than this fraction of the plane are dropped.
    points_per_batch : int or None
        Prompts decoded at once (memory vs. speed; no effect on the result).
        ``None`` (default): as many as fit in a GPU's free memory, 64 on a CPU.
    link_slices : bool
        In a stack, give an object one id through consecutive slices (see
        :func:`link_slices`).
    link_iou : float in (0, 1]
        The IoU an object must share with one in the previous slice to keep its id.
    """

    # The help of each field is written once, here: the widgets' tooltips and the
    # command line's help are made from it (napari_sam.runtime.settings.field_help).
    points_per_side: int = field(default=32, metadata={
        "label": "Points per side", "min": 1, "max": 256,
        "help": "SAM is prompted with an N x N grid of points per image; objects smaller than "
        "the grid spacing can be missed, and the time grows with N squared."})
    pred_iou_thresh: float = field(default=0.86, metadata={
        "label": "Predicted-IoU threshold", "min": 0.0, "max": 1.0,
        "help": "Keep masks whose quality, as SAM estimates it, is above this (0-1); lower "
        "gives more objects, more of them poor."})
    stability_score_thresh: float = field(default=0.92, metadata={
        "label": "Stability threshold", "min": 0.0, "max": 1.0,
        "help": "Keep masks whose outline barely changes when SAM's mask threshold is moved "
        "(stability score at least this, 0-1)."})
    box_nms_thresh: float = field(default=0.7, metadata={
        "label": "Box NMS threshold", "min": 0.0, "max": 1.0,
        "help": "Of two masks whose bounding boxes overlap more than this (IoU, 0-1), keep "
        "the better one."})
    crop_n_layers: int = field(default=0, metadata={
        "label": "Crop layers", "min": 0, "max": 3,
        "help": "Also look at N levels of overlapping zoomed-in crops: finds smaller objects "
        "in large images, takes several times longer."})
    min_area: int = field(default=25, metadata={
        "label": "Minimum area (px)", "min": 0, "max": 10**7,
        "help": "Drop objects smaller than this many pixels, and fill holes smaller than that."})
    max_area_fraction: float = field(default=0.5, metadata={
        "label": "Maximum area (fraction)", "min": 0.01, "max": 1.0,
        "help": "Drop masks covering more than this fraction of the image, such as the "
        "background (1 keeps all)."})
    points_per_batch: int | None = field(default=None, metadata={
        "label": "Prompts per batch",
        "help": "Prompts decoded at once (memory against speed; no effect on the result); "
        "none: as many as fit in a GPU's free memory, 64 on a CPU."})
    link_slices: bool = field(default=False, metadata={
        "label": "Link objects across slices",
        "help": "Give an object the same label in every slice it spans (matched by overlap "
        "with the previous slice); otherwise each slice's objects get their own labels."})
    link_iou: float = field(default=0.3, metadata={
        "label": "Linking IoU threshold", "min": 0.01, "max": 1.0,
        "help": "The overlap (intersection over union, 0-1) an object needs with one in the "
        "previous slice to keep its label."})

    def check(self) -> None:
        """Raise :class:`SettingsError` for a value out of range."""
        _int_at_least("points per side", self.points_per_side, 1)
        if self.points_per_batch is not None:
            _int_at_least("points per batch", self.points_per_batch, 1)
        _int_at_least("crop layers", self.crop_n_layers, 0)
        _int_at_least("minimum object area", self.min_area, 0)
        for name, value in (
            ("predicted-IoU threshold", self.pred_iou_thresh),
            ("stability-score threshold", self.stability_score_thresh),
            ("box NMS threshold", self.box_nms_thresh),
        ):
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise SettingsError(
                    f"The {name} must be a number from 0 to 1, not {value!r}."
                )
        for name, value in (
            ("maximum area fraction", self.max_area_fraction),
            ("slice-linking IoU threshold", self.link_iou),
        ):
            if not _is_number(value) or not 0.0 < value <= 1.0:
                raise SettingsError(
                    f"The {name} must be a number above 0 and at most 1, not {value!r}."
                )

    def generator_kwargs(self) -> dict[str, Any]:
        """Arguments for :class:`~napari_sam.predictors.automatic.SamAutomaticMaskGenerator`."""
        return {
            "points_per_side": int(self.points_per_side),
            "points_per_batch": (
                None if self.points_per_batch is None else int(self.points_per_batch)
            ),
            "pred_iou_thresh": float(self.pred_iou_thresh),
            "stability_score_thresh": float(self.stability_score_thresh),
            "box_nms_thresh": float(self.box_nms_thresh),
            "crop_n_layers": int(self.crop_n_layers),
            "min_mask_region_area": int(self.min_area),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _int_at_least(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise SettingsError(
            f"The {name} must be a whole number >= {minimum}, not {value!r}."
        )


@dataclass(frozen=True)
class SegmentProgress(Progress):
    """Progress of :func:`segment_iter`.

    ``done`` of ``total`` steps (SAM's encodings and decoder batches over all
    planes); ``stage`` says what runs now (``"slice 3: decoding prompts"``);
    ``plane`` is the position of the current plane in the list of planes
    (``0 .. n_planes - 1``) and ``slice`` its index in the stack (``None`` for
    a 2D image).
    """

    plane: int = 0
    n_planes: int = 1
    slice: int | None = None


@dataclass
class SegmentationResult:
    """What :func:`segment_iter` found.

    Attributes
    ----------
    labels : ndarray ``uint32``
        ``(Y, X)`` for a 2D image; ``(Z, Y, X)`` for a stack, with zeros in the
        slices that were not segmented.
    slices : list of int or None
        The segmented slices of a stack (``None`` for a 2D image).
    scores : dict ``(slice or None, label) -> {"predicted_iou", "stability_score"}``
        SAM's scores of each object's mask (grid mode; empty for AIS).
    n_masks : int
        Masks SAM proposed (before the area filters and overlaps); for AIS, the
        objects the watershed found before the size filter.
    mode : str
        ``"amg"`` (grid of point prompts) or ``"ais"`` (instance decoder).
    """

    labels: np.ndarray
    slices: list[int] | None
    scores: dict[tuple[int | None, int], dict[str, float]] = field(default_factory=dict)
    n_masks: int = 0
    mode: str = "amg"

    @property
    def n_objects(self) -> int:
        """Distinct object ids in :attr:`labels` (counted plane by plane: a label
        image on disk, e.g. memory-mapped, is never read whole)."""
        labels = self.labels
        if labels.ndim <= 2:
            return int(np.count_nonzero(np.unique(labels)))
        ids: set[int] = set()
        for index in np.ndindex(*labels.shape[:-2]):
            ids.update(np.unique(labels[index]).tolist())
        ids.discard(0)
        return len(ids)


def segment_iter(
    model: Any,
    data: Any,
    *,
    rgb: bool = False,
    contrast_limits: Sequence[float] | None = None,
    settings: AutoSettings | None = None,
    slices: Sequence[int] | None = None,
    tiling: Tiling | TiledEmbeddings | str | None = "auto",
    mode: str = "auto",
    ais_settings: AISSettings | None = None,
    decoder: Any = None,
    store: Any = None,
    disk: Any = None,
    model_id: str | None = None,
    out: np.ndarray | None = None,
) -> Generator[SegmentProgress, None, SegmentationResult]:
    """Segment every object of a 2D image or of (some) slices of a 3D stack.

    Parameters
    ----------
    model : Sam or LoadedModel
        The SAM model (any device); a :class:`~napari_sam.runtime.loader.LoadedModel`
        brings its instance decoder and its weights' identity (``model_id``).
    data : array-like
        ``(Y, X)``, ``(Y, X, 3|4)`` with ``rgb``, ``(Z, Y, X)``, or a stack of
        colour planes ``(Z, Y, X, 3|4)`` with ``rgb``; numpy, dask or zarr (read
        one plane at a time).
    rgb : bool
        The last axis holds colour channels.
    contrast_limits : (low, high), optional
        Mapped to black and white for SAM; default: the limits napari gives a
        newly opened image (:func:`napari_sam.workflows.embeddings.default_contrast_limits`).
    settings : AutoSettings, optional
        Grid-mode settings; ``link_slices`` and ``link_iou`` apply to both modes.
    slices : sequence of int, optional
        For a stack, the slices to segment (default: all).
    tiling : Tiling, "auto", "on", "off", None or TiledEmbeddings
        Large planes are segmented tile by tile (default ``"auto"``: planes
        whose longest side exceeds 2048 pixels; see
        :mod:`napari_sam.workflows.tiling` and
        :mod:`napari_sam.workflows.tiled_automatic`). ``points_per_side`` is
        then per tile, and ``max_area_fraction`` relative to a tile's window.
        A :class:`~napari_sam.workflows.tiled_embeddings.TiledEmbeddings` of
        ``data`` (e.g. the interactive session's) is used with its tiles,
        caches and contrast (``contrast_limits`` is then ignored). AIS on
        tiled planes stitches each tile's decoder maps (inner regions) and
        runs one watershed over the whole plane, so border objects are whole.
    mode : ``"auto"``, ``"ais"`` or ``"amg"``
        See :func:`resolve_mode` (``"auto"``: AIS when there is a decoder).
    ais_settings : AISSettings, optional
        AIS post-processing (micro-sam's defaults).
    decoder : InstanceDecoder, optional
        The instance decoder, for a bare SAM ``model``.
    store, disk : EmbeddingStore, DiskCache, optional
        AIS looks embeddings up there first and keeps new ones (needs ``model_id``).
    model_id : str, optional
        The weights' identity for the cache keys (default: the LoadedModel's).
    out : ndarray, optional
        A zero-filled ``uint32`` array of the label shape (``(Y, X)`` or
        ``(Z, Y, X)``) to assemble the labels in, e.g. a memory-mapped file
        (:func:`~napari_sam.workflows.spill.labels_on_disk`); slices are linked
        in it, one slice at a time. Default: a new array in memory.

    Returns
    -------
    generator
        Yields :class:`SegmentProgress`; returns :class:`SegmentationResult`.
        Input errors are raised at the call, before the generator starts.

    Raises
    ------
    ImageFormatError, SettingsError, NoDecoderError
        (SettingsError also for a SAM 2.1 model: see :func:`refuse_sam2`.)
    """
    from napari_sam.predictors.automatic import SamAutomaticMaskGenerator

    settings = settings or AutoSettings()
    settings.check()
    refuse_sam2(model)
    mode = resolve_mode(mode, model, decoder)
    if isinstance(ais_settings, Mapping):  # e.g. from a batch recipe (JSON)
        ais_settings = AISSettings(**ais_settings)
    ais_settings = ais_settings or AISSettings()
    if mode == "ais":
        ais_settings.check()
    sam = getattr(model, "sam", model)
    if model_id is None:
        model_id = getattr(model, "model_id", None)
    layout = stack_layout(data.shape, rgb=rgb, dtype=data.dtype)
    if layout.is_stack:
        if slices is None:
            planes: list[int | None] = list(range(layout.n_slices))
        else:
            planes = [int(z) for z in slices]
            bad = [z for z in planes if not 0 <= z < layout.n_slices]
            if bad or not planes:
                raise SettingsError(
                    f"Slice {bad[0] if bad else '(none)'} does not exist; the stack has "
                    f"{layout.n_slices} slices (0 to {layout.n_slices - 1})."
                )
    else:
        planes = [None]
    if contrast_limits is None:
        from napari_sam.workflows.embeddings import default_contrast_limits

        contrast_limits = default_contrast_limits(data)
    contrast = tuple(float(c) for c in contrast_limits)
    if not isinstance(tiling, TiledEmbeddings) and Tiling.coerce(tiling).grid(
        layout.plane_shape
    ) is not None:
        from napari_sam.workflows.embeddings import EmbeddingStore

        tiling = TiledEmbeddings(
            sam, data, model_id=model_id or "automatic", tiling=tiling, rgb=layout.rgb,
            contrast=(contrast[0], contrast[1]),
            store=store if store is not None else EmbeddingStore(max_mb=0),
            disk=disk if model_id is not None else None,
        )
    if isinstance(tiling, TiledEmbeddings) and tiling.shape != layout.spatial_shape:
        raise SettingsError(
            f"The tile embeddings were made for an image of shape {tiling.shape}, "
            f"not {layout.spatial_shape}; make them for this image."
        )
    tiled = isinstance(tiling, TiledEmbeddings) and tiling.is_tiled
    assembly = _Assembly(layout, planes, mode, out)
    if mode == "ais":
        if tiled:
            return _tiled_ais_steps(
                tiling, decoder_of(model, decoder), assembly, settings, ais_settings
            )
        cache = {"model_id": model_id, "store": store, "disk": disk}
        return _ais_steps(
            sam, decoder_of(model, decoder), data, assembly, contrast, settings,
            ais_settings, cache,
        )  # fmt: skip
    if tiled:
        if settings.crop_n_layers > 0:
            raise SettingsError(
                "Crop layers cannot be combined with tiling (tiles already show SAM the image "
                "at full resolution); set crop layers to 0 or turn tiling off."
            )
        return _tiled_segment_steps(tiling, assembly, settings)
    generator = SamAutomaticMaskGenerator(sam, **settings.generator_kwargs())
    return _segment_steps(generator, data, assembly, contrast, settings)


class _Assembly:
    """The label image of the segmented planes, ids offset plane by plane.

    Each plane arrives with its own ids ``1 .. n``; they become
    ``next_id .. next_id + n - 1`` so that every object of the image has its
    own number, and SAM's scores follow their objects.
    """

    def __init__(
        self,
        layout: ImageLayout,
        planes: list[int | None],
        mode: str,
        out: np.ndarray | None = None,
    ) -> None:
        self.layout = layout
        self.planes = planes
        self.mode = mode
        self.labels = labels_into(out, layout.spatial_shape)
        self.scores: dict[tuple[int | None, int], dict[str, float]] = {}
        self.next_id = 1
        self.n_masks = 0

    def place(
        self,
        z: int | None,
        plane: np.ndarray,
        n: int | None = None,
        scores: Sequence[tuple[int, dict[str, float]]] = (),
    ) -> None:
        """Put ``plane`` (ids ``1 .. n``; ``n`` default: its largest id) at slice ``z``;
        ``scores``: ``(id in the plane, scores)`` pairs."""
        n = (int(plane.max()) if plane.size else 0) if n is None else n
        if n:
            plane[plane > 0] += np.uint32(self.next_id - 1)
        for local, values in scores:
            self.scores[(z, int(local) + self.next_id - 1)] = values
        self.next_id += n
        if z is None:
            self.labels[...] = plane
        else:
            self.labels[z] = plane

    def finish(
        self, settings: AutoSettings, total: int
    ) -> Generator[SegmentProgress, None, SegmentationResult]:
        """Link the slices of a stack (if asked) and return the result."""
        labels, scores, planes = self.labels, self.scores, self.planes
        if self.layout.is_stack and settings.link_slices:
            yield SegmentProgress(
                total, total, "linking slices", "steps", len(planes) - 1, len(planes)
            )
            segmented = sorted(int(z) for z in planes)
            labels, mapping = link_slices(
                labels, settings.link_iou, slices=segmented, out=labels
            )
            scores = {(z, mapping[(z, lab)]): v for (z, lab), v in scores.items()}
        return SegmentationResult(
            labels=labels,
            slices=None if not self.layout.is_stack else [int(z) for z in planes],
            scores=scores,
            n_masks=self.n_masks,
            mode=self.mode,
        )


def _ais_steps(
    sam: Any,
    decoder: Any,
    data: Any,
    out: _Assembly,
    contrast: tuple[float, ...],
    settings: AutoSettings,
    ais: AISSettings,
    cache: dict[str, Any],
) -> Generator[SegmentProgress, None, SegmentationResult]:
    layout, planes = out.layout, out.planes
    per_plane = len(STAGES)
    total = per_plane * len(planes)
    for i, z in enumerate(planes):
        steps = segment_plane_steps(
            sam, decoder, get_plane(data, layout, z), contrast, ais, rgb=layout.rgb, slice=z,
            **cache,
        )
        try:
            j = 0
            while True:
                stage = next(steps)
                stage = stage if z is None else f"slice {z}: {stage}"
                yield SegmentProgress(i * per_plane + j, total, stage, "steps", i, len(planes), z)
                j += 1
        except StopIteration as stop:
            plane, found = stop.value
        finally:
            steps.close()
        out.n_masks += found
        out.place(z, plane)
    return (yield from out.finish(settings, total))


def _tiled_ais_steps(
    embeddings: TiledEmbeddings,
    decoder: Any,
    out: _Assembly,
    settings: AutoSettings,
    ais: AISSettings,
) -> Generator[SegmentProgress, None, SegmentationResult]:
    """:func:`_ais_steps` for tiled planes.

    Each tile's embedding (from ``embeddings``: cached, or encoded now) goes
    through the instance decoder over the tile's outer window; the inner
    regions are stitched into full-plane maps
    (:func:`~napari_sam.workflows.tiled_automatic.stitch_tile_maps_iter`) and
    one seeded watershed runs over the whole plane, so an object on a tile
    border is one object. Progress counts tiles, plus one step per plane for
    the watershed.
    """
    from napari_sam.workflows.ais import instance_maps, instances_from_maps
    from napari_sam.workflows.tiled_automatic import stitch_tile_maps_iter

    planes = out.planes
    n_tiles = len(embeddings.grid)
    per_plane = n_tiles + 1
    total = per_plane * len(planes)
    for i, z in enumerate(planes):
        def produce(tile: Any, z: int | None = z) -> np.ndarray:
            return instance_maps(decoder, embeddings.get(z, tile))

        steps = stitch_tile_maps_iter(embeddings.grid, produce)
        prefix = "" if z is None else f"slice {z}: "
        try:
            while True:
                event = next(steps)
                yield SegmentProgress(
                    i * per_plane + event.done, total, f"{prefix}decoding tiles", "steps",
                    i, len(planes), z,
                )
        except StopIteration as stop:
            maps = stop.value
        finally:
            steps.close()
        yield SegmentProgress(
            i * per_plane + n_tiles, total, f"{prefix}watershed", "steps", i, len(planes), z
        )
        plane, found = instances_from_maps(maps[0], maps[1], maps[2], ais)
        del maps
        out.n_masks += found
        out.place(z, plane)
    return (yield from out.finish(settings, total))


def _plane_events(
    steps: Generator[Any, None, Any], i: int, z: int | None, n_planes: int, sizes: list[int]
) -> Generator[SegmentProgress, None, Any]:
    """Forward a plane's progress events as steps of the whole run; returns its result.

    ``sizes`` holds ``[steps per plane, total]`` once the first event told them.
    """
    try:
        while True:
            event = next(steps)
            if not sizes:
                sizes += [event.total, event.total * n_planes]
            stage = event.stage if z is None else f"slice {z}: {event.stage}"
            yield SegmentProgress(
                i * sizes[0] + event.done, sizes[1], stage, "steps", i, n_planes, z
            )
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()


def _segment_steps(
    generator: Any,
    data: Any,
    out: _Assembly,
    contrast: tuple[float, ...],
    settings: AutoSettings,
) -> Generator[SegmentProgress, None, SegmentationResult]:
    layout, planes = out.layout, out.planes
    h, w = layout.plane_shape
    sizes: list[int] = []
    max_area = settings.max_area_fraction * h * w
    for i, z in enumerate(planes):
        image = to_sam_rgb(get_plane(data, layout, z), contrast, rgb=layout.rgb)
        records = yield from _plane_events(generator.generate_iter(image), i, z, len(planes), sizes)
        out.n_masks += len(records)
        records = [r for r in records if r["area"] <= max_area]
        if records:
            from napari_sam.workflows.labels import records_to_labels

            plane, ids = records_to_labels(
                records, (h, w), min_area=settings.min_area, return_ids=True
            )
        else:
            plane, ids = np.zeros((h, w), np.uint32), np.zeros(0, np.int64)
        scores = [
            (int(lab), {
                "predicted_iou": float(rec["predicted_iou"]),
                "stability_score": float(rec["stability_score"]),
            })
            for rec, lab in zip(records, ids)
            if lab > 0
        ]  # fmt: skip
        out.place(z, plane, scores=scores)
    return (yield from out.finish(settings, sizes[1] if sizes else 0))


def _tiled_segment_steps(
    embeddings: TiledEmbeddings,
    out: _Assembly,
    settings: AutoSettings,
) -> Generator[SegmentProgress, None, SegmentationResult]:
    """:func:`_segment_steps` for tiled planes (:func:`~.tiled_automatic.tiled_amg_plane`)."""
    from napari_sam.workflows.tiled_automatic import tiled_amg_plane

    planes = out.planes
    sizes: list[int] = []
    for i, z in enumerate(planes):
        steps = tiled_amg_plane(
            embeddings, z, settings.generator_kwargs(),
            max_area_fraction=settings.max_area_fraction, min_area=settings.min_area,
        )  # fmt: skip
        found = yield from _plane_events(steps, i, z, len(planes), sizes)
        out.n_masks += found.n_masks
        n = len(found.predicted_iou)
        scores = [
            (k + 1, {
                "predicted_iou": float(found.predicted_iou[k]),
                "stability_score": float(found.stability_score[k]),
            })
            for k in range(n)
        ]  # fmt: skip
        out.place(z, found.labels, n=n, scores=scores)
    return (yield from out.finish(settings, sizes[1] if sizes else 0))


def segment(
    model: Any,
    data: Any,
    *,
    rgb: bool = False,
    contrast_limits: Sequence[float] | None = None,
    settings: AutoSettings | None = None,
    slices: Sequence[int] | None = None,
    tiling: Tiling | TiledEmbeddings | str | None = "auto",
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    mode: str = "auto",
    ais_settings: AISSettings | None = None,
    decoder: Any = None,
    store: Any = None,
    disk: Any = None,
    model_id: str | None = None,
    out: np.ndarray | None = None,
) -> SegmentationResult:
    """Like :func:`segment_iter`, run to the end.

    ``progress(event)`` is called with each :class:`SegmentProgress`;
    when ``should_cancel()`` returns True, the work stops and
    :class:`Cancelled` is raised.
    """
    steps = segment_iter(
        model,
        data,
        rgb=rgb,
        contrast_limits=contrast_limits,
        settings=settings,
        slices=slices,
        tiling=tiling,
        mode=mode,
        ais_settings=ais_settings,
        decoder=decoder,
        store=store,
        disk=disk,
        model_id=model_id,
        out=out,
    )
    return drive(steps, progress, should_cancel, cancelled="Automatic segmentation was cancelled.")


def segment_instances(model: Any, data: Any, **kwargs: Any) -> SegmentationResult:
    """Automatic instance segmentation (AIS) of a 2D image or of each slice of a stack.

    :func:`segment` with ``mode="ais"``: ``model`` is a
    :class:`~napari_sam.runtime.loader.LoadedModel` with a decoder (e.g.
    ``napari_sam.load("vit_b_lm")``), or a SAM with ``decoder=``; the other
    keyword arguments are :func:`segment`'s (``ais_settings``, ``contrast_limits``,
    ``slices``, ``settings`` for slice linking, ``store``/``disk``, ``progress``,
    ``should_cancel``)::

        model = napari_sam.load("vit_b_lm")
        result = napari_sam.segment_instances(model, stack)   # result.labels: (Z, Y, X) uint32

    Raises
    ------
    NoDecoderError
        If the model has no instance decoder.
    """
    return segment(model, data, mode="ais", **kwargs)


# ============================================================================= linking
def link_slices(
    labels: np.ndarray,
    iou_threshold: float = 0.3,
    *,
    slices: Sequence[int] | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[tuple[int, int], int]]:
    """Give objects that continue from one slice to the next the same id.

    Parameters
    ----------
    labels : ndarray ``(Z, Y, X)`` of non-negative integers
        Objects of each slice (an id may be reused in other slices; every
        ``(slice, id)`` is a separate object here).
    iou_threshold : float in (0, 1]
        Least IoU with an object of the previous slice to take its id.
    slices : sequence of int, optional
        Only these slices are linked (in increasing order; a slice is compared
        with the previous one in this list); the others are left at 0.
    out : ndarray ``(Z, Y, X)`` uint32, optional
        Where to write the linked ids (default a new array); may be ``labels``
        itself (each slice is read before it is written), e.g. labels on disk.

    Returns
    -------
    linked : ndarray ``(Z, Y, X)`` uint32
        Ids ``1..N`` in order of first appearance (slice, then old id).
    mapping : dict ``(slice, old id) -> new id``

    The rule (greedy IoU matching against the previous slice) is described in
    the module docstring.
    """
    arr = np.asarray(labels)
    if arr.ndim != 3 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise SettingsError(
            f"Linking needs a 3D (Z, Y, X) integer label stack; got {arr.dtype} of shape "
            f"{arr.shape}."
        )
    if not _is_number(iou_threshold) or not 0.0 < iou_threshold <= 1.0:
        raise SettingsError(
            f"The slice-linking IoU threshold must be above 0 and at most 1, not {iou_threshold!r}."
        )
    zs = list(range(arr.shape[0])) if slices is None else sorted(int(z) for z in slices)
    given = out is not None
    out = labels_into(out, arr.shape)
    if given:  # the slices not linked are 0, as in a new array
        for z in sorted(set(range(arr.shape[0])) - set(zs)):
            out[z] = 0
    mapping: dict[tuple[int, int], int] = {}
    linker = SliceLinker()
    prev: np.ndarray | None = None
    prev_areas: dict[int, int] = {}
    for z in zs:
        plane = np.array(arr[z])  # a copy: ``out`` may be ``labels``
        areas = plane_areas(plane)
        pairs = [] if prev is None else overlap_pairs(prev, plane, iou_threshold, prev_areas, areas)
        new_of = linker.add(areas, pairs)
        if areas:
            lut = np.zeros(max(areas) + 1, dtype=np.uint32)
            for c, new in new_of.items():
                lut[c] = new
                mapping[(z, c)] = new
            out[z] = lut[plane]
        else:
            out[z] = 0
        prev, prev_areas = plane, areas
    return out, mapping
