"""A folder of images annotated one after another (e.g. to make a training set).

:class:`ImageSeries` lists the images of a folder in the order and with the
output names of ``napari-sam segment``'s folder mode
(:func:`~napari_sam.workflows.io.find_images`,
:func:`~napari_sam.workflows.io.labels_path_for`: ``<name>_labels.tif`` in the
output folder), opens one image at a time with its labels (read back from the
output folder when they were saved before), keeps each image's prompts
(whatever object the UI stores: switching images never loses them) and saves
an image's labels, with its object table as CSV beside them, when the user
switches away, only if they changed.

:func:`precompute_embedding` encodes the plane a freshly opened image shows
(what napari shows first, with napari's default contrast) into the embedding
caches: a function for the UI's job runner, to run for the next image while
the user annotates the current one.

No napari here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import InputFileError
from napari_sam.runtime.files import content_hash
from napari_sam.runtime.progress import CancelCheck
from napari_sam.workflows import io, zarr_io
from napari_sam.workflows.embeddings import DiskCache, EmbeddingKey, EmbeddingStore
from napari_sam.workflows.planes import ImagePlanes
from napari_sam.workflows.tables import (
    merge_sam_columns,
    object_table,
    read_object_table,
    table_path_for,
    write_object_table,
)

__all__ = [
    "DEFAULT_OUTPUT_FOLDER",
    "ImageSeries",
    "OpenImage",
    "list_images",
    "precompute_embedding",
]

#: Output folder (inside the image folder) when none is given.
DEFAULT_OUTPUT_FOLDER = "labels"


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files of ``folder`` in the order ``napari-sam segment`` processes them.

    The files :func:`~napari_sam.workflows.io.find_images` finds (TIFF, PNG,
    JPEG, BMP, ``.npy``), without zarr folders (the CLI writes their labels
    as zarr, an image series as TIFF).

    Raises
    ------
    InputFileError
        If the folder does not exist or holds no image file.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputFileError(f"The folder {folder} does not exist.")
    found = [p for p in io.find_images(folder).images if p.is_file()]
    if not found:
        kinds = ", ".join(s for s in io.IMAGE_SUFFIXES if s not in zarr_io.ZARR_SUFFIXES)
        raise InputFileError(f"The folder {folder} holds no image file napari-sam reads ({kinds}).")
    return found


def _saved_table(labels_path: Path) -> Any:
    """The object table beside ``labels_path`` as features, or None (missing, unreadable)."""
    path = table_path_for(labels_path)
    if not path.is_file():
        return None
    try:
        table = read_object_table(path)
    except (OSError, ValueError):  # pandas' parser errors are ValueErrors
        return None
    return table if "index" in table else None


@dataclass
class OpenImage:
    """One image of a series, ready to show.

    Attributes
    ----------
    position : int
        Its position in the series.
    path : Path
        The image file.
    image : TiffImage
        Its pixels, RGB flag, pixel size and unit (:func:`~napari_sam.workflows.io.read_image`).
    labels : ndarray uint32
        Its labels: read from :attr:`labels_path` if saved before, else zeros
        of the image's shape (without colour axis).
    labels_path : Path
        Where its labels are saved.
    prompts : Any
        What the UI stored for this image (None at first).
    table : pandas.DataFrame or None
        The object table saved beside the labels
        (:func:`~napari_sam.workflows.tables.table_path_for`), read back as a
        features table (``index`` = label), so that SAM's scores and the method
        of objects made in an earlier visit are kept when the labels are saved
        again; None when there is none (or it cannot be read: the sizes are
        measured again anyway).
    """

    position: int
    path: Path
    image: io.TiffImage
    labels: np.ndarray
    labels_path: Path
    prompts: Any = None
    table: Any = None


@dataclass
class _Entry:
    path: Path
    labels_path: Path
    prompts: Any = None
    saved_hash: str | None = None
    opened: bool = False


@dataclass
class ImageSeries:
    """The images of a folder, annotated one after another.

    Parameters
    ----------
    folder : path
        The folder of images (TIFF, PNG, JPEG, BMP or ``.npy`` files).
    output : path, optional
        Where labels are saved; default ``<folder>/labels``.

    Attributes
    ----------
    images : list of Path
        In the order of :func:`list_images`.
    position : int or None
        The image open now (None before the first :meth:`open`).
    """

    folder: Path
    output: Path | None = None
    images: list[Path] = field(init=False)
    position: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).expanduser()
        self.images = list_images(self.folder)
        self.output = (
            Path(self.output).expanduser()
            if self.output is not None
            else self.folder / DEFAULT_OUTPUT_FOLDER
        )
        self._entries = [
            _Entry(path=p, labels_path=io.labels_path_for(p, self.output)) for p in self.images
        ]

    def __len__(self) -> int:
        return len(self.images)

    def labels_path(self, position: int) -> Path:
        """Where the labels of image ``position`` are (or will be) saved."""
        return self._entries[self._check(position)].labels_path

    def prompts(self, position: int) -> Any:
        """The prompts stored for image ``position`` (None if none)."""
        return self._entries[self._check(position)].prompts

    def set_prompts(self, position: int, prompts: Any) -> None:
        """Keep ``prompts`` for image ``position`` (any object; kept as given)."""
        self._entries[self._check(position)].prompts = prompts

    def next_position(self, step: int = 1) -> int | None:
        """The position ``step`` images after the current one, or None past either end."""
        current = -1 if self.position is None else self.position
        target = current + int(step)
        return target if 0 <= target < len(self) else None

    # ---------------------------------------------------------------- open / save
    def open(self, position: int) -> OpenImage:
        """Read image ``position`` and its labels; it becomes the current image.

        Raises
        ------
        InputFileError, ImageFormatError
            If the image cannot be read, or its saved labels do not fit it.
        """
        opened = self.read(position)
        self.position = opened.position
        return opened

    def read(self, position: int) -> OpenImage:
        """Read image ``position`` and its labels, as :meth:`open` does, without making it
        the current image (e.g. the next image, read ahead while the user annotates).

        Raises
        ------
        InputFileError, ImageFormatError
            If the image cannot be read, or its saved labels do not fit it.
        """
        position = self._check(position)
        entry = self._entries[position]
        image = io.read_image(entry.path)
        shape = image.spatial_shape
        if entry.labels_path.exists():
            saved = io.read_tiff(entry.labels_path).data
            if tuple(saved.shape) != tuple(shape):
                raise InputFileError(
                    f"The saved labels {entry.labels_path.name} have shape {tuple(saved.shape)}, "
                    f"but {entry.path.name} has shape {tuple(shape)}; move the labels file away "
                    "to start this image afresh."
                )
            labels = np.asarray(saved).astype(np.uint32)
            table = _saved_table(entry.labels_path)
        else:
            labels = np.zeros(shape, dtype=np.uint32)
            table = None
        entry.saved_hash = content_hash(labels)
        entry.opened = True
        return OpenImage(position, entry.path, image, labels, entry.labels_path, entry.prompts,
                         table)

    def changed(self, position: int, labels: Any) -> bool:
        """Whether ``labels`` differ from those image ``position`` was opened or saved with."""
        entry = self._entries[self._check(position)]
        return content_hash(np.asarray(labels).astype(np.uint32, copy=False)) != entry.saved_hash

    def save(
        self,
        position: int,
        labels: Any,
        *,
        image: io.TiffImage | None = None,
        features: Any = None,
        force: bool = False,
    ) -> list[Path]:
        """Save the labels of image ``position`` (and their object table), if they changed.

        The label TIFF gets the image's pixel size and unit; the CSV beside it
        (:func:`~napari_sam.workflows.tables.table_path_for`) is the object table
        with the image's mean intensity per object and, from ``features`` (the
        labels layer's features), SAM's scores and the method.

        Returns
        -------
        list of Path
            The files written (empty when nothing changed and not ``force``).
        """
        position = self._check(position)
        entry = self._entries[position]
        labels = np.asarray(labels)
        if not force and not self.changed(position, labels):
            return []
        if image is None:
            image = io.read_image(entry.path)
        written = [io.write_labels_tiff(entry.labels_path, labels, image.scale, image.unit)]
        if image.rgb:
            intensity: Any = [image.data[..., c] for c in range(3)]
            names: Sequence[str] | None = ["red", "green", "blue"]
        else:
            intensity, names = image.data, None
        table = object_table(
            labels, scale=image.scale, unit=image.unit, intensity=intensity, channel_names=names
        )
        table = merge_sam_columns(table, features)
        written.append(write_object_table(table_path_for(entry.labels_path), table))
        entry.saved_hash = content_hash(labels.astype(np.uint32, copy=False))
        return written

    def switch(
        self,
        position: int,
        labels: Any = None,
        prompts: Any = None,
        *,
        features: Any = None,
    ) -> tuple[OpenImage, list[Path]]:
        """Leave the current image (keep its prompts, save its labels if changed), open another.

        Parameters
        ----------
        position : int
            The image to open.
        labels : array, optional
            The current image's labels as the user left them.
        prompts : any, optional
            The current image's prompts, kept for when the user comes back.
        features : DataFrame, optional
            The current labels layer's features (SAM's scores, method).

        Returns
        -------
        (OpenImage, list of Path)
            The opened image and the files saved for the one left.
        """
        saved: list[Path] = []
        target = self._check(position)
        if self.position is not None:
            self.set_prompts(self.position, prompts)
            if labels is not None:
                saved = self.save(self.position, labels, features=features)
        return self.open(target), saved

    def _check(self, position: int) -> int:
        position = int(position)
        if not 0 <= position < len(self):
            raise IndexError(
                f"Image {position} does not exist; the series has {len(self)} images."
            )
        return position


def precompute_embedding(
    model: Any,
    path_or_image: str | os.PathLike[str] | io.TiffImage,
    *,
    model_id: str,
    store: EmbeddingStore | None = None,
    disk: DiskCache | None = None,
    index: Sequence[int] | None = None,
    should_cancel: CancelCheck | None = None,
) -> EmbeddingKey:
    """Encode the plane an image shows when opened, into ``store`` / ``disk``.

    The plane is ``index`` or, by default, the one napari shows first (the
    middle of each leading axis); the contrast is the one napari gives a newly
    opened image. So when the user opens the image and prompts, the embedding
    key matches and nothing is encoded then. Meant for the UI's job runner
    (a worker thread), for the next image of an :class:`ImageSeries`.

    Returns
    -------
    EmbeddingKey
        The key the embedding is stored under.

    Raises
    ------
    Cancelled
        If ``should_cancel`` returned True.
    """
    from napari_sam.errors import Cancelled

    if should_cancel is not None and should_cancel():
        raise Cancelled("Precomputing the next image was cancelled.")
    image = (
        path_or_image
        if isinstance(path_or_image, io.TiffImage)
        else io.read_image(path_or_image)
    )
    planes = ImagePlanes(image.data, rgb=image.rgb)
    where = planes.geometry.initial_index() if index is None else index
    key, _ = planes.embedding(
        model, where, model_id=model_id, store=store, disk=disk, should_cancel=should_cancel
    )
    return key
