"""A finished tile's piece on disk, so that a rerun skips the tile.

A :class:`~napari_sam.workflows.batch_tiles.TilePiece` is stored as one
uncompressed ``.npz`` of plain arrays (no pickled objects: it is read back
with ``allow_pickle=False``), written atomically by the tile task on the
worker (:func:`save_piece`). Fields:

- ``format`` (int), ``identity`` (the recipe's identity, str), ``mode``
  (``"amg"`` or ``"ais"``), ``index`` (the tile's index);
- AIS: ``maps`` ``(3, h, w)`` float32 over the tile's inner region;
- grid generator: the kept masks as columns ``boxes`` ``(N, 4)`` int64
  (x0, y0, x1, y1 inclusive, plane coordinates), ``iou`` / ``stability``
  ``(N,)`` float32, ``points`` ``(N, 2)`` float64, ``crop_boxes`` ``(N, 4)``
  int64, ``areas`` ``(N,)`` int64, ``inner`` ``(N,)`` float32, ``n_masks``
  (int), and the bit-packed box windows concatenated in ``bits`` (uint8)
  with each mask's byte count in ``bit_counts`` ``(N,)`` int64.

:func:`load_piece` checks every field (shapes, dtypes, byte counts against
the boxes, the recipe, the tile's index); a torn, truncated or otherwise
unreadable file gives None, and the tile is segmented again.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import OutputFileError
from napari_sam.predictors.automatic import _MaskStore
from napari_sam.runtime.files import atomic_write
from napari_sam.workflows.batch_tiles import TilePiece
from napari_sam.workflows.tiled_automatic import TileMasks

__all__ = ["PIECE_FORMAT", "load_piece", "read_piece", "save_piece"]

#: Bumped when the fields change (older pieces are then segmented again).
PIECE_FORMAT = 1

_COLUMNS = {  # name -> (dtype, trailing shape)
    "boxes": (np.int64, (4,)),
    "iou": (np.float32, ()),
    "stability": (np.float32, ()),
    "points": (np.float64, (2,)),
    "crop_boxes": (np.int64, (4,)),
    "areas": (np.int64, ()),
    "inner": (np.float32, ()),
    "bit_counts": (np.int64, ()),
}
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def save_piece(path: str | Path, piece: TilePiece, identity: str) -> None:
    """Write ``piece`` (made under the recipe of ``identity``) to ``path`` atomically."""
    fields: dict[str, Any] = {
        "format": np.int64(PIECE_FORMAT),
        "identity": np.str_(identity),
        "mode": np.str_(piece.mode),
        "index": np.int64(piece.index),
    }
    if piece.mode == "ais":
        fields["maps"] = np.ascontiguousarray(piece.maps, dtype=np.float32)
    else:
        kept = piece.masks
        store = kept.masks
        bits = [np.asarray(b, dtype=np.uint8).ravel() for b in store.bits]
        fields.update(
            boxes=store.boxes, iou=store.iou, stability=store.stability, points=store.points,
            crop_boxes=store.crop_boxes, areas=store.areas, inner=kept.inner,
            n_masks=np.int64(kept.n_masks),
            bit_counts=np.array([b.size for b in bits], dtype=np.int64),
            bits=np.concatenate(bits) if bits else np.zeros(0, dtype=np.uint8),
        )  # fmt: skip
        for name, (dtype, _) in _COLUMNS.items():
            fields[name] = np.ascontiguousarray(fields[name], dtype=dtype)
    with atomic_write(path, what="a finished tile") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **fields)


def load_piece(
    path: str | Path,
    index: int,
    identity: str,
    inner_shape: tuple[int, int] | None = None,
) -> TilePiece | None:
    """The piece of tile ``index`` stored at ``path``, or None if it is missing,
    unreadable, inconsistent, of another recipe or (AIS) not of ``inner_shape``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if (
                int(data["format"]) != PIECE_FORMAT
                or str(data["identity"]) != identity
                or int(data["index"]) != int(index)
            ):
                return None
            mode = str(data["mode"])
            if mode == "ais":
                return _ais_piece(data, int(index), inner_shape)
            if mode == "amg":
                return _amg_piece(data, int(index))
    except _UNREADABLE:
        return None
    return None


def read_piece(path: str | Path, index: int, identity: str) -> TilePiece:
    """:func:`load_piece` for the merge, which needs every tile.

    Raises
    ------
    OutputFileError
        If the stored tile cannot be read back (one sentence: run again).
    """
    piece = load_piece(path, index, identity)
    if piece is None:
        raise OutputFileError(
            f"The finished tile {path} can no longer be read; run the segmentation again "
            "(the tile is then segmented anew)."
        )
    return piece


def _ais_piece(data: Any, index: int, inner_shape: tuple[int, int] | None) -> TilePiece | None:
    maps = data["maps"]
    if maps.dtype != np.float32 or maps.ndim != 3 or maps.shape[0] != 3:
        return None
    if inner_shape is not None and tuple(maps.shape[1:]) != tuple(inner_shape):
        return None
    return TilePiece("ais", index, maps=maps)


def _amg_piece(data: Any, index: int) -> TilePiece | None:
    columns = {name: data[name] for name in _COLUMNS}
    n = len(columns["boxes"])
    for name, (dtype, trailing) in _COLUMNS.items():
        if columns[name].dtype != dtype or columns[name].shape != (n, *trailing):
            return None
    bits, counts, boxes = data["bits"], columns["bit_counts"], columns["boxes"]
    if bits.dtype != np.uint8 or bits.ndim != 1 or int(counts.sum()) != bits.size:
        return None
    # each mask's window is its box, packed to bits (no bits for an empty mask)
    pixels = (boxes[:, 3] - boxes[:, 1] + 1) * (boxes[:, 2] - boxes[:, 0] + 1)
    expected = np.where(columns["areas"] > 0, (pixels + 7) // 8, 0)
    if n and not np.array_equal(counts, expected):
        return None
    ends = np.cumsum(counts)
    store = _MaskStore(
        boxes=boxes, iou=columns["iou"], stability=columns["stability"],
        points=columns["points"], crop_boxes=columns["crop_boxes"], areas=columns["areas"],
        bits=[bits[e - c : e] for e, c in zip(ends.tolist(), counts.tolist())],
    )  # fmt: skip
    masks = TileMasks(store, columns["inner"], int(data["n_masks"]))
    return TilePiece("amg", index, masks=masks)
