"""Files in and out: images to segment, label images (TIFF, OME-Zarr) and COCO JSON.

- :func:`read_image` reads any image napari-sam segments: TIFF and ``.npy``
  (:func:`read_tiff`), PNG / JPEG / BMP (Pillow) and zarr / OME-Zarr folders
  (:mod:`~napari_sam.workflows.zarr_io`, always lazy); ``lazy=True`` reads TIFF
  planes only when asked for (a huge stack is never loaded whole).
  :func:`find_images` lists the images of a folder and every entry it skips,
  with the reason.
- :func:`read_tiff` reads a 2D (YX), 2D RGB (YXS) or 3D (ZYX, or TYX) TIFF
  and its pixel size (ImageJ ``spacing``/resolution tags), dropping axes of
  length 1; with ``frames=True`` also a time-lapse of stacks (TZYX, with
  ImageJ's frame interval ``finterval``) and a stack of RGB planes (ZYXS);
  anything else is refused with a
  sentence that says why.
- :func:`write_labels_tiff` writes an instance label image as a compressed
  (zlib) TIFF that napari, Fiji/ImageJ and tifffile open: ImageJ format with
  the voxel size (``spacing`` for Z, X/Y resolution, ``unit``) when the labels
  fit 16 bits, a plain ``uint32`` TIFF with the same resolution tags otherwise.
  The file is written under a temporary name in the target folder and renamed
  into place at the end, so a failure never leaves a partial file.
  :func:`write_labels` picks TIFF or OME-Zarr from the file name.
- :func:`labels_to_coco` / :class:`CocoWriter` (in :mod:`~napari_sam.workflows.coco`,
  named here too) turn label images into a COCO dataset.

No napari or torch here; ``tifffile``, ``PIL``, ``zarr`` and ``pycocotools`` are
imported when used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import ImageFormatError, InputFileError, NapariSamError, OutputFileError
from napari_sam.runtime.files import atomic_write
from napari_sam.workflows import zarr_io
from napari_sam.workflows.labels import id_array

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "PILLOW_SUFFIXES",
    "TIFF_SUFFIXES",
    "CocoWriter",
    "FolderContents",
    "TiffImage",
    "find_images",
    "find_tiffs",
    "labels_path_for",
    "labels_to_coco",
    "plane_annotations",
    "read_image",
    "read_stack",
    "read_tiff",
    "write_coco",
    "write_labels",
    "write_labels_tiff",
]

#: File name endings read as TIFF.
TIFF_SUFFIXES = (".tif", ".tiff")
#: File name endings read with Pillow (common in histology and public training sets).
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: Every file name ending :func:`read_image` reads (zarr folders end in ``.zarr``).
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, *PILLOW_SUFFIXES, ".npy", *zarr_io.ZARR_SUFFIXES)
#: File name endings a label image can be written to (TIFF, or an OME-Zarr folder).
LABEL_SUFFIXES = (*TIFF_SUFFIXES, *zarr_io.ZARR_SUFFIXES)

#: napari / pint unit names -> the names ImageJ writes in its metadata.
_IMAGEJ_UNITS = {
    "micrometer": "micron",
    "micron": "micron",
    "um": "micron",
    "µm": "micron",
    "nanometer": "nm",
    "nm": "nm",
    "millimeter": "mm",
    "mm": "mm",
    "centimeter": "cm",
    "cm": "cm",
    "meter": "m",
    "m": "m",
    "angstrom": "A",
    "pixel": "pixel",
}
#: ImageJ unit names -> napari (pint) unit names.
_NAPARI_UNITS = {
    "micron": "micrometer",
    "microns": "micrometer",
    "um": "micrometer",
    "µm": "micrometer",
    "\\u00B5m": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "a": "angstrom",
    "pixel": "pixel",
    "pixels": "pixel",
}


# ============================================================================= reading
@dataclass
class TiffImage:
    """An image read by :func:`read_tiff`.

    Attributes
    ----------
    data : ndarray
        ``(Y, X)``, ``(Y, X, 3|4)`` with ``rgb``, ``(Z, Y, X)``, or ``(T, Z, Y, X)``
        when read with ``frames=True``.
    rgb : bool
        The last axis holds colour channels.
    scale : tuple of float
        Pixel size per axis (``(y, x)``, ``(z, y, x)`` or ``(t, z, y, x)``, the
        time step first), 1.0 where unknown.
    unit : str or None
        Unit of ``scale`` as napari names it (``"micrometer"``), if the file says.
    axes : str
        The axes of ``data`` as tifffile names them after dropping length-1 axes.
    channel_axis : int or None
        The axis of ``data`` holding channels (0, when read with ``channels=True``).
    channel_names : tuple of str or None
        For channels saved one per file (:func:`read_channel_files`), each file's name
        without its suffix (object tables name their intensity columns so).
    """

    data: np.ndarray
    rgb: bool
    scale: tuple[float, ...]
    unit: str | None
    axes: str
    channel_axis: int | None = None
    channel_names: tuple[str, ...] | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of a matching label image."""
        if self.channel_axis is not None:
            return tuple(s for i, s in enumerate(self.data.shape) if i != self.channel_axis)
        return tuple(self.data.shape[:-1] if self.rgb else self.data.shape)


def read_image(
    path: str | os.PathLike[str], *, lazy: bool = False, frames: bool = False
) -> TiffImage:
    """Read an image to segment: TIFF, ``.npy``, PNG, JPEG, BMP, or a zarr / OME-Zarr folder.

    The layouts accepted are those of :func:`read_tiff` (``frames``: also a
    time-lapse of stacks, ``(T, Z, Y, X)``). PNG, JPEG and BMP
    files are 2D grayscale (8 or 16 bit) or colour images; palette images become
    RGB, a grey image with transparency loses its alpha channel; their pixel
    size is unknown (1). Zarr data is always read lazily, TIFF data with
    ``lazy=True`` (one plane at a time, when :attr:`TiffImage.data` is indexed).

    Raises
    ------
    InputFileError
        If the file does not exist, cannot be read, is of a kind napari-sam does
        not read, or holds another layout.
    ImageFormatError
        If its values are not real numbers.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputFileError(f"The input file {path} does not exist.")
    if path.is_dir():
        if zarr_io.is_zarr(path):
            return _read_zarr(path, frames)
        raise InputFileError(
            f"{path} is a folder, not an image file (a zarr folder holds zarr metadata)."
        )
    suffix = path.suffix.lower()
    if suffix in PILLOW_SUFFIXES:
        return _read_pillow(path)
    if suffix not in (*TIFF_SUFFIXES, ".npy"):
        raise InputFileError(
            f"{path.name} is not an image napari-sam reads ({suffix or 'no extension'}); "
            f"it reads {_readable_kinds()}."
        )
    return read_tiff(path, lazy=lazy, frames=frames)


def _readable_kinds() -> str:
    return ", ".join(IMAGE_SUFFIXES[:-1]) + f" files and {IMAGE_SUFFIXES[-1]} folders"


def _read_pillow(path: Path) -> TiffImage:
    from PIL import Image, UnidentifiedImageError

    kind = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), path.suffix[1:].upper())
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the user's own slide scan is no decompression bomb
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("1", "L", "I", "F", "RGB", "RGBA") or mode.startswith("I;16"):
                data = np.asarray(im)
            elif mode == "LA":
                data = np.asarray(im.convert("L"))
            else:  # palette, CMYK, YCbCr, ...
                data = np.asarray(im.convert("RGBA" if mode in ("PA", "RGBa") else "RGB"))
    except MemoryError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputFileError(
            f"{path.name} cannot be read as a {kind} image ({type(exc).__name__}: {exc})."
        ) from exc
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    axes = "YXS" if data.ndim == 3 else "YX"
    return _checked_image(path, data, axes, {}, {}, None)


def _read_zarr(path: Path, frames: bool = False) -> TiffImage:
    source = zarr_io.open_zarr_image(path)
    image = _checked_image(path, source.data, source.axes, {}, {}, None, frames=frames)
    spatial = "TZYX"[-len(image.spatial_shape):]
    scale = tuple(source.scale.get(a, 1.0) for a in spatial)
    image.scale = tuple(_positive(s) for s in scale)
    image.unit = _napari_unit(source.unit)
    return image


def read_tiff(
    path: str | os.PathLike[str],
    *,
    channels: bool = False,
    lazy: bool = False,
    frames: bool = False,
) -> TiffImage:
    """Read an image to segment from a TIFF file.

    Accepted: 2D grayscale (YX), 2D RGB(A) (YXS) and 3D grayscale stacks (Z, Y, X; a
    time series T, Y, X is segmented the same way, one plane after the other);
    with ``frames=True`` also 4D grayscale data, read as a time-lapse of stacks
    ``(T, Z, Y, X)`` (the first axis is the outer one, e.g. time; its scale
    entry is ImageJ's frame interval, or 1), and stacks of RGB planes
    ``(Z, Y, X, 3|4)``. Axes of length 1 (a single
    channel, time point or slice) are dropped.
    With ``lazy``, the pixels are read only when :attr:`TiffImage.data` (a zarr
    array, or a :class:`~napari_sam.workflows.zarr_io.LazyArray` over one) is
    indexed, one TIFF page or tile at a time (with channels too).

    With ``channels=True`` the image is read as channels first, ``(C, Y, X)``,
    ``(C, Z, Y, X)`` or, with ``frames``, ``(C, T, Z, Y, X)``
    (``channel_axis=0``): the file's channel axis (``C``, or the samples of an
    RGB image) is moved to the front; a file that names no
    channel axis has its first axis taken as channels when it has three
    axes or more, and one channel otherwise.

    Raises
    ------
    InputFileError
        If the file does not exist, is a folder, cannot be read as a TIFF, or
        holds another layout (several channels, 4D data, an RGB stack; without
        ``frames``).
    ImageFormatError
        If its values are not real numbers.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputFileError(f"The input file {path} does not exist.")
    if path.is_dir():
        raise InputFileError(f"{path} is a folder, not a TIFF file.")
    if path.suffix.lower() == ".npy":
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputFileError(f"{path.name} cannot be read as a .npy file ({exc}).") from exc
        return _checked_image(path, data, "Q" * data.ndim, {}, {}, None, channels, frames)
    tifffile = _tifffile()
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = str(series.axes).upper()
            data = _lazy_tiff(path) if lazy else np.asarray(series.asarray())
            ij = tif.imagej_metadata or {}
            shaped = _shaped_metadata(tif)
            res = _page_resolution(tif.pages[0])
    except MemoryError:
        raise
    except OSError as exc:
        raise InputFileError(f"{path.name} cannot be read ({exc.strerror or exc}).") from exc
    except Exception as exc:  # tifffile raises many types for a file that is not a TIFF
        raise InputFileError(
            f"{path.name} cannot be read as a TIFF file ({type(exc).__name__}: {exc})."
        ) from exc
    return _checked_image(path, data, axes, ij, shaped, res, channels, frames)


def _lazy_tiff(path: Path) -> Any:
    """The first series of a TIFF as a zarr array reading pages on demand."""
    zarr = zarr_io._zarr()
    store = _tifffile().imread(path, aszarr=True, series=0, level=0)
    return zarr.open_array(store, mode="r")


def _checked_image(
    path: Path,
    data: Any,
    axes: str,
    ij: dict,
    shaped: dict,
    res: tuple[float, float] | None,
    channels: bool = False,
    frames: bool = False,
) -> TiffImage:
    """The image in ``data`` (axes as tifffile names them) if napari-sam can segment it
    (``frames``: 4D grayscale data too, as ``(T, Z, Y, X)``, and stacks of RGB planes)."""
    if len(axes) != data.ndim:
        axes = "Q" * data.ndim
    if data.dtype.kind == "c" or not (
        np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_
    ):
        raise ImageFormatError(
            f"{path.name} holds values of type {data.dtype}, not real numbers; napari-sam "
            "segments images of integers or floats."
        )
    # drop axes of length 1 (but never Y or X)
    keep = [i for i, (a, s) in enumerate(zip(axes, data.shape)) if s != 1 or a in "YX"]
    if len(keep) != data.ndim:
        if isinstance(data, np.ndarray):
            data = data.reshape(tuple(data.shape[i] for i in keep))
        else:  # a lazy (zarr) array: drop the axes without reading it
            data = zarr_io.LazyArray(data, keep)
        axes = "".join(axes[i] for i in keep)
    if channels:
        return _channels_first(path, data, axes, ij, shaped, res, frames)
    rgb = False
    if "S" in axes:
        if data.shape[axes.index("S")] not in (3, 4) or axes[-1] != "S":
            raise InputFileError(
                f"{path.name} has {data.shape[axes.index('S')]} samples per pixel (axes "
                f"{axes}, shape {data.shape}); napari-sam segments grayscale images, RGB "
                "images and grayscale stacks."
            )
        rgb = True
    elif (
        axes.startswith("Q")
        and data.ndim == 3
        and data.shape[-1] in (3, 4)
        and min(data.shape[:2]) > 4
    ):
        rgb, axes = True, axes[:-1] + "S"  # an untagged (H, W, 3) array
    if "C" in axes:
        n = data.shape[axes.index("C")]
        raise InputFileError(
            f"{path.name} has {n} channels (axes {axes}, shape {data.shape}); napari-sam "
            "segments one channel: save the channel to segment as its own TIFF (in Fiji: "
            "Image > Color > Split Channels)."
        )
    spatial = data.ndim - (1 if rgb else 0)
    if rgb and spatial != 2 and not (frames and spatial in (3, 4)):
        raise InputFileError(
            f"{path.name} is an RGB image with {spatial} spatial axes (axes {axes}, shape "
            f"{data.shape}); napari-sam segments 2D RGB images, so split the stack first."
        )
    if spatial not in ((2, 3, 4) if frames else (2, 3)):
        kinds = "2D images (Y, X), RGB images (Y, X, colour) and 3D stacks (Z, Y, X)"
        if frames:
            kinds = kinds.replace(" and 3D", ", 3D") + " and time-lapses of stacks (T, Z, Y, X)"
        split = "Split time points or channels" if not frames else "Split its outer axes"
        raise InputFileError(
            f"{path.name} has {spatial} axes ({spatial}D data: axes {axes}, shape {data.shape}); "
            f"napari-sam segments {kinds}. {split} into separate files first."
        )
    if min(data.shape[:spatial]) < 1:
        raise InputFileError(f"{path.name} holds an empty image (shape {data.shape}).")

    scale, unit = _scale_and_unit(spatial, ij, shaped, res)
    return TiffImage(data=data, rgb=rgb, scale=scale, unit=_napari_unit(unit), axes=axes)


def _scale_and_unit(
    spatial: int, ij: dict, shaped: dict, res: tuple[float, float] | None
) -> tuple[tuple[float, ...], Any]:
    """The scale of the ``spatial`` axes ((T,) (Z,) Y, X: frame interval, slice spacing,
    pixel size; 1 where unknown) and the unit, from ImageJ or tifffile's shaped metadata."""
    sy, sx = res if res is not None else (1.0, 1.0)
    unit = ij.get("unit") if ij else shaped.get("unit")
    scale: tuple[float, ...] = (_positive(sy), _positive(sx))
    if spatial >= 3:
        sz = ij.get("spacing") if ij else shaped.get("spacing")
        scale = (_positive(sz), *scale)
    if spatial == 4:
        scale = (_positive(ij.get("finterval") if ij else shaped.get("finterval")), *scale)
    return scale, unit


def _channels_first(
    path: Path,
    data: Any,
    axes: str,
    ij: dict,
    shaped: dict,
    res: tuple[float, float] | None,
    frames: bool = False,
) -> TiffImage:
    """The image of ``_checked_image`` with its channels as axis 0 (see ``read_tiff``;
    ``frames``: a time-lapse of stacks ``(C, T, Z, Y, X)`` too)."""
    if "C" in axes:
        c = axes.index("C")
    elif "S" in axes:
        c = axes.index("S")
    elif data.ndim >= 3 and axes[0] not in "ZTYX":
        c = 0
    else:  # one channel
        data, axes, c = np.asarray(data)[None], "C" + axes, 0
    if isinstance(data, np.ndarray):
        data = np.moveaxis(data, c, 0)
    else:  # lazy: still read one plane (page) at a time
        data = zarr_io.LazyArray(data, [c, *(a for a in range(data.ndim) if a != c)])
    axes = "C" + axes[:c] + axes[c + 1 :]
    spatial = data.ndim - 1
    if spatial not in ((2, 3, 4) if frames else (2, 3)):
        kinds = "2D images (C, Y, X) and of 3D stacks (C, Z, Y, X)"
        if frames:
            kinds = kinds.replace(" and of 3D", ", of 3D") + (
                " and of time-lapses of stacks (C, T, Z, Y, X)")
        raise InputFileError(
            f"{path.name} has {spatial} axes besides its channels (axes {axes}, shape "
            f"{data.shape}); napari-sam segments channels of {kinds}."
        )
    if min(data.shape) < 1:
        raise InputFileError(f"{path.name} holds an empty image (shape {data.shape}).")
    scale, unit = _scale_and_unit(spatial, ij, shaped, res)
    return TiffImage(
        data=data, rgb=False, scale=scale, unit=_napari_unit(unit), axes=axes, channel_axis=0
    )


def read_channel_files(
    path: str | os.PathLike[str], others: Sequence[str | os.PathLike[str]], *, lazy: bool = False
) -> TiffImage:
    """Channels saved one per file (Fiji's *Split Channels*) as one image, channels first:
    ``path`` is channel 0 and ``others`` channels 1, 2; ``data`` is ``(C, ...)`` with
    ``channel_axis=0``, a :class:`~napari_sam.workflows.zarr_io.ChannelStack` of the files
    (nothing is copied; with ``lazy`` nothing is read until a plane is asked for). Scale and
    unit are ``path``'s.

    Raises
    ------
    InputFileError
        A file that cannot be read, that holds colours, or whose shape differs from
        ``path``'s (one sentence).
    """
    images = []
    for name in (path, *others):
        image = read_image(name, lazy=lazy, frames=True)
        if image.rgb:
            raise InputFileError(
                f"{Path(name).name} is a colour image; each channel file must hold one "
                "grayscale channel."
            )
        if images and tuple(image.data.shape) != tuple(images[0].data.shape):
            raise InputFileError(
                f"{Path(name).name} has shape {tuple(image.data.shape)} but {Path(path).name} "
                f"has shape {tuple(images[0].data.shape)}; the channel files of one image must "
                "have the same shape."
            )
        images.append(image)
    first = images[0]
    data = zarr_io.ChannelStack([im.data for im in images])
    names = tuple(_stem(Path(name)) for name in (path, *others))
    return TiffImage(data=data, rgb=False, scale=first.scale, unit=first.unit,
                     axes="C" + first.axes, channel_axis=0, channel_names=names)


def read_stack(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 3D grayscale stack (Z, Y, X) from a TIFF (or ``.npy``) file with :func:`read_tiff`
    (``napari-sam embed`` reads stacks of colour planes separately).

    Raises
    ------
    InputFileError
        If the file cannot be read, or holds a 2D image, an RGB image or 4D data.
    ImageFormatError
        If its values are not real numbers.
    """
    image = read_tiff(path)
    name = Path(path).name
    needs = ("precomputing embeddings needs a 3D stack: grayscale (Z, Y, X) or of colour "
             "planes (Z, Y, X, RGB).")
    if image.rgb:
        raise InputFileError(
            f"{name} is a 2D colour (RGB) image of shape {image.data.shape}; {needs}"
        )
    if image.data.ndim != 3:
        raise InputFileError(f"{name} is a 2D image of shape {image.data.shape}; {needs}")
    return image.data


def _tifffile() -> Any:
    try:
        import tifffile
    except ImportError as exc:  # napari installs it; a bare napari-sam may not have it
        raise NapariSamError(
            "Reading and writing TIFF files needs the tifffile package; install it with "
            "`pip install tifffile`."
        ) from exc
    return tifffile


def _shaped_metadata(tif: Any) -> dict:
    meta = getattr(tif, "shaped_metadata", None)
    if meta:
        return dict(meta[0])
    return {}


def _page_resolution(page: Any) -> tuple[float, float] | None:
    """Pixel size ``(y, x)`` from the X/YResolution tags (pixels per unit), if present."""
    tags = page.tags
    out = []
    for name in ("YResolution", "XResolution"):
        tag = tags.get(name)
        if tag is None:
            return None
        value = tag.value
        try:
            num, den = value if isinstance(value, tuple) else (value, 1)
            per_unit = float(num) / float(den)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        if not np.isfinite(per_unit) or per_unit <= 0:
            return None
        out.append(1.0 / per_unit)
    return out[0], out[1]


def _positive(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 1.0
    return v if np.isfinite(v) and v > 0 else 1.0


def _napari_unit(unit: Any) -> str | None:
    if not unit or not isinstance(unit, str):
        return None
    key = unit.strip()
    return _NAPARI_UNITS.get(key.lower(), _NAPARI_UNITS.get(key, key))


def _imagej_unit(unit: Any) -> str | None:
    if unit is None:
        return None
    name = str(unit).strip()
    if not name:
        return None
    mapped = _IMAGEJ_UNITS.get(name.lower(), _IMAGEJ_UNITS.get(name))
    if mapped is not None:
        return mapped
    return name if name.isascii() else None


@dataclass
class FolderContents:
    """What :func:`find_images` found in a folder.

    Attributes
    ----------
    images : list of Path
        Image files (and zarr folders) to segment, sorted by name.
    skipped : list of (Path, str)
        Every other entry, with the reason in one sentence.
    """

    images: list[Path]
    skipped: list[tuple[Path, str]]


#: Entries of an input folder that napari-sam itself made (resume records).
_OWN_ENTRIES = (".napari-sam",)


def find_images(folder: str | os.PathLike[str]) -> FolderContents:
    """The images directly in ``folder`` (by file name ending), and every entry skipped.

    Images are files ending in one of :data:`IMAGE_SUFFIXES` and zarr folders.
    Subfolders are not searched; hidden files, other files and plain folders
    are listed in :attr:`FolderContents.skipped` with the reason, so that a
    batch run can say what it left out.
    """
    folder = Path(folder)
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for p in sorted(folder.iterdir()):
        if p.name in _OWN_ENTRIES:
            continue
        if p.name.startswith("."):
            skipped.append((p, "a hidden file"))
        elif p.is_dir():
            if zarr_io.is_zarr(p):
                images.append(p)
            else:
                skipped.append((p, "a folder (folders inside an input folder are not searched)"))
        elif p.suffix.lower() in IMAGE_SUFFIXES and p.suffix.lower() not in zarr_io.ZARR_SUFFIXES:
            images.append(p)
        else:
            skipped.append(
                (p, f"not an image napari-sam reads ({p.suffix or 'no extension'}); it reads "
                    f"{_readable_kinds()}")
            )
    return FolderContents(images, skipped)


def find_tiffs(folder: str | os.PathLike[str]) -> list[Path]:
    """The TIFF files directly in ``folder``, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".")
    )


def labels_path_for(image: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """Where the labels of ``image`` go in ``folder``: ``<name>_labels.tif``.

    ``<name>`` is the file name without its suffix (and without ``.ome``):
    ``cells.tif`` and ``cells.ome.tiff`` both give ``cells_labels.tif``. The
    ``napari-sam segment`` folder mode and the image series of the widgets
    name their outputs with this function.
    """
    return Path(folder) / f"{_stem(Path(image))}_labels.tif"


def _stem(path: Path) -> str:
    """The file name without its suffix (and without ``.ome``)."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return stem[:-4] if stem.lower().endswith(".ome") else stem


# ============================================================================= writing
def _label_dtype(labels: np.ndarray) -> np.dtype:
    if labels.size == 0:
        return np.dtype(np.uint16)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ImageFormatError(f"Label images hold object ids >= 0; this one has the value {lo}.")
    return np.dtype(np.uint16) if hi <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def write_labels_tiff(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    scale: Sequence[float] | None = None,
    unit: str | None = None,
    compression: str | None = "zlib",
) -> Path:
    """Write an instance label image as a TIFF, atomically.

    Parameters
    ----------
    path : path
        The ``.tif`` file to write (replaced if it exists).
    labels : ndarray ``(Y, X)``, ``(Z, Y, X)`` or ``(T, Z, Y, X)`` of non-negative integers
        Object ids, 0 = background (a 3D/4D array is written one plane at a
        time, so a memory-mapped one is never read whole). Or a plane source such as
        :class:`~napari_sam.workflows.timelapse.LineLabels` (``shape``, ``max_id()``,
        ``planes(dtype)`` yielding the ``(Y, X)`` planes in order), written one plane
        at a time. Stored as ``uint16`` when the largest id
        fits (ImageJ/Fiji open it as a 16-bit hyperstack), otherwise as
        ``uint32`` (a plain TIFF; Fiji opens it with Bio-Formats).
    scale : sequence of float, optional
        Pixel size per axis (``(y, x)``, ``(z, y, x)`` or ``(t, z, y, x)``,
        napari's layer ``scale``): Z goes to ImageJ's ``spacing``, T to its
        frame interval ``finterval``, Y and X to the resolution tags (pixels
        per unit).
    unit : str, optional
        Unit of ``scale`` (napari's ``"micrometer"``, ``"nm"``, ...); ImageJ's ``unit``.
    compression : str or None
        tifffile compression (``"zlib"`` needs no extra package).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ImageFormatError
        If ``labels`` is not a 2D/3D/4D array of non-negative integers, or ``scale``
        does not match its dimensions.
    OutputFileError
        If the file cannot be written.
    """
    tifffile = _tifffile()
    # A plane source (e.g. LineLabels) is written plane by plane, never whole.
    source = labels if callable(getattr(labels, "planes", None)) else None
    arr = None if source is not None else id_array(labels)
    shape = tuple(int(s) for s in (arr.shape if arr is not None else source.shape))
    ndim = len(shape)
    if ndim not in (2, 3, 4):
        raise ImageFormatError(
            f"Label images are saved as 2D (Y, X), 3D (Z, Y, X) or 4D (T, Z, Y, X) TIFFs; "
            f"this one has {ndim} axes (shape {shape})."
        )
    if scale is None:
        scale = (1.0,) * ndim
    scale = tuple(float(s) for s in scale)
    if len(scale) != ndim or not all(np.isfinite(s) and s > 0 for s in scale):
        raise ImageFormatError(
            f"The scale {scale} does not fit a label image of shape {shape} (one positive "
            "pixel size per axis)."
        )
    if arr is not None:
        dtype = _label_dtype(arr)
        # 3D/4D plane by plane: no whole-image copy in the file's type
        data: Any = np.ascontiguousarray(arr, dtype=dtype) if ndim == 2 else (
            np.ascontiguousarray(arr[index], dtype=dtype) for index in np.ndindex(*shape[:-2])
        )
    else:
        dtype = np.dtype(np.uint16 if source.max_id() <= np.iinfo(np.uint16).max else np.uint32)
        data = source.planes(dtype)
    ij_unit = _imagej_unit(unit)
    axes = "TZYX"[4 - ndim:]
    kwargs: dict[str, Any] = {
        "resolution": (1.0 / scale[-1], 1.0 / scale[-2]),
        "compression": compression,
    }
    meta: dict[str, Any] = {"axes": axes}
    if ndim >= 3:
        meta["spacing"] = scale[-3]
    if ndim == 4:
        meta["finterval"] = scale[0]
    if ij_unit:
        meta["unit"] = ij_unit
    if dtype == np.uint16:
        kwargs.update(imagej=True, metadata=meta)
    else:
        # one grey page per plane: tifffile would otherwise store 3 or 4 slices as the
        # samples of planar RGB(A) pages, which Fiji shows as a colour image
        kwargs.update(metadata=meta, resolutionunit="NONE", photometric="minisblack")
    if ndim > 2 or source is not None:
        kwargs.update(shape=shape, dtype=dtype)
    path = Path(path).expanduser()
    try:
        with atomic_write(path) as tmp:
            tifffile.imwrite(tmp, data, **kwargs)
    except OutputFileError:
        raise
    except OSError as exc:
        raise OutputFileError(f"{path} cannot be written ({exc.strerror or exc}).") from exc
    return path


def write_labels(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    scale: Sequence[float] | None = None,
    unit: str | None = None,
) -> Path:
    """Write a label image, atomically: OME-Zarr if ``path`` ends in ``.zarr``, else TIFF.

    See :func:`write_labels_tiff` and :func:`~napari_sam.workflows.zarr_io.write_labels_zarr`.
    """
    if Path(path).suffix.lower() in zarr_io.ZARR_SUFFIXES:
        return zarr_io.write_labels_zarr(path, labels, scale=scale, unit=unit)
    return write_labels_tiff(path, labels, scale=scale, unit=unit)


# COCO JSON lives in workflows.coco; its names are kept here for existing imports.
from napari_sam.workflows.coco import (  # noqa: E402
    CocoWriter,
    labels_to_coco,
    plane_annotations,
    write_coco,
)
