"""What ``napari-sam propagate`` follows objects through: one line of planes of an image
file, as SAM sees them.

:class:`FollowedPlanes` names the planes — a grayscale stack or movie, a stack
of colour planes, 1–3 channels of a multichannel stack ``(C, Z, Y, X)`` as
SAM's red, green and blue, or one line of a time-lapse of stacks — and how SAM
sees them (contrast limits, per channel with channels). It reads the file,
shows it as an :class:`~napari_sam.workflows.planes.ImagePlanes`, checks the
line and gives the line's embeddings
(:class:`~napari_sam.workflows.planes.AxisEmbeddings`, keyed as the napari
dock and ``napari-sam embed`` key the same planes), so that the command in one
process and its tasks on a cluster see exactly the same input. It is small
and picklable: a cluster sends it to each task with the contrast limits
resolved once (:meth:`FollowedPlanes.resolved`), so no task reads the whole
file.

No napari or torch here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import ImageFormatError, InputFileError, PropagationError
from napari_sam.workflows import io
from napari_sam.workflows.channels import check_channels
from napari_sam.workflows.embeddings import DiskCache, EmbeddingStore
from napari_sam.workflows.planes import AxisEmbeddings, ImagePlanes
from napari_sam.workflows.timelapse import LineLabels, TimelapseLine

__all__ = ["FollowedPlanes"]


@dataclass(frozen=True)
class FollowedPlanes:
    """The planes of an image file that objects are followed through, as SAM sees them.

    Attributes
    ----------
    channels : tuple of int, optional
        1–3 channels (from 0, as napari's channel slider) of a multichannel file,
        read channels first (``(C, Z, Y, X)`` or ``(C, T, Z, Y, X)``: its channel
        axis, or its first axis if it names none), as SAM's red, green and blue;
        None: the file as it is (grayscale, or RGB colour planes).
    contrast : (low, high), or one (low, high) per channel, optional
        The display range mapped to 0–255; None: napari's default for a newly
        opened image (8-bit: 0–255; else the whole file's, or channel's, minimum
        and maximum).
    line : TimelapseLine, optional
        For a time-lapse of stacks ``(T, Z, Y, X)``: the line followed.
    others : tuple of str, optional
        Files holding SAM's green (and blue) input, the file read being its red:
        channels saved one per file (Fiji's *Split Channels*), each grayscale and
        of the same shape. Not with ``channels``.
    """

    channels: tuple[int, ...] | None = None
    contrast: Any = None
    line: TimelapseLine | None = None
    others: tuple[str, ...] | None = None

    # ---------------------------------------------------------------- reading
    def read(self, path: str | os.PathLike[str], lazy: bool = False) -> io.TiffImage:
        """The image file ``path`` (lazily: one plane at a time when indexed).

        Raises
        ------
        InputFileError
            A file that cannot be read, or without the chosen channels.
        """
        if self.others is not None:
            return io.read_channel_files(path, self.others, lazy=lazy)
        if self.channels is None:
            return io.read_image(path, lazy=lazy, frames=True)
        image = io.read_tiff(path, channels=True, lazy=lazy, frames=True)
        try:
            check_channels(list(self.channels), int(image.data.shape[0]))
        except ImageFormatError as exc:
            raise InputFileError(f"{Path(path).name}: {exc}") from None
        return image

    def planes(self, image: io.TiffImage, name: str = "The image") -> ImagePlanes:
        """``image`` as SAM sees it, checked to have planes to follow objects through.

        Raises
        ------
        PropagationError
            A 2D image (one sentence).
        ImageFormatError
            Contrast limits that do not fit the channels.
        """
        if self.channels is not None or self.others is not None:
            # channels of one file, or one file per channel read as channels (read)
            chosen = self.channels or tuple(range(1 + len(self.others or ())))
            planes = ImagePlanes(image.data, channel_axis=0, channels=chosen,
                                 contrast=self.contrast)
        else:
            planes = ImagePlanes(image.data, rgb=image.rgb, contrast=self.contrast)
        if planes.geometry.n_leading == 0:
            raise PropagationError(
                f"Propagation follows objects through the slices of a stack (Z, Y, X) or the "
                f"frames of a movie (T, Y, X), but this image is 2D ({name}, shape "
                f"{tuple(image.data.shape)}); segment it with clicks instead."
            )
        return planes

    def resolved(self, planes: ImagePlanes) -> FollowedPlanes:
        """The same, with the contrast limits ``planes`` use written out (for tasks that
        must not read the whole file to find them)."""
        contrast = planes.contrasts if planes.channels is not None else planes.contrasts[0]
        return replace(self, contrast=contrast)

    # ---------------------------------------------------------------- the line
    def index_axis(self, planes: ImagePlanes) -> tuple[tuple[int, ...], int]:
        """A full leading index on the line and the axis followed.

        Raises
        ------
        PropagationError
            An image with more than one leading axis and no line.
        """
        if self.line is not None:
            return self.line.index, self.line.axis
        if planes.geometry.n_leading != 1:
            raise PropagationError(
                f"Objects are followed along one axis; this image has the leading axes "
                f"{planes.geometry.leading_shape}: say which line (--along, --at)."
            )
        return (0,), 0

    def n_planes(self, planes: ImagePlanes) -> int:
        """How many planes the line has."""
        _, axis = self.index_axis(planes)
        return int(planes.geometry.leading_shape[axis])

    def embeddings(
        self,
        model: Any,
        planes: ImagePlanes,
        *,
        model_id: str,
        store: EmbeddingStore | None = None,
        disk: DiskCache | str | None = None,
        batch_size: int | None = None,
        resize: str | None = None,
    ) -> AxisEmbeddings:
        """The embeddings of the line's planes (keys shared with the dock and ``embed``)."""
        index, axis = self.index_axis(planes)
        return AxisEmbeddings(model, planes, index, axis, model_id=model_id, store=store,
                              disk=disk, batch_size=batch_size, resize=resize)

    def place(self, labels: np.ndarray, planes: ImagePlanes) -> np.ndarray | LineLabels:
        """``labels`` ``(N, Y, X)`` of the line as labels of the whole image (its shape
        without colours or channels; zero off the line): on a line of a time-lapse a
        :class:`~napari_sam.workflows.timelapse.LineLabels`, which is written plane by
        plane and never made whole."""
        if self.line is None:
            return labels
        whole = LineLabels(planes.shape)
        whole.add(self.line, labels)
        return whole

