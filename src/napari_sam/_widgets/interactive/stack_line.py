"""The line of planes a propagation follows in the interactive dock, and its embeddings.

A 3D stack ``(Z, Y, X)`` is followed along Z: its line is the stack itself
and its planes are named by their slice number, as the dock's preview and
embeddings name them. An image with more leading axes, e.g. ``(T, Z, Y, X)``
(a :class:`~napari_sam._widgets.interactive.planes_layout.PlanesLayout`), is
followed along ONE chosen leading axis (z or t) through the plane the viewer
shows, every other leading axis staying at its current position: a
:class:`PlaneLine` says which axis, where, how long the line is, how its planes
are named in the dock (full leading indices), and maps between the full label
array and the ``(N, H, W)`` view along the line that
:func:`~napari_sam.workflows.propagation.propagate` and SAM 2's memory work
on. :func:`line_embeddings` gives the embeddings of the line's planes as SAM
sees them (contrast limits; the chosen channel layers), keyed as the dock keys
the planes it encodes itself, so each plane is encoded once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_sam._widgets.interactive.planes_layout import PlaneKey, is_planes, plane_index
from napari_sam._widgets.jobs import Job
from napari_sam._widgets.layers import axis_name
from napari_sam.errors import ImageFormatError
from napari_sam.workflows.embeddings import EmbeddingKey, StackEmbeddings
from napari_sam.workflows.planes import AxisEmbeddings, ImagePlanes, PlaneGeometry

__all__ = [
    "PlaneLine",
    "axis_choices",
    "axis_names",
    "current_line",
    "default_axis",
    "follows",
    "line_embeddings",
    "precompute_job",
]

#: An embedding's size in memory (float32, 256 x 64 x 64), to say how many slices fit.
_EMBEDDING_BYTES = 4 * 256 * 64 * 64


def axis_names(image: Any, layout: Any) -> list[str]:
    """The name of each leading (non-plane) axis of ``image``: napari's axis label ("t",
    "z"), or "axis 0" where the label is napari's default number; two unnamed leading axes
    are "t" and "z", a time-lapse of stacks as ``napari-sam propagate --along`` reads one."""
    n = len(layout.spatial_shape) - 2
    geometry = getattr(layout, "geometry", None)
    names = [axis_name(image, geometry.layer_axis(j) if geometry is not None else j, j)
             for j in range(n)]
    if n == 2 and all(name.startswith("axis ") for name in names):
        return ["t", "z"]
    return names


def follows(layout: Any) -> bool:
    """Objects can be followed through ``layout``: a stack, or more leading axes."""
    return layout is not None and (layout.is_stack or is_planes(layout))


def axis_choices(owner: Any) -> list[tuple[int, str]]:
    """The leading axes of the dock's image objects can follow, with their names (empty:
    none)."""
    if not follows(owner.layout):
        return []
    return list(enumerate(axis_names(owner.image, owner.layout)))


def default_axis(layout: Any) -> int | None:
    """The leading axis followed unless the user chooses one: the axis right before the
    plane (Z of a ``(Z, Y, X)`` or ``(T, Z, Y, X)`` image); None when the image has three
    or more leading axes, so that none is obvious."""
    n = len(layout.spatial_shape) - 2
    if n < 1 or n > 2:
        return None
    return n - 1


@dataclass(frozen=True)
class PlaneLine:
    """The planes along leading ``axis`` through the plane at full leading ``index``.

    Attributes
    ----------
    index : tuple of int
        The full leading index of the plane the propagation starts from.
    axis : int
        The leading axis followed (0 for a stack's Z).
    shape : tuple of int
        The label shape ``(*leading, H, W)`` of the image.
    nd : bool
        The dock names planes by full leading index (more than one leading
        axis); False for a stack, whose planes are named by slice number.
    names : tuple of str
        Each leading axis' name (:func:`axis_names`).
    """

    index: tuple[int, ...]
    axis: int
    shape: tuple[int, ...]
    nd: bool
    names: tuple[str, ...] = ()

    @property
    def k(self) -> int:
        """The position of the start plane along the line."""
        return int(self.index[self.axis])

    @property
    def length(self) -> int:
        return int(self.shape[self.axis])

    @property
    def geometry(self) -> PlaneGeometry:
        return PlaneGeometry(tuple(self.shape))

    def key(self, k: int | None = None) -> PlaneKey:
        """How the dock (preview, prompts, embeddings) names plane ``k`` of the line
        (default the start plane): a slice number for a stack, else a full index."""
        k = self.k if k is None else int(k)
        if not self.nd:
            return k
        index = list(self.index)
        index[self.axis] = k
        return tuple(index)

    def view(self, data: Any) -> Any:
        """The ``(N, H, W)`` planes of a label array of :attr:`shape` along the line (for
        numpy a view: writing into it writes into ``data``)."""
        if not self.nd:
            return data
        return data[self.geometry.line_slicer(self.index, self.axis)]

    def lift(self, plan: list[tuple[int, tuple]]) -> list[tuple[int, tuple]]:
        """``(id, (k, rows, cols))`` writes into :meth:`view` as writes into the full array."""
        if not self.nd:
            return plan
        out = []
        for oid, (ks, rows, cols) in plan:
            full = [ks if j == self.axis else np.full(ks.shape, i, dtype=np.intp)
                    for j, i in enumerate(self.index)]
            out.append((oid, (*full, rows, cols)))
        return out

    def name(self) -> str:
        return self.names[self.axis] if self.names else f"axis {self.axis}"

    def sentence_axis(self) -> str | None:
        """The axis name sentences use: None for the slices of a stack (also of colour planes
        or channel layers, whose one leading axis napari leaves unnamed), else its name
        (e.g. "t")."""
        if not self.nd or (len(self.index) == 1 and self.name().startswith("axis ")):
            return None
        return self.name()

    def describe(self, lo: int, hi: int) -> str:
        """E.g. "slices 1–5" (a stack), "t 1–5" (a movie with its axis named t), "z 1–5 at
        t=1" (a (T, Z, Y, X) image)."""
        if self.sentence_axis() is None:
            return f"slices {lo}–{hi}"
        if len(self.index) == 1:
            return f"{self.name()} {lo}–{hi}"
        name = self.name()
        positions = f"{name} positions" if name.startswith("axis ") else name
        others = ", ".join(
            f"{self.names[j] if self.names else f'axis {j}'}={i}"
            for j, i in enumerate(self.index) if j != self.axis
        )
        return f"{positions} {lo}–{hi} at {others}"

    def outside_range(self, lo: int, hi: int) -> str:
        """The sentence for a start plane outside the range ``lo``–``hi`` along the line."""
        axis, k = self.sentence_axis(), self.k
        where = f"range {lo}–{hi} along {axis}" if axis else f"slice range {lo}–{hi}"
        here = f"position {k}" if axis else f"slice {k}"
        return f"The {where} does not include the current {here}; widen it."

    def outside(self) -> str:
        """Why the line was left (for sentences): "slice 3" / "plane (1, 3)"."""
        return f"plane {self.key()}" if len(self.index) > 1 else f"slice {self.k}"


class _SliceKeyed(AxisEmbeddings):
    """:class:`AxisEmbeddings` of a stack's slices keyed by slice number, as the dock keys
    the slices it encodes (channel layers on a ``(Z, Y, X)`` stack)."""

    def key(self, z: int, plane: np.ndarray | None = None) -> EmbeddingKey:
        return replace(super().key(z, plane), slice=int(z))


def line_embeddings(owner: Any, line: PlaneLine, disk: Any) -> StackEmbeddings:
    """The embeddings of ``line``'s planes of the dock's image (``owner``: the
    InteractiveController), as SAM sees them: the image with its contrast limits, or the
    chosen channel layers with theirs; kept in the dock's store (and ``disk``).

    Raises
    ------
    ImageFormatError
        If the channel layers cannot make SAM's input (e.g. a shape changed meanwhile).
    """
    image, model = owner.image, owner.model
    channels = owner.channels.active_for(image)
    if not line.nd and not channels:  # a grayscale stack, as StackEmbeddings always did
        return StackEmbeddings(model.sam, image.data, model_id=model.model_id,
                               contrast=tuple(float(c) for c in image.contrast_limits),
                               store=owner.embeddings.store, disk=disk)
    if channels:
        data, _ = owner.channels.intensity()
        planes = ImagePlanes(data, contrast=owner.channels.contrasts())
    else:
        planes = ImagePlanes(image.data, rgb=bool(image.rgb),
                             contrast=tuple(float(c) for c in image.contrast_limits))
    if tuple(planes.shape) != tuple(line.shape):
        raise ImageFormatError(
            f"The channel layers have planes of shape {planes.shape}, but the image is "
            f"{line.shape}; choose the channels again."
        )
    kind = AxisEmbeddings if line.nd else _SliceKeyed
    return kind(model.sam, planes, line.index, line.axis, model_id=model.model_id,
                store=owner.embeddings.store, disk=disk)


def current_line(owner: Any, axis: int | None) -> PlaneLine | None:
    """The line along ``axis`` through the plane the viewer shows (None: outside the image)."""
    layout = owner.layout
    if is_planes(layout):
        index = plane_index(layout, owner.image, owner.viewer.dims.point)
        if index is None or axis is None:
            return None
        return PlaneLine(tuple(index), int(axis), tuple(layout.spatial_shape), True,
                         tuple(axis_names(owner.image, layout)))
    k = owner.current_slice()
    if k is None:
        return None
    return PlaneLine((int(k),), 0, tuple(layout.spatial_shape), False, ("z",))


def precompute_job(owner: Any, line: PlaneLine, embeddings: StackEmbeddings,
                   make_job: Callable[..., Job]) -> Job:
    """The job that encodes every plane of ``line`` not cached yet (``make_job(kind, text,
    run, done)`` makes it), warning first if they will not all fit in the memory cache."""
    if embeddings.disk is None:
        fits = owner.embeddings.store.max_bytes // _EMBEDDING_BYTES
        if embeddings.n_slices > fits:
            owner.warn(
                f"Only about {fits} of the {embeddings.n_slices} slices fit in the memory "
                "cache; tick “Keep embeddings on disk” to keep them all."
            )
    n = embeddings.n_slices

    def done(encoded: int) -> None:
        owner.set_status(
            f"Embeddings of all {n} slices are ready ({encoded} encoded now, "
            f"{n - encoded} were cached)."
        )

    what = f" ({line.describe(0, n - 1)})" if line.nd else ""
    return make_job(
        "precompute", f"Encoding the slices of “{owner.image.name}”{what}…",
        lambda progress, cancel: embeddings.precompute(progress=progress, should_cancel=cancel),
        done,
    )
