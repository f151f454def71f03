"""napari writer contribution: save a Labels layer as a TIFF (see :mod:`napari_sam.workflows.io`).

``File > Save Selected Layers…`` with a ``.tif``/``.tiff`` name and "SAM for microscopy"
as the writer saves the label image compressed (zlib), ImageJ-compatible
(a 16-bit hyperstack for up to 65535 objects), with the layer's scale as the
pixel/voxel size and its unit, and writes the layer's object table
(:func:`napari_sam.workflows.tables.object_table`: one row per object, sizes and
centres in the layer's units, SAM's scores and method from the layer's
``features``) as a CSV file beside it (``cells_labels.tif`` ->
``cells_labels.csv``). No napari import here: npe2 calls this function with
the layer's data and its metadata dict.
"""

from __future__ import annotations

from typing import Any

from napari_sam.errors import ImageFormatError
from napari_sam.workflows.io import write_labels_tiff
from napari_sam.workflows.tables import (
    merge_sam_columns,
    object_table,
    table_path_for,
    write_object_table,
)

__all__ = ["write_labels"]


def _unit_name(units: Any) -> str | None:
    """The unit of the last (X) axis as text, from napari's ``units`` (pint units)."""
    if units is None:
        return None
    if isinstance(units, (list, tuple)):
        if not units:
            return None
        units = units[-1]
    name = str(units).strip()
    return name or None


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer (``data``, ``meta`` as napari passes them) to ``path``.

    Returns
    -------
    list of str
        The written label TIFF and the object table CSV beside it.

    Raises
    ------
    ImageFormatError
        For a layer that is not 2D, 3D or 4D (T, Z, Y, X).
    OutputFileError
        If the file cannot be written.
    """
    if meta.get("multiscale") and isinstance(data, (list, tuple)):
        data = data[0]
    ndim = len(getattr(data, "shape", ()))
    if ndim not in (2, 3, 4):
        raise ImageFormatError(
            f"napari-sam saves 2D, 3D and (T, Z, Y, X) label layers as TIFF; "
            f"“{meta.get('name', 'labels')}” has {ndim} dimensions."
        )
    scale = meta.get("scale")
    scale = tuple(scale)[-ndim:] if scale is not None else None
    unit = _unit_name(meta.get("units"))
    if unit == "pixel" and scale is not None and all(s == 1 for s in scale):
        unit = None
    written = write_labels_tiff(path, data, scale=scale, unit=unit)
    translate = meta.get("translate")
    translate = tuple(translate)[-ndim:] if translate is not None else None
    table = object_table(data, scale=scale, translate=translate, unit=unit)
    table = merge_sam_columns(table, meta.get("features"))
    csv = write_object_table(table_path_for(written), table)
    return [str(written), str(csv)]
