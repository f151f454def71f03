"""Zarr and OME-Zarr: huge images read lazily, label volumes written chunk by chunk.

Reading (:func:`open_zarr_image`): a plain zarr array, or an OME-Zarr image
(NGFF 0.4 with zarr v2 ``.zattrs``, or NGFF 0.5 with zarr v3 ``zarr.json``
attributes under ``"ome"``). For OME-Zarr the full-resolution level (the
first dataset of the first multiscale) is read; its axes names become
tifffile-style letters (``t z y x c`` -> ``T Z Y X C``) and its ``scale``
transformation and axis units the pixel size. The data is returned as the
zarr array itself: nothing is read until a plane is asked for.
:class:`LazyArray` drops axes of length 1 from such an array without reading
it (a plain array, not a dask array: reading it never involves a dask
scheduler, which matters inside the tasks of a Dask cluster).

Writing (:class:`LabelsZarr`): an OME-Zarr label image (NGFF 0.4, zarr v2
format, ``/`` chunk separator, one resolution level ``"0"``, ``uint32``
object ids, axes ``z y x`` or ``y x`` (``t z y x`` for a time-lapse of
stacks) with units and the pixel size as a ``scale`` transformation, and
``image-label`` metadata so napari opens it as a Labels layer). Chunks hold
at most one slice, so the workers of a cluster write different slices in
parallel without touching each other's chunks.
:func:`write_labels_zarr` writes a whole in-memory label image; the folder is
built under a temporary name and renamed into place when complete.

No napari, torch or dask here; ``zarr`` is imported when used.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import ImageFormatError, InputFileError, NapariSamError, OutputFileError
from napari_sam.runtime.files import replace_dir, temporary_dir
from napari_sam.workflows.labels import id_array

__all__ = [
    "ZARR_SUFFIXES",
    "LabelsZarr",
    "LazyArray",
    "ZarrSource",
    "is_zarr",
    "open_zarr_image",
    "write_labels_zarr",
]

#: Folder name endings taken for zarr (``.ome.zarr`` ends in ``.zarr`` too).
ZARR_SUFFIXES = (".zarr",)
#: Files that mark a folder as a zarr array or group.
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
#: Largest chunk side of written label volumes (pixels).
CHUNK_SIDE = 2048
#: NGFF unit names for the units napari-sam knows (the rest are written as given).
_NGFF_UNITS = {"micron": "micrometer", "um": "micrometer", "µm": "micrometer", "nm": "nanometer"}


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as exc:  # a declared dependency; a broken install may lack it
        raise NapariSamError(
            "Reading and writing zarr needs the zarr package; install it with "
            "`pip install zarr`."
        ) from exc
    return zarr


def is_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zarr array or group (a folder holding zarr metadata)."""
    path = Path(path)
    if not path.is_dir():
        return False
    return any((path / name).is_file() for name in _ZARR_MARKERS)


@dataclass
class ZarrSource:
    """What :func:`open_zarr_image` found.

    Attributes
    ----------
    data : zarr array
        The full-resolution image (read when indexed).
    axes : str
        One tifffile-style letter per axis of ``data`` (``Q`` where unknown).
    scale : dict of str to float
        Pixel size per axis letter (only those the metadata gives).
    unit : str or None
        The unit of the spatial axes, if the metadata names one.
    """

    data: Any
    axes: str
    scale: dict[str, float]
    unit: str | None


def open_zarr_image(path: str | os.PathLike[str]) -> ZarrSource:
    """Open a zarr array or an OME-Zarr image lazily.

    Raises
    ------
    InputFileError
        If ``path`` is not a zarr folder, cannot be opened, or is a group with
        neither OME-Zarr multiscales nor a single array.
    """
    zarr = _zarr()
    path = Path(path).expanduser()
    name = path.name
    if not is_zarr(path):
        raise InputFileError(f"{name} is not a zarr folder (no zarr metadata in it).")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for damaged metadata
        raise InputFileError(
            f"{name} cannot be opened as zarr ({type(exc).__name__}: {exc})."
        ) from exc
    axes, scale, unit = "", {}, None
    if hasattr(node, "shape"):
        array = node
    else:
        attrs = dict(node.attrs)
        ome = attrs.get("ome", attrs)
        multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
        if multiscales:
            array, axes, scale, unit = _multiscale_level0(node, multiscales[0], name)
        else:
            arrays = list(node.array_keys())
            if len(arrays) != 1:
                raise InputFileError(
                    f"{name} is a zarr group with {len(arrays)} arrays and no OME-Zarr "
                    "metadata; give the path of the array to segment (e.g. "
                    f"{name}/{arrays[0] if arrays else 'data'})."
                )
            array = node[arrays[0]]
    if len(axes) != array.ndim:
        axes = "Q" * array.ndim
    return ZarrSource(data=array, axes=axes, scale=scale, unit=unit)


def full_key(key: Any, shape: Sequence[int]) -> tuple[Any, ...]:
    """An index of integers and slices (and ``...``) written out: one entry per axis of an
    array of ``shape``.

    Raises
    ------
    IndexError
        More indices than axes.
    """
    ndim = len(shape)
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    key = key + (slice(None),) * (ndim - len(key))
    if len(key) != ndim:
        raise IndexError(f"too many indices for an array of shape {tuple(shape)}")
    return key


class ChannelStack:
    """Arrays of one shape (one file per channel) seen as one channels-first array
    ``(C, ...)``; indexing reads only the channels and the part asked for, from each
    array (numpy, zarr or :class:`LazyArray`), and returns a numpy array.
    """

    def __init__(self, arrays: Sequence[Any]) -> None:
        self.arrays = list(arrays)
        shapes = {tuple(int(v) for v in a.shape) for a in self.arrays}
        if len(shapes) != 1:
            raise ValueError("the channel arrays must have one shape")
        self.shape = (len(self.arrays), *shapes.pop())
        self.dtype = np.result_type(*(np.dtype(a.dtype) for a in self.arrays))
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        first, *rest = full_key(key, self.shape)
        if isinstance(first, (int, np.integer)):
            return np.asarray(self.arrays[int(first)][tuple(rest)], dtype=self.dtype)
        chosen = range(len(self.arrays))[first]
        return np.stack([np.asarray(self.arrays[i][tuple(rest)], dtype=self.dtype)
                         for i in chosen])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


class LazyArray:
    """An array-like over a lazily read array (zarr) with some length-1 axes left out, and
    its axes possibly in another order.

    Indexing with integers and slices (and ``...``) reads only what is asked
    for and returns a numpy array; ``np.asarray`` reads everything.

    Parameters
    ----------
    array : array-like
        Has ``shape``, ``dtype`` and numpy-style ``__getitem__`` (a zarr array, or
        another LazyArray).
    keep : sequence of int
        The axes of ``array`` that remain, in the order they have here (e.g. ``(2, 0,
        1, 3, 4)`` puts axis 2 first); every other axis must have length 1.
    """

    def __init__(self, array: Any, keep: Sequence[int]) -> None:
        keep = tuple(int(k) for k in keep)
        if isinstance(array, LazyArray):  # one level: the axes of the array underneath
            array, keep = array.array, tuple(array.keep[k] for k in keep)
        self.array = array
        self.keep = keep
        dropped = [i for i in range(array.ndim) if i not in self.keep]
        if len(set(keep)) != len(keep) or any(array.shape[i] != 1 for i in dropped):
            raise ValueError("only axes of length 1 can be left out")
        self.shape = tuple(int(array.shape[i]) for i in self.keep)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = full_key(key, self.shape)
        full: list[Any] = [0] * self.array.ndim
        for axis, k in zip(self.keep, key):
            full[axis] = k
        out = np.asarray(self.array[tuple(full)])
        # the axes left (not indexed by an integer) come in the array's order: put them in ours
        left = [axis for axis, k in zip(self.keep, key) if not _is_int(k)]
        order = sorted(left)
        return out.transpose([order.index(axis) for axis in left]) if left != order else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def _multiscale_level0(
    group: Any, multiscale: dict, name: str
) -> tuple[Any, str, dict[str, float], str | None]:
    datasets = multiscale.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise InputFileError(f"The OME-Zarr metadata of {name} lists no dataset to read.")
    try:
        array = group[str(datasets[0]["path"])]
    except Exception as exc:
        raise InputFileError(
            f"{name} names the dataset {datasets[0]['path']!r}, which cannot be opened "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    letters = {"t": "T", "time": "T", "c": "C", "channel": "C", "z": "Z", "y": "Y", "x": "X"}
    axes, units = "", {}
    for ax in multiscale.get("axes") or []:
        ax_name = ax.get("name", "") if isinstance(ax, dict) else str(ax)
        letter = letters.get(ax_name.lower(), "Q")
        axes += letter
        if isinstance(ax, dict) and ax.get("unit"):
            units[letter] = str(ax["unit"])
    factors = np.ones(len(axes))
    for transforms in (datasets[0].get("coordinateTransformations"),
                       multiscale.get("coordinateTransformations")):  # fmt: skip
        for t in transforms or []:
            if t.get("type") == "scale" and len(t.get("scale", ())) == len(axes):
                factors = factors * np.asarray(t["scale"], dtype=float)
    scale = {a: float(s) for a, s in zip(axes, factors) if a in "TZYX"}
    unit = units.get("X") or units.get("Y")
    return array, axes, scale, unit


# ============================================================================= writing
def _ngff_unit(unit: str | None) -> str | None:
    if not unit:
        return None
    return _NGFF_UNITS.get(unit, unit)


def _metadata(ndim: int, scale: Sequence[float], unit: str | None, name: str) -> dict:
    axes = [{"name": a, "type": "space"} for a in "zyx"[3 - min(ndim, 3):]]
    ngff_unit = _ngff_unit(unit)
    if ngff_unit:
        for ax in axes:
            ax["unit"] = ngff_unit
    if ndim == 4:  # a time-lapse of stacks: the time step's unit is not known
        axes.insert(0, {"name": "t", "type": "time"})
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [float(s) for s in scale]}
                        ],
                    }
                ],
            }
        ],
        "image-label": {"version": "0.4", "source": {"image": ""}},
    }


def _create_v2(zarr: Any, path: Path, shape: tuple[int, ...], attrs: dict) -> Any:
    """A zarr v2 group at ``path`` with ``attrs`` and an all-zero uint32 array ``"0"``
    (``/`` chunk separator), with zarr-python 3 or 2."""
    if int(zarr.__version__.split(".")[0]) >= 3:
        group = zarr.open_group(str(path), mode="w", zarr_format=2)
        group.attrs.update(attrs)
        return group.create_array(
            "0",
            shape=shape,
            chunks=chunk_shape(shape),
            dtype="uint32",
            fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
    group = zarr.open_group(str(path), mode="w")
    group.attrs.update(attrs)
    return group.create_dataset(
        "0",
        shape=shape,
        chunks=chunk_shape(shape),
        dtype="uint32",
        fill_value=0,
        dimension_separator="/",
    )


def chunk_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Chunks of a label volume: one plane each, at most :data:`CHUNK_SIDE` wide."""
    plane = tuple(min(int(s), CHUNK_SIDE) for s in shape[-2:])
    return (*(1,) * (len(shape) - 2), *plane)


class LabelsZarr:
    """An OME-Zarr label image on disk (see the module docstring for the layout).

    :meth:`create` makes an empty one (all zeros, ``uint32``); :meth:`open`
    opens an existing one for reading and writing; :attr:`array` is the zarr
    array of the full-resolution level, ``(Y, X)``, ``(Z, Y, X)`` or ``(T, Z, Y, X)``.
    """

    def __init__(self, path: Path, array: Any) -> None:
        self.path = path
        self.array = array

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        shape: Sequence[int],
        *,
        scale: Sequence[float] | None = None,
        unit: str | None = None,
    ) -> LabelsZarr:
        """Create (replacing whatever is at ``path``) an all-zero label volume.

        Raises
        ------
        ImageFormatError
            If ``shape`` is not 2D, 3D or 4D, or ``scale`` does not fit it.
        OutputFileError
            If the folder cannot be written.
        """
        zarr = _zarr()
        path = Path(path).expanduser()
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3, 4) or min(shape) < 1:
            raise ImageFormatError(
                f"Label images are saved as 2D (Y, X), 3D (Z, Y, X) or 4D (T, Z, Y, X) zarr; "
                f"this one has shape {shape}."
            )
        scale = tuple(float(s) for s in (scale or (1.0,) * len(shape)))
        if len(scale) != len(shape) or not all(np.isfinite(s) and s > 0 for s in scale):
            raise ImageFormatError(
                f"The scale {scale} does not fit a label image of shape {shape} (one positive "
                "pixel size per axis)."
            )
        try:
            if path.exists():
                shutil.rmtree(path)
            array = _create_v2(zarr, path, shape, _metadata(len(shape), scale, unit, path.name))
        except OSError as exc:
            raise OutputFileError(f"{path} cannot be written ({exc.strerror or exc}).") from exc
        return cls(path, array)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LabelsZarr:
        """Open a label volume made by :meth:`create` for reading and writing."""
        zarr = _zarr()
        path = Path(path).expanduser()
        try:
            array = zarr.open_array(str(path / "0"), mode="r+")
        except Exception as exc:
            raise OutputFileError(
                f"The label volume {path} cannot be opened ({type(exc).__name__}: {exc})."
            ) from exc
        return cls(path, array)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    def write(self, index: int | None, plane: np.ndarray) -> None:
        """Write one slice (``index``) of a stack, or the whole 2D image (``index=None``)."""
        data = np.ascontiguousarray(plane, dtype=np.uint32)
        try:
            if index is None:
                self.array[...] = data
            else:
                self.array[int(index)] = data
        except OSError as exc:
            raise OutputFileError(
                f"{self.path} cannot be written ({exc.strerror or exc})."
            ) from exc

    def read(self, index: int | None = None) -> np.ndarray:
        """One slice of a stack (or the whole 2D image) as a ``uint32`` array."""
        return np.asarray(self.array[...] if index is None else self.array[int(index)])


def write_labels_zarr(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    scale: Sequence[float] | None = None,
    unit: str | None = None,
) -> Path:
    """Write a whole label image as OME-Zarr, atomically (built aside, then renamed).

    Parameters
    ----------
    path : path
        The ``.zarr`` folder to write (replaced if it exists).
    labels : ndarray ``(Y, X)``, ``(Z, Y, X)`` or ``(T, Z, Y, X)`` of non-negative integers
        Object ids, 0 = background; stored as ``uint32``.
    scale : sequence of float, optional
        Pixel size per axis (napari's layer ``scale``).
    unit : str, optional
        Unit of ``scale`` (``"micrometer"``, ...).

    Raises
    ------
    ImageFormatError
        If ``labels`` is not a 2D/3D/4D array of non-negative integers that fit ``uint32``.
    OutputFileError
        If the folder cannot be written.
    """
    arr = id_array(labels)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > np.iinfo(np.uint32).max):
        raise ImageFormatError("Label zarr files hold object ids from 0 to 4294967295.")
    path = Path(path).expanduser()
    with temporary_dir(path, error=OutputFileError) as tmp:
        LabelsZarr.create(tmp, arr.shape, scale=scale, unit=unit).write(None, arr)
        _rename_metadata(tmp, path.name)
        replace_dir(tmp, path, error=OutputFileError)
    return path


def _rename_metadata(folder: Path, name: str) -> None:
    """Put the final name (not the temporary one) into the multiscale metadata."""
    attrs = folder / ".zattrs"
    meta = json.loads(attrs.read_text())
    for ms in meta.get("multiscales", []):
        ms["name"] = name
    attrs.write_text(json.dumps(meta, indent=2))


def finish_labels_zarr(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Move a complete label volume built at ``tmp`` to ``path`` (replacing it) in one rename."""
    tmp, path = Path(tmp), Path(path).expanduser()
    _rename_metadata(tmp, path.name)
    replace_dir(tmp, path, error=OutputFileError)
    return path


def _is_int(key: Any) -> bool:
    return isinstance(key, (int, np.integer))
