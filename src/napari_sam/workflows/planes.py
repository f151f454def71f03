"""Images with any number of leading axes (T, Z, ...) as the 2D planes SAM segments.

SAM segments one 2D plane at a time: the plane the viewer shows. An image is
described here by its **label shape** ``(*leading, H, W)``: the image's shape
without its channel axis (an explicit ``channel_axis``, or the colour axis of
an RGB image). The last two axes are the plane (rows, columns); every other
axis is a *leading* axis, and a plane is named by its **full leading index**:
``()`` for a 2D image, ``(z,)`` for a stack, ``(t, z)`` for a time-lapse of
stacks. Embeddings (:class:`~napari_sam.workflows.embeddings.EmbeddingKey`),
prompts (:func:`plane_prompts`), previews and labels are all keyed by that
index, and a label image has exactly the label shape (:meth:`PlaneGeometry.new_labels`).

:func:`plane_geometry` checks an image's shape and says which axes are which;
:class:`ImagePlanes` reads one plane at a time (a dask or zarr array is read
plane by plane, never as a whole), converts it to SAM's RGB input (contrast
limits, 1–3 channels; :mod:`napari_sam.workflows.channels`) and keys its
embedding. :class:`AxisEmbeddings` and :func:`propagate_along` run the stack
propagation of :mod:`napari_sam.workflows.propagation` along any leading axis
(z or t) at fixed positions of the others, through a view that copies nothing;
:func:`plan_write_along` writes the result into the full label array.

Axes are numbered as in the image's data (napari's layer axes: an RGB layer's
colour axis is not a layer axis; an explicit channel axis is). napari speaks
``(row, col)``; SAM ``(x, y)``: prompts are flipped once, in
:func:`~napari_sam.workflows.prompts.rows_cols_to_xy`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.errors import ImageFormatError, PropagationError
from napari_sam.runtime.files import content_hash
from napari_sam.runtime.progress import CancelCheck, ProgressCallback
from napari_sam.workflows.channels import (
    channels_to_rgb,
    check_channel_arrays,
    check_channels,
    check_contrasts,
    flat_contrast,
)
from napari_sam.workflows.embeddings import (
    DiskCache,
    EmbeddingKey,
    EmbeddingStore,
    StackEmbeddings,
    default_contrast_limits,
    encode_planes,
    model_tag,
)
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.prompts import (
    MIN_BOX_SIZE,
    SlicePrompts,
    boxes_to_image,
    data_to_world,
    points_to_image,
    world_to_data,
)

if TYPE_CHECKING:
    from napari_sam.predictors.predictor import ImageEmbedding
    from napari_sam.workflows.propagation import PropagationResult, PropagationSettings

__all__ = [
    "AxisEmbeddings",
    "AxisStack",
    "ImagePlanes",
    "PlaneGeometry",
    "displayed_layer_axes",
    "plan_write_along",
    "plane_geometry",
    "plane_prompts",
    "propagate_along",
    "stack_embeddings",
]

#: A last axis with at most this many entries, behind two axes of at least
#: ``_MIN_PLANE_SIZE``, looks like channels rather than a width.
_MAX_CHANNELS_LAST = 4
_MIN_PLANE_SIZE = 16


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class PlaneGeometry:
    """Which axes of an image are leading axes, the plane and channels.

    Attributes
    ----------
    data_shape : tuple of int
        Shape of the image array (of each array, for separate channel arrays).
    channel_axis : int or None
        The axis of ``data_shape`` that holds channels (non-negative), or None.
    rgb : bool
        The last axis of ``data_shape`` holds RGB(A) colours.
    n_channels : int
        Channels to choose from: the length of the channel axis, the number
        of separate channel arrays, or 1 (a grayscale or RGB image).
    """

    data_shape: tuple[int, ...]
    channel_axis: int | None = None
    rgb: bool = False
    n_channels: int = 1

    @property
    def shape(self) -> tuple[int, ...]:
        """The label shape ``(*leading, H, W)``: ``data_shape`` without channel/colour axes."""
        shape = list(self.data_shape[:-1] if self.rgb else self.data_shape)
        if self.channel_axis is not None:
            del shape[self.channel_axis]
        return tuple(shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Sizes of the leading axes (``()`` for a 2D image)."""
        return self.shape[:-2]

    @property
    def n_leading(self) -> int:
        return len(self.shape) - 2

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one plane."""
        return (self.shape[-2], self.shape[-1])

    @property
    def n_planes(self) -> int:
        return int(math.prod(self.leading_shape))

    @property
    def layer_ndim(self) -> int:
        """Axes of the napari layer showing ``data_shape`` (the colour axis is not one)."""
        return len(self.data_shape) - (1 if self.rgb else 0)

    def layer_axis(self, label_axis: int) -> int:
        """The layer (data) axis of label axis ``label_axis`` (skipping the channel axis)."""
        label_axis = int(label_axis) % self.ndim
        if self.channel_axis is not None and label_axis >= self.channel_axis:
            return label_axis + 1
        return label_axis

    def check_index(self, index: Sequence[int] | int | None) -> tuple[int, ...]:
        """``index`` as a tuple of ints, one per leading axis, each inside the image.

        ``None`` is accepted for a 2D image and an int for an image with one
        leading axis.

        Raises
        ------
        ImageFormatError
            For the wrong number of positions or a position outside the image.
        """
        if index is None:
            index = ()
        elif isinstance(index, (int, np.integer)):
            index = (int(index),)
        index = tuple(int(i) for i in index)
        if len(index) != self.n_leading:
            raise ImageFormatError(
                f"A plane of this image is named by {self.n_leading} position"
                f"{'s' if self.n_leading != 1 else ''} (its leading axes have sizes "
                f"{self.leading_shape}); got {index}."
            )
        for i, n in zip(index, self.leading_shape):
            if not 0 <= i < n:
                raise ImageFormatError(
                    f"The plane {index} lies outside the image, whose leading axes have sizes "
                    f"{self.leading_shape}."
                )
        return index

    def indices(self) -> Iterator[tuple[int, ...]]:
        """Every leading index, in C order (the last leading axis fastest)."""
        return (tuple(int(i) for i in idx) for idx in np.ndindex(*self.leading_shape))

    def initial_index(self) -> tuple[int, ...]:
        """The plane napari shows when the image is opened: the middle of each leading axis."""
        return tuple((n - 1) // 2 for n in self.leading_shape)

    def labels_slicer(self, index: Sequence[int] | int | None) -> tuple:
        """``labels[...]`` of plane ``index`` in a label array of :attr:`shape` (a 2D view)."""
        return (*self.check_index(index), slice(None), slice(None))

    def data_slicer(self, index: Sequence[int] | int | None, channel: int | None = None) -> tuple:
        """``data[...]`` of plane ``index`` (and ``channel``, with a channel axis)."""
        index = [*self.check_index(index), slice(None), slice(None)]
        if self.channel_axis is not None:
            if channel is None:
                raise ImageFormatError("Say which channel to read from this multichannel image.")
            index.insert(self.channel_axis, int(channel))
        return tuple(index)

    def line_slicer(self, index: Sequence[int] | int | None, axis: int) -> tuple:
        """``labels[...]`` of the ``(N, H, W)`` stack along leading ``axis`` through ``index``.

        All other leading axes stay at ``index``; for numpy labels the result
        is a view, so writing into it writes into ``labels``.
        """
        index = self.check_index(index)
        axis = self._check_axis(axis)
        line = [slice(None) if j == axis else i for j, i in enumerate(index)]
        return (*line, slice(None), slice(None))

    def new_labels(self, dtype: Any = np.uint32) -> np.ndarray:
        """An empty label array of :attr:`shape` (the image's full shape, no channels)."""
        return np.zeros(self.shape, dtype=dtype)

    def label_scale(self, scale: Sequence[float] | None) -> tuple[float, ...] | None:
        """A layer's ``scale``/``translate`` (one value per layer axis) for the labels.

        Drops the channel axis' entry; an RGB layer's scale has no colour entry.
        """
        if scale is None:
            return None
        values = [float(s) for s in scale]
        if len(values) != self.layer_ndim:
            raise ImageFormatError(
                f"The scale has {len(values)} values but the image layer has "
                f"{self.layer_ndim} axes."
            )
        if self.channel_axis is not None:
            del values[self.channel_axis]
        return tuple(values)

    def index_from_layer_point(self, point: Sequence[float]) -> tuple[int, ...] | None:
        """The leading index of a point in the layer's data coordinates, or None outside.

        ``point`` has one coordinate per layer axis (:attr:`layer_ndim`);
        the channel coordinate is ignored. Rounded as napari slices.
        """
        point = np.asarray(point, dtype=float).ravel()
        if point.size != self.layer_ndim:
            raise ImageFormatError(
                f"A position in this image has {self.layer_ndim} coordinates, got {point.size}."
            )
        coords = [point[self.layer_axis(j)] for j in range(self.n_leading)]
        if not all(np.isfinite(coords)):
            return None
        index = tuple(int(np.round(c)) for c in coords)
        if all(0 <= i < n for i, n in zip(index, self.leading_shape)):
            return index
        return None

    def index_at(
        self, image_matrix: np.ndarray, world_point: Sequence[float]
    ) -> tuple[int, ...] | None:
        """The plane the viewer shows at ``world_point`` (``viewer.dims.point``), or None.

        ``image_matrix`` is the image layer's ``(L+1, L+1)`` data -> world
        matrix (:func:`~napari_sam.workflows.prompts.layer_affine`), with L =
        :attr:`layer_ndim`. None means the viewer is outside the image.
        """
        data = world_to_data(np.asarray(world_point, dtype=float)[None], image_matrix, world_point)
        return self.index_from_layer_point(data[0])

    def _check_axis(self, axis: int) -> int:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise ImageFormatError(f"The axis must be a number, got {axis!r}.")
        if not 0 <= int(axis) < self.n_leading:
            raise ImageFormatError(
                f"Axis {axis} is not a leading axis of this image; objects follow one of "
                f"axes 0 to {self.n_leading - 1} (sizes {self.leading_shape})."
                if self.n_leading
                else "A 2D image has no axis to follow objects along."
            )
        return int(axis)


def displayed_layer_axes(
    displayed: Sequence[int], world_ndim: int, layer_ndim: int
) -> tuple[int, ...]:
    """napari's ``viewer.dims.displayed`` (world axes) as axes of a layer.

    Layers are aligned on their last axes: world axis ``w`` is layer axis
    ``w - (world_ndim - layer_ndim)``. Displayed world axes the layer does not
    have are dropped.
    """
    offset = int(world_ndim) - int(layer_ndim)
    return tuple(int(w) - offset for w in displayed if int(w) - offset >= 0)


def plane_geometry(
    shape: Sequence[int],
    *,
    rgb: bool = False,
    channel_axis: int | None = None,
    n_channels: int | None = None,
    displayed: Sequence[int] | None = None,
    dtype: Any = None,
) -> PlaneGeometry:
    """Check an image's shape and say which axes are leading, plane and channel axes.

    The plane is always the last two axes other than a channel axis (napari's
    default view: Y and X). With ``displayed`` (the layer axes the viewer
    shows, see :func:`displayed_layer_axes`) the viewer must show exactly
    those two, in either order.

    Parameters
    ----------
    shape : sequence of int
        Shape of the image array (of each channel array, with ``n_channels``).
    rgb : bool
        The last axis holds RGB(A) colours (napari's ``layer.rgb``).
    channel_axis : int, optional
        The axis holding channels (negative counts from the end).
    n_channels : int, optional
        Number of separate channel arrays of this shape (napari's channel layers).
    displayed : sequence of int, optional
        The layer axes the viewer shows.
    dtype : dtype-like, optional
        Checked to be a real number type (or bool).

    Raises
    ------
    ImageFormatError
        One sentence each for: a non-numeric dtype; fewer than two plane axes;
        an empty image; an RGB image whose last axis is not 3 or 4 long; a
        channel axis outside the image or on an RGB image; a 3D view or a
        viewer showing other axes than the last two; and an image without
        ``displayed`` whose last axis is so short that it looks like channels
        (no obvious plane pair: e.g. a 5D ``(T, Z, Y, X, C)`` array).
    """
    shape = tuple(int(s) for s in shape)
    if dtype is not None:
        dt = np.dtype(dtype)
        if not (np.issubdtype(dt, np.number) or dt == np.bool_) or np.issubdtype(
            dt, np.complexfloating
        ):
            raise ImageFormatError(
                f"The image has data type {dt}, which is not a real number type; napari-sam "
                "segments images of integers or floats."
            )
    if rgb:
        if channel_axis is not None or n_channels not in (None, 1):
            raise ImageFormatError(
                "An RGB image has its colours in its last axis; it cannot also have channels."
            )
        if len(shape) < 3 or shape[-1] not in (3, 4):
            raise ImageFormatError(
                f"An RGB image needs 3 or 4 colour values in its last axis; this one has shape "
                f"{shape}."
            )
    channels = 1
    if channel_axis is not None:
        if n_channels not in (None, 1):
            raise ImageFormatError(
                "Give channels either as one array with a channel axis or as separate arrays, "
                "not both."
            )
        if isinstance(channel_axis, bool) or not -len(shape) <= int(channel_axis) < len(shape):
            raise ImageFormatError(
                f"The channel axis {channel_axis} does not exist in an image of shape {shape}."
            )
        channel_axis = int(channel_axis) % len(shape)
        channels = shape[channel_axis]
    elif n_channels is not None:
        channels = int(n_channels)
    geometry = PlaneGeometry(shape, channel_axis, bool(rgb), max(1, channels))
    spatial = geometry.shape
    if len(spatial) < 2:
        raise ImageFormatError(
            f"An image of shape {shape} has no 2D plane to segment: it needs at least two "
            "axes besides its channels (rows and columns)."
        )
    if min(shape) < 1:
        raise ImageFormatError(f"The image is empty (shape {shape}).")
    plane_axes = {geometry.layer_axis(len(spatial) - 2), geometry.layer_axis(len(spatial) - 1)}
    if displayed is not None:
        shown = tuple(int(a) for a in displayed)
        if len(shown) != 2:
            raise ImageFormatError(
                f"The viewer shows {len(shown)} axes at once; switch it to 2D view "
                "(napari-sam segments the 2D plane the viewer shows)."
            )
        if set(shown) != plane_axes:
            raise ImageFormatError(
                f"The viewer shows axes {shown} of this image as the plane; napari-sam segments "
                f"the plane of its last two axes {tuple(sorted(plane_axes))} (rows and columns), "
                "so show those with the viewer's roll and transpose buttons."
            )
    elif (
        not rgb
        and channel_axis is None
        and n_channels in (None, 1)
        and len(spatial) >= 3
        and spatial[-1] <= _MAX_CHANNELS_LAST
        and min(spatial[-3], spatial[-2]) >= _MIN_PLANE_SIZE
    ):
        raise ImageFormatError(
            f"An image of shape {shape} has no obvious plane: its last axis has only "
            f"{spatial[-1]} entries, which looks like channels rather than a width; say which "
            f"axis holds the channels (napari: channel_axis={len(shape) - 1}) or, for RGB "
            "colours, open it as an RGB image."
        )
    return geometry


# --------------------------------------------------------------------------- planes
class ImagePlanes:
    """An image of any number of leading axes, read and shown to SAM one plane at a time.

    Parameters
    ----------
    data : array, or sequence of arrays
        The image (numpy, dask, zarr, or anything indexable with a ``shape``);
        a sequence holds one array per channel (napari's channel layers; all
        of the same shape).
    rgb : bool
        The last axis of ``data`` holds RGB(A) colours.
    channel_axis : int, optional
        The axis of ``data`` holding channels.
    channels : sequence of int, optional
        For a multichannel image, the 1–3 channels (counted from 0) mapped to
        SAM's red, green and blue inputs (:mod:`napari_sam.workflows.channels`);
        default all channels when there are at most 3.
    contrast : (low, high), or one (low, high) per chosen channel, optional
        The display range mapped to 0–255 (napari's ``contrast_limits``; per
        channel layer with channels). ``None`` (for the image or for one
        channel): the limits napari gives a newly opened image
        (:func:`~napari_sam.workflows.embeddings.default_contrast_limits`).
    displayed : sequence of int, optional
        The layer axes the viewer shows (checked by :func:`plane_geometry`).

    Raises
    ------
    ImageFormatError
        See :func:`plane_geometry`, and: channels chosen for an image without
        channels, a channel out of range, channel arrays of different shapes,
        more than 3 channels without a choice, contrast limits that do not
        match the chosen channels.
    """

    def __init__(
        self,
        data: Any,
        *,
        rgb: bool = False,
        channel_axis: int | None = None,
        channels: Sequence[int] | int | None = None,
        contrast: Any = None,
        displayed: Sequence[int] | None = None,
    ) -> None:
        if isinstance(data, (list, tuple)):
            arrays = list(data)
            shape = check_channel_arrays(arrays)
            if channel_axis is not None:
                raise ImageFormatError(
                    "Separate channel images have no channel axis; give channel_axis only with "
                    "one array."
                )
            geometry = plane_geometry(
                shape,
                rgb=rgb,
                n_channels=len(arrays),
                displayed=displayed,
                dtype=getattr(arrays[0], "dtype", None),
            )
            self._arrays: list[Any] | None = arrays
            self.data = arrays
        else:
            geometry = plane_geometry(
                getattr(data, "shape", np.shape(data)),
                rgb=rgb,
                channel_axis=channel_axis,
                displayed=displayed,
                dtype=getattr(data, "dtype", None),
            )
            self._arrays = None
            self.data = data
        self.geometry = geometry
        multichannel = self._arrays is not None or geometry.channel_axis is not None
        if multichannel:
            if channels is None:
                if geometry.n_channels > 3:
                    raise ImageFormatError(
                        f"The image has {geometry.n_channels} channels; choose 1 to 3 of them "
                        "for SAM's red, green and blue inputs."
                    )
                channels = list(range(geometry.n_channels))
            self.channels: tuple[int, ...] | None = check_channels(channels, geometry.n_channels)
            limits = check_contrasts(contrast, len(self.channels))
            self.contrasts: tuple[tuple[float, float], ...] = tuple(
                lim if lim is not None else default_contrast_limits(self.channel_data(c))
                for c, lim in zip(self.channels, limits)
            )
        else:
            if channels is not None:
                raise ImageFormatError(
                    "This image has no channel axis, so there are no channels to choose; "
                    "give its channel axis (napari: channel_axis) or its channel layers."
                )
            (limit,) = check_contrasts(None if contrast is None else [contrast], 1)
            self.channels = None
            self.contrasts = (limit if limit is not None else default_contrast_limits(data),)

    # ---------------------------------------------------------------- shape
    @property
    def shape(self) -> tuple[int, ...]:
        """The label shape ``(*leading, H, W)``."""
        return self.geometry.shape

    @property
    def rgb(self) -> bool:
        return self.geometry.rgb

    @property
    def contrast(self) -> tuple[float, ...]:
        """The contrast limits as an embedding key holds them (flat pairs)."""
        return flat_contrast(self.contrasts)

    @property
    def key_channels(self) -> tuple[int, ...] | None:
        """The channels as an embedding key holds them: SAM's input slots the chosen
        channels fill, ``(0, ..., k - 1)``; None without channels.

        The chosen channels' pixels are hashed in slot order, so the key depends on
        what SAM sees, not on where the channels came from: channels 1 and 0 of a
        channel axis and the dock's two channel layers made from them share a key.
        """
        return None if self.channels is None else tuple(range(len(self.channels)))

    def channel_data(self, channel: int) -> Any:
        """The whole array of one channel (lazy for dask/zarr; a view for numpy)."""
        if self._arrays is not None:
            return self._arrays[channel]
        axis = self.geometry.channel_axis
        if axis is None:
            return self.data
        return self.data[(slice(None),) * axis + (int(channel),)]

    def channel_values(self, channel: int, index: tuple[Any, ...]) -> np.ndarray:
        """The values of one channel at ``index`` (integers and slices over the image's axes
        without the channel axis, in data order), reading only those."""
        if self._arrays is not None:
            return np.asarray(self._arrays[channel][index])
        axis = self.geometry.channel_axis
        if axis is None:
            return np.asarray(self.data[index])
        index = tuple(index) + (slice(None),) * max(0, axis - len(index))
        return np.asarray(self.data[(*index[:axis], int(channel), *index[axis:])])

    # ---------------------------------------------------------------- reading
    def raw_plane(self, index: Sequence[int] | int | None) -> np.ndarray:
        """The raw values SAM's input is made from, for plane ``index``.

        ``(H, W)`` for a grayscale image, ``(H, W, 3|4)`` for RGB, and
        ``(k, H, W)`` (the chosen channels, in slot order) for channels. Only
        this plane is read from a lazy array.
        """
        g = self.geometry
        if self.channels is None:
            return np.asarray(self.data[g.data_slicer(index)])
        if self._arrays is not None:
            planes = [np.asarray(self._arrays[c][g.data_slicer(index)]) for c in self.channels]
        else:
            planes = [np.asarray(self.data[g.data_slicer(index, c)]) for c in self.channels]
        return np.stack(planes)

    def sam_image(
        self, index: Sequence[int] | int | None = None, raw: np.ndarray | None = None
    ) -> np.ndarray:
        """Plane ``index`` (or an already read ``raw`` plane) as SAM's ``(H, W, 3)`` uint8 input."""
        if raw is None:
            raw = self.raw_plane(index)
        if self.channels is None:
            return to_sam_rgb(raw, self.contrasts[0], rgb=self.rgb)
        return channels_to_rgb(list(raw), self.contrasts)

    def key(
        self,
        index: Sequence[int] | int | None,
        model_id: str,
        raw: np.ndarray | None = None,
    ) -> EmbeddingKey:
        """The embedding key of plane ``index``: its pixels, full index, model, contrast, channels.

        ``model_id`` is used as given; :meth:`embedding` tags it with the
        encoder precision (:func:`~napari_sam.workflows.embeddings.model_tag`).
        For a grayscale 3D stack this is exactly the key
        :class:`~napari_sam.workflows.embeddings.StackEmbeddings` uses.
        """
        index = self.geometry.check_index(index)
        if raw is None:
            raw = self.raw_plane(index)
        return EmbeddingKey(content_hash(raw), index, model_id, self.contrast, self.key_channels)

    def embedding(
        self,
        model: Any,
        index: Sequence[int] | int | None,
        *,
        model_id: str,
        store: EmbeddingStore | None = None,
        disk: DiskCache | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> tuple[EmbeddingKey, ImageEmbedding]:
        """The embedding of plane ``index``: from ``store``, then ``disk``, else encoded now.

        A new encoding is kept in ``store`` and ``disk``. Run it in a worker
        thread; with ``should_cancel`` (and
        :func:`~napari_sam.workflows.interactive.install_cancel_hooks` done on
        the model) the encoding stops with :class:`~napari_sam.errors.Cancelled`.

        Returns
        -------
        (EmbeddingKey, ImageEmbedding)
            The key (model id tagged with the encoder precision) and the embedding.
        """
        from napari_sam.workflows.interactive import encode_plane

        raw = self.raw_plane(index)
        key = self.key(index, model_tag(model, model_id), raw)
        emb = store.get(key) if store is not None else None
        if emb is None and disk is not None:
            emb = disk.get(key)
            if emb is not None and store is not None:
                store.put(key, emb)
        if emb is None:
            emb = encode_plane(model, self.sam_image(raw=raw), (0, 255), True, should_cancel)
            if store is not None:
                store.put(key, emb)
            if disk is not None:
                disk.put(key, emb)
        return key, emb

    def new_labels(self, dtype: Any = np.uint32) -> np.ndarray:
        """An empty label array of the image's full shape (without channels)."""
        return self.geometry.new_labels(dtype)


# --------------------------------------------------------------------------- prompts
def plane_prompts(
    geometry: PlaneGeometry,
    index: Sequence[int] | int | None,
    image_matrix: np.ndarray,
    world_point: Sequence[float],
    points: np.ndarray | None = None,
    points_matrix: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    shapes: Sequence[np.ndarray | None] | None = None,
    shapes_matrix: np.ndarray | None = None,
) -> SlicePrompts:
    """The prompts on plane ``index`` of an image with any leading axes.

    Like :func:`~napari_sam.workflows.prompts.slice_prompts` (same result
    fields and rules for points outside the image and boxes without area), for
    a plane named by its full leading index. Prompts go layer data -> world ->
    image layer data (``image_matrix``, :attr:`PlaneGeometry.layer_ndim` axes);
    a prompt is on the plane when every leading coordinate rounds to
    ``index``; a channel coordinate is ignored (prompts apply to all
    channels). A prompt layer with fewer axes takes the missing leading ones
    from ``world_point``; one with more axes counts only the prompts whose
    extra axes round to the viewer's position there.
    """
    index = geometry.check_index(index)
    out = SlicePrompts()
    n_outside = 0
    plane = geometry.plane_shape
    d = geometry.layer_ndim
    lead_axes = [geometry.layer_axis(j) for j in range(geometry.n_leading)]
    row_ax, col_ax = geometry.layer_axis(-2), geometry.layer_axis(-1)

    def on_plane(data: np.ndarray) -> np.ndarray:
        if not lead_axes:
            return np.ones(len(data), dtype=bool)
        lead = data[:, lead_axes]
        with np.errstate(invalid="ignore"):
            return np.isfinite(lead).all(axis=1) & np.all(np.round(lead) == index, axis=1)

    if points is not None and len(points):
        points = np.asarray(points, dtype=float)
        data = world_to_data(data_to_world(points, points_matrix), image_matrix, world_point)
        here = on_plane(data) & _shown_here(points, points_matrix, world_point, d)
        xy, _, inside = points_to_image(data[:, [row_ax, col_ax]], plane, None)
        usable = here & inside
        labels = (
            np.ones(len(points), dtype=int)
            if point_labels is None
            else np.asarray(point_labels, dtype=int).reshape(-1)
        )
        out.points_xy = xy[usable]
        out.point_labels = labels[usable]
        out.point_index = np.flatnonzero(usable)
        out.slice_point_index = np.flatnonzero(here)
        n_outside += int((here & ~usable).sum())
    if shapes is not None and len(shapes):
        here = np.zeros(len(shapes), dtype=bool)
        verts2d: list[np.ndarray | None] = []
        for i, v in enumerate(shapes):
            if v is None:
                verts2d.append(None)
                continue
            v = np.asarray(v, dtype=float)
            data = world_to_data(data_to_world(v, shapes_matrix), image_matrix, world_point)
            here[i] = bool(
                len(v)
                and on_plane(data).all()
                and _shown_here(v, shapes_matrix, world_point, d).all()
            )
            verts2d.append(data[:, [row_ax, col_ax]])
        boxes, _, overlaps = boxes_to_image(verts2d, plane, None)
        usable = here & overlaps
        degenerate = usable & (
            (boxes[:, 2] - boxes[:, 0] < MIN_BOX_SIZE) | (boxes[:, 3] - boxes[:, 1] < MIN_BOX_SIZE)
        )
        usable &= ~degenerate
        out.boxes = boxes[usable]
        out.box_index = np.flatnonzero(usable)
        out.slice_box_index = np.flatnonzero(here)
        out.n_degenerate = int(degenerate.sum())
        n_outside += int((here & ~usable & ~degenerate).sum())
    out.n_outside = n_outside
    return out


def _shown_here(
    coords: np.ndarray, matrix: np.ndarray | None, world_point: Sequence[float], d_image: int
) -> np.ndarray:
    """Prompts of a layer with more axes than the image: those shown at the viewer's position."""
    coords = np.asarray(coords, dtype=float).reshape(len(coords), -1)
    extra = coords.shape[1] - d_image
    if extra <= 0 or matrix is None or len(world_point) < coords.shape[1]:
        return np.ones(len(coords), dtype=bool)
    current = world_to_data(np.asarray(world_point, dtype=float)[None], matrix)[0]
    with np.errstate(invalid="ignore"):
        return np.all(np.round(coords[:, :extra]) == np.round(current[:extra]), axis=1)


# --------------------------------------------------------------------------- along an axis
class AxisStack:
    """The planes of an :class:`ImagePlanes` along one leading axis, as a ``(N, H, W)`` stack.

    ``stack[k]`` reads the raw plane at ``index`` with ``index[axis] = k``
    (:meth:`ImagePlanes.raw_plane`); nothing else is read and nothing is
    copied. ``shape`` is ``(N, H, W)`` whatever the channels.
    """

    def __init__(self, planes: ImagePlanes, index: Sequence[int] | int | None, axis: int) -> None:
        g = planes.geometry
        self.planes = planes
        self.index = g.check_index(index)
        self.axis = g._check_axis(axis)
        self.shape = (g.leading_shape[self.axis], *g.plane_shape)
        data = planes.data[0] if isinstance(planes.data, list) else planes.data
        self.dtype = np.dtype(getattr(data, "dtype", np.float64))
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def full_index(self, k: int) -> tuple[int, ...]:
        """The full leading index of plane ``k`` of this stack."""
        index = list(self.index)
        index[self.axis] = int(k)
        return tuple(index)

    def __getitem__(self, k: Any) -> np.ndarray:
        if isinstance(k, (int, np.integer)):
            if not 0 <= int(k) < self.shape[0]:
                raise IndexError(f"plane {k} of {self.shape[0]}")
            return self.planes.raw_plane(self.full_index(int(k)))
        raise TypeError("An AxisStack is read one plane at a time: stack[k].")


class AxisEmbeddings(StackEmbeddings):
    """:class:`~napari_sam.workflows.embeddings.StackEmbeddings` of the planes along one axis.

    Plane ``k`` is the plane of ``planes`` at ``index`` with ``index[axis] =
    k``; its key is :meth:`ImagePlanes.key` of that full index (with the
    model tagged by precision), so embeddings made here, by the interactive
    tools and by :class:`StackEmbeddings` on a plain stack are shared. Pass it
    to :func:`~napari_sam.workflows.propagation.propagate` as the stack.
    """

    def __init__(
        self,
        model: Any,
        planes: ImagePlanes,
        index: Sequence[int] | int | None,
        axis: int,
        *,
        model_id: str,
        store: EmbeddingStore | None = None,
        disk: DiskCache | str | None = None,
        batch_size: int | None = None,
        resize: str | None = None,
    ) -> None:
        view = AxisStack(planes, index, axis)
        self.planes = planes
        self.view = view
        super().__init__(
            model,
            view,
            model_id=model_id,
            contrast=(0.0, 255.0),  # unused: keys and encodings come from ``planes``
            store=store,
            disk=disk,
            batch_size=batch_size,
            resize=resize,
        )

    def key(self, z: int, plane: np.ndarray | None = None) -> EmbeddingKey:
        return self.planes.key(self.view.full_index(z), self._model_tag(), plane)

    def _encode_once(self, planes: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        # SAM's RGB input already (uint8, full range): encode_planes passes it through and
        # dispatches SAM 1 and SAM 2 models (SAM 2 with its ``resize``)
        images = [self.planes.sam_image(raw=p) for p in planes]
        embs = encode_planes(self.model, images, (0.0, 255.0), rgb=True, resize=self.resize)
        self.encoded += len(planes)
        self.forward_passes += 1
        return embs


def stack_embeddings(
    model: Any,
    stack: Any,
    *,
    rgb: bool = False,
    model_id: str,
    contrast: Sequence[float] | None = None,
    store: EmbeddingStore | None = None,
    disk: DiskCache | str | None = None,
    batch_size: int | None = None,
    resize: str | None = None,
) -> StackEmbeddings:
    """The embeddings of the planes of a grayscale stack ``(Z, Y, X)`` or, with ``rgb``, a
    stack of colour planes ``(Z, Y, X, 3|4)`` (serial sections, a colour movie).

    A grayscale stack gets :class:`~napari_sam.workflows.embeddings.StackEmbeddings`;
    a colour one :class:`AxisEmbeddings` of its planes along axis 0 (each plane's
    colours scaled by ``contrast``, as napari shows them: ``(0, 255)`` for
    8-bit colour), keyed as the interactive tools key the planes of a colour
    stack, so that all of them share their embeddings. Parameters are those of
    ``StackEmbeddings``.
    """
    if not rgb:
        return StackEmbeddings(model, stack, model_id=model_id, contrast=contrast, store=store,
                               disk=disk, batch_size=batch_size, resize=resize)
    planes = ImagePlanes(stack, rgb=True, contrast=contrast)
    if planes.geometry.n_leading != 1:
        raise ImageFormatError(
            f"A stack of colour planes (Z, Y, X, RGB) is needed; got an array of shape "
            f"{tuple(planes.data.shape)}."
        )
    return AxisEmbeddings(model, planes, (0,), 0, model_id=model_id, store=store, disk=disk,
                          batch_size=batch_size, resize=resize)


def propagate_along(
    model: Any,
    planes: ImagePlanes,
    masks: Any,
    index: Sequence[int] | int | None,
    axis: int,
    *,
    model_id: str,
    store: EmbeddingStore | None = None,
    disk: DiskCache | str | None = None,
    extent: Sequence[int] | None = None,
    settings: PropagationSettings | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> PropagationResult:
    """Follow objects from plane ``index`` along leading ``axis`` (z or t), others fixed.

    The rule is that of :mod:`napari_sam.workflows.propagation` (box and
    interior point from the neighbouring plane's mask), run on
    :class:`AxisEmbeddings`: planes are read and encoded one at a time.

    Parameters
    ----------
    model : Sam or SamPredictor
    planes : ImagePlanes
    masks : array ``(N, H, W)`` or ``(H, W)`` bool
        The objects on plane ``index``.
    index : tuple of int
        The plane the masks belong to (full leading index).
    axis : int
        The leading axis to follow (e.g. 1 for Z of a ``(T, Z, Y, X)`` image).
    model_id : str
        Names the model in embedding keys.
    store, disk : optional
        Embedding caches (pass the interactive tools' store to reuse its encodings).
    extent : (first, last), optional
        The positions along ``axis`` (inclusive) the objects may reach; default all.
    settings, progress, should_cancel
        As for :func:`~napari_sam.workflows.propagation.propagate`.

    Returns
    -------
    PropagationResult
        Indexed by position along ``axis`` (``result.objects[i].masks[k]``);
        write it with :func:`plan_write_along`.
    """
    from napari_sam.workflows.propagation import propagate

    g = planes.geometry
    index = g.check_index(index)
    axis = g._check_axis(axis)
    try:
        embeddings = AxisEmbeddings(
            model.model if hasattr(model, "set_embedding") else model,
            planes,
            index,
            axis,
            model_id=model_id,
            store=store,
            disk=disk,
        )
    except ImageFormatError as exc:
        raise PropagationError(str(exc)) from exc
    return propagate(
        model,
        embeddings,
        masks,
        index[axis],
        z_range=extent,
        settings=settings,
        progress=progress,
        should_cancel=should_cancel,
    )


def plan_write_along(
    labels: Any,
    result: PropagationResult,
    geometry: PlaneGeometry,
    index: Sequence[int] | int | None,
    axis: int,
    ids: Sequence[int] | None = None,
    *,
    next_id: int = 1,
    overwrite: bool = False,
) -> list[tuple[int, tuple[np.ndarray, ...]]]:
    """Which voxels of a full label array get which id, for a :func:`propagate_along` result.

    :func:`~napari_sam.workflows.propagation.plan_write` (never another
    object's voxels unless ``overwrite``) on the ``(N, H, W)`` view of
    ``labels`` along ``axis`` through ``index``, with the indices returned for
    the full array: ``labels[idx] = id`` for each ``(id, idx)``.
    """
    from napari_sam.workflows.propagation import plan_write

    index = geometry.check_index(index)
    axis = geometry._check_axis(axis)
    if tuple(labels.shape) != geometry.shape:
        raise ImageFormatError(
            f"The labels have shape {tuple(labels.shape)}, but the image's planes need "
            f"{geometry.shape}."
        )
    view = labels[geometry.line_slicer(index, axis)]
    plan = plan_write(view, result, ids, next_id=next_id, overwrite=overwrite)
    out = []
    for oid, (ks, rows, cols) in plan:
        full = [
            ks if j == axis else np.full(ks.shape, i, dtype=np.intp) for j, i in enumerate(index)
        ]
        out.append((oid, (*full, rows, cols)))
    return out
