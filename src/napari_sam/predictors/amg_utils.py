"""Mask utilities of the automatic mask generator.

Point grids and crop boxes, the stability score, boxes around masks, batched
box non-maximum suppression (pure torch, no torchvision), run-length encoding
(uncompressed and COCO), and removal of small holes and islands.

Conventions follow SAM:

- Boxes are ``(x0, y0, x1, y1)`` where ``x1``/``y1`` are the *last* column/row
  that belongs to the mask (inclusive), so a one-pixel mask has a box of zero
  width; records report them as ``(x, y, w, h)`` with ``w = x1 - x0``.
- Points are ``(x, y)``.
- Uncompressed run-length encodings (RLE) are ``{"size": [h, w], "counts": [...]}``
  with counts of alternating 0/1 runs over the mask in column-major (Fortran)
  order, starting with a run of zeros (which may be empty), as ``pycocotools``
  expects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "area_from_rle",
    "batched_nms",
    "box_area",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "coco_encode_rle",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_coco_rle",
    "mask_to_rle",
    "masks_to_boxes",
    "nms",
    "remove_small_regions",
    "rle_to_mask",
    "stability_score",
]


# ----------------------------------------------------------------------------- point grids
def build_point_grid(n_per_side: int) -> np.ndarray:
    """``(n², 2)`` points ``(x, y)`` in ``[0, 1]``: the centres of an ``n × n`` grid of cells.

    Points are ordered row by row (x varies fastest).
    """
    n = int(n_per_side)
    if n < 1:
        raise ValueError(f"A point grid needs at least 1 point per side, got {n_per_side}.")
    centres = np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One point grid per crop layer; layer ``i`` has ``n_per_side // scale_per_layer**i`` per side.

    (The side is ``int(n_per_side / scale_per_layer**i)``, as in SAM.)
    """
    return [
        build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)
    ]


# ----------------------------------------------------------------------------- crops
def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes ``(x0, y0, x1, y1)`` (exclusive ends) of all crop layers and their layer index.

    Layer 0 is the whole image. Layer ``i >= 1`` cuts the image into
    ``2**i × 2**i`` crops that overlap by ``overlap_ratio × short side × 2 / 2**i``
    pixels (rounded down). Within a layer, crops are listed column by column
    (all crops of the first column of x offsets, top to bottom, then the next).
    """
    im_h, im_w = int(im_size[0]), int(im_size[1])
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers: list[int] = [0]
    short_side = min(im_h, im_w)
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n))
        # Crop side such that n crops with the given overlap cover the image.
        crop_w = math.ceil((overlap * (n - 1) + im_w) / n)
        crop_h = math.ceil((overlap * (n - 1) + im_h) / n)
        xs = [(crop_w - overlap) * i for i in range(n)]
        ys = [(crop_h - overlap) * i for i in range(n)]
        for x0 in xs:
            for y0 in ys:
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(layer)
    return boxes, layers


def box_xyxy_to_xywh(box: Sequence[float] | np.ndarray | torch.Tensor) -> list:
    """``[x0, y0, x1, y1]`` → ``[x0, y0, x1 - x0, y1 - y0]`` as a list of Python numbers."""
    x0, y0, x1, y1 = (b.item() if hasattr(b, "item") else b for b in box)
    return [x0, y0, x1 - x0, y1 - y0]


def is_box_near_crop_edge(
    boxes: torch.Tensor,
    crop_box: Sequence[int],
    orig_box: Sequence[int],
    atol: float = 20.0,
) -> torch.Tensor:
    """Which boxes (in crop coordinates) lie within ``atol`` pixels of a crop edge that is
    not also an edge of the original image (such masks are probably cut by the crop).

    Parameters
    ----------
    boxes : Tensor ``(N, 4)``
        ``(x0, y0, x1, y1)`` relative to the crop's top-left corner.
    crop_box, orig_box : ``(x0, y0, x1, y1)``
        The crop and the whole image, in image coordinates.

    Returns
    -------
    Tensor ``(N,)`` bool
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    offset = crop[[0, 1, 0, 1]]
    b = boxes.float() + offset
    near_crop = (b - crop).abs() <= atol
    near_image = (b - orig).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


# ----------------------------------------------------------------------------- scores, boxes
def stability_score(
    logits: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """IoU between the masks thresholded at ``threshold ± offset`` (one contains the other).

    Counts the pixels above both thresholds; no thresholded copies are kept.
    ``logits`` is ``(..., H, W)``; returns ``(...)`` float32 (NaN where no pixel
    is above the lower threshold).
    """
    high = count_above(logits, mask_threshold + threshold_offset)
    low = count_above(logits, mask_threshold - threshold_offset)
    return high / low


def count_above(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixels above ``threshold`` in each ``(H, W)`` plane of ``x`` ``(..., H, W)``:
    ``(...)`` int32."""
    return _count(x, lambda t: t > threshold)


def count_true(masks: torch.Tensor) -> torch.Tensor:
    """Pixels set in each ``(H, W)`` plane of boolean ``masks`` ``(..., H, W)``: ``(...)`` int32."""
    return _count(masks, lambda t: t)


def _count(x: torch.Tensor, select: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """True pixels of ``select(plane)`` for each ``(H, W)`` plane of ``x``, as ``(...)`` int32.

    On the CPU plane by plane, each with ATen's whole-tensor count: a
    reduction over some axes of a whole batch first converts all of it to the
    count's dtype, a fresh tensor several times the size of the masks (tens
    of MB per batch of 1024² masks), which costs more than the count. On a
    GPU in one reduction.
    """
    if x.device.type != "cpu" or x.dim() == 2 or x.numel() == 0:
        return select(x).sum(dim=(-2, -1), dtype=torch.int32)
    planes = x.reshape(-1, *x.shape[-2:])
    counts = torch.stack([torch.count_nonzero(select(plane)) for plane in planes])
    return counts.to(torch.int32).reshape(x.shape[:-2])


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes ``(x0, y0, x1, y1)`` (inclusive, int64) around binary masks ``(..., H, W)``.

    Empty masks get ``(0, 0, 0, 0)``. Uses row/column any-reductions.
    """
    h, w = masks.shape[-2:]
    lead = masks.shape[:-2]
    if masks.numel() == 0:
        return torch.zeros((*lead, 4), dtype=torch.int64, device=masks.device)
    m = masks.reshape(-1, h, w)
    if m.dtype != torch.bool:
        m = m != 0
    # Any-reductions as maxima of the masks' bytes (0/1): on the CPU, ``any``
    # over booleans runs tens of times slower than ``amax`` over uint8.
    u8 = m.view(torch.uint8)
    rows = u8.amax(dim=2)  # (N, H)
    cols = u8.amax(dim=1)  # (N, W)
    y0 = rows.argmax(dim=1)
    y1 = (h - 1) - rows.flip(1).argmax(dim=1)
    x0 = cols.argmax(dim=1)
    x1 = (w - 1) - cols.flip(1).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.int64)
    boxes = boxes * rows.any(dim=1, keepdim=True)
    return boxes.reshape(*lead, 4)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``(x1 - x0) * (y1 - y0)`` of ``(N, 4)`` boxes (dtype of ``boxes``)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# ----------------------------------------------------------------------------- NMS
#: Rows of the pairwise-overlap matrix computed at once (bounds NMS memory to
#: ``_NMS_BLOCK × N`` booleans).
_NMS_BLOCK = 2048


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float,
) -> torch.Tensor:
    """Greedy non-maximum suppression, independently per category.

    Boxes are visited in order of decreasing score (ties: lower index first); a
    box is kept unless its IoU with an already kept box of the same category is
    *greater* than ``iou_threshold``. Same semantics as
    ``torchvision.ops.batched_nms``; IoU is computed in the boxes' dtype as
    ``inter / (area_a + area_b - inter)`` with zero-area boxes never suppressing
    anything (their IoU is NaN or 0).

    Parameters
    ----------
    boxes : Tensor ``(N, 4)`` float
        ``(x0, y0, x1, y1)``.
    scores : Tensor ``(N,)``
    idxs : Tensor ``(N,)`` int
        Category of each box.
    iou_threshold : float

    Returns
    -------
    Tensor ``(K,)`` int64
        Indices of the kept boxes, by decreasing score, on ``boxes.device``.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}.")
    n = boxes.shape[0]
    if scores.shape != (n,) or idxs.shape != (n,):
        raise ValueError(
            f"scores and idxs must have shape ({n},), got {tuple(scores.shape)} and "
            f"{tuple(idxs.shape)}."
        )
    device = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    order = torch.sort(scores.to(device), descending=True, stable=True).indices
    b = boxes[order]
    cat = idxs.to(device)[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    removed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for start in range(0, n, _NMS_BLOCK):
        stop = min(start + _NMS_BLOCK, n)
        bi = b[start:stop, None, :]
        bj = b[None, start:, :]
        # Same operation order as torchvision's kernels (bit-identical IoU).
        w = (torch.minimum(bi[..., 2], bj[..., 2]) - torch.maximum(bi[..., 0], bj[..., 0]))
        h = (torch.minimum(bi[..., 3], bj[..., 3]) - torch.maximum(bi[..., 1], bj[..., 1]))
        inter = w.clamp(min=0) * h.clamp(min=0)
        iou = inter / (area[start:stop, None] + area[None, start:] - inter)
        over = (iou > iou_threshold) & (cat[start:stop, None] == cat[None, start:])
        over = over.cpu().numpy()  # (rows, n - start); column c is box start + c
        for r in range(stop - start):
            i = start + r
            if removed[i]:
                continue
            keep.append(i)
            row = over[r, r + 1 :]
            removed[i + 1 :] |= row
    keep_t = torch.as_tensor(keep, dtype=torch.int64, device=device)
    return order[keep_t]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """:func:`batched_nms` with a single category."""
    idxs = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    return batched_nms(boxes, scores, idxs, iou_threshold)


# ----------------------------------------------------------------------------- RLE
def mask_to_rle(masks: np.ndarray | torch.Tensor) -> list[dict[str, Any]]:
    """Uncompressed RLEs ``{"size": [h, w], "counts": [...]}`` of binary masks ``(N, H, W)``.

    A single ``(H, W)`` mask gives a list of one RLE. Vectorised: the run
    boundaries of all masks are found at once.
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W) or (H, W), got {masks.shape}.")
    n, h, w = masks.shape
    if n == 0:
        return []
    size = h * w
    flat = masks.astype(bool, copy=False).transpose(0, 2, 1).reshape(n, size)  # Fortran order
    if size == 0:
        return [{"size": [h, w], "counts": [0]} for _ in range(n)]
    rows, cols = np.nonzero(flat[:, 1:] != flat[:, :-1])
    starts = np.searchsorted(rows, np.arange(n + 1))
    out = []
    for i in range(n):
        bounds = np.empty(starts[i + 1] - starts[i] + 2, dtype=np.int64)
        bounds[0] = 0
        bounds[1:-1] = cols[starts[i] : starts[i + 1]] + 1
        bounds[-1] = size
        counts = np.diff(bounds).tolist()
        if flat[i, 0]:
            counts.insert(0, 0)
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Binary mask ``(h, w)`` (C-contiguous bool) of an uncompressed RLE."""
    h, w = (int(s) for s in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() != h * w:
        raise ValueError(
            f"Not a valid uncompressed RLE of size {[h, w]}: the counts must be non-negative "
            f"and sum to {h * w}."
        )
    values = (np.arange(counts.size) % 2).astype(bool)
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape(w, h).T)


def area_from_rle(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """Compressed COCO RLE (``counts`` as a ``str``) of an uncompressed RLE (pycocotools)."""
    from pycocotools import mask as mask_utils

    h, w = rle["size"]
    out = mask_utils.frPyObjects(rle, h, w)
    out["counts"] = out["counts"].decode("utf-8")
    return out


def mask_to_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE (``counts`` as a ``str``) of one binary ``(h, w)`` mask."""
    from pycocotools import mask as mask_utils

    out = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in out["size"]], "counts": out["counts"].decode("utf-8")}


# ----------------------------------------------------------------------------- small regions
def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill small holes or delete small islands of a binary mask.

    Parameters
    ----------
    mask : ndarray ``(H, W)`` bool
    area_thresh : float
        Regions with fewer pixels than this are changed.
    mode : {"holes", "islands"}
        ``"holes"``: connected background regions (8-connectivity, including
        background touching the image border) smaller than ``area_thresh`` become
        foreground. ``"islands"``: connected foreground regions smaller than
        ``area_thresh`` become background; if every region is small, the largest
        one (the first in raster order among equals) is kept.

    Returns
    -------
    mask : ndarray ``(H, W)`` bool
    changed : bool
        Whether any region was small (then ``mask`` is a new array).
    """
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', not {mode!r}.")
    mask = np.asarray(mask, dtype=bool)
    holes = mode == "holes"
    working = (mask != holes).astype(np.uint8)  # background for "holes", foreground otherwise
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    # Which labels end up in the new mask.
    lut = np.zeros(n_labels, dtype=bool)
    if holes:
        lut[0] = True  # label 0 = the mask itself
        lut[1:] = small
    else:
        lut[1:] = ~small
        if not lut.any():
            lut[int(np.argmax(sizes)) + 1] = True
    return lut[regions], True


def remove_small_regions_cropped(
    crop: np.ndarray,
    origin: tuple[int, int],
    image_shape: tuple[int, int],
    area_thresh: float,
) -> tuple[np.ndarray, tuple[int, int], bool]:
    """Fill small holes, then delete small islands, of a mask given by its bounding window.

    Gives exactly what :func:`remove_small_regions` (``"holes"``, then
    ``"islands"``) gives on the whole ``image_shape`` mask, but labels only the
    window (plus a one-pixel border where the image goes on), so the cost
    follows the object's size rather than the image's.

    Parameters
    ----------
    crop : ndarray ``(h, w)`` bool
        The mask inside the window; the mask is empty outside it.
    origin : ``(y0, x0)``
        Top-left corner of the window in the image.
    image_shape : ``(H, W)``
    area_thresh : float

    Returns
    -------
    crop : ndarray bool
        The new mask cut to its bounding box (``(0, 0)`` if empty).
    origin : ``(y0, x0)``
        The new window's corner (``(0, 0)`` if empty).
    changed : bool
    """
    import cv2

    crop = original = np.asarray(crop, dtype=bool)
    big_h, big_w = int(image_shape[0]), int(image_shape[1])
    y0, x0 = int(origin[0]), int(origin[1])
    h, w = crop.shape
    pad_t, pad_l = int(y0 > 0), int(x0 > 0)
    pad_b, pad_r = int(y0 + h < big_h), int(x0 + w < big_w)

    # Background outside the window is connected to the window's border
    # background; its parts are big enough to stay unless they are thin strips.
    if pad_l or pad_r:
        if pad_t or pad_b:
            outside = [big_h * big_w - h * w]
        else:  # the window spans the full height: left and right parts are apart
            outside = [x0 * big_h] * pad_l + [(big_w - x0 - w) * big_h] * pad_r
    else:
        outside = [y0 * big_w] * pad_t + [(big_h - y0 - h) * big_w] * pad_b
    if not crop.any() or (outside and min(outside) < area_thresh):
        return _remove_small_regions_full(crop, (y0, x0), (big_h, big_w), area_thresh)

    changed = False
    working = np.ones((h + pad_t + pad_b, w + pad_l + pad_r), dtype=np.uint8)
    inner = (slice(pad_t, pad_t + h), slice(pad_l, pad_l + w))
    working[inner] = ~crop
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    small = np.zeros(n_labels, dtype=bool)
    small[1:] = stats[1:, cv2.CC_STAT_AREA] < area_thresh
    if small.any() and (pad_t or pad_b or pad_l or pad_r):
        # Regions that reach the one-pixel border belong to the (big) outside background.
        ring = np.zeros(regions.shape, dtype=bool)
        ring[0, :] = bool(pad_t)
        ring[-1, :] |= bool(pad_b)
        ring[:, 0] |= bool(pad_l)
        ring[:, -1] |= bool(pad_r)
        small[np.unique(regions[ring])] = False
    if small.any():
        crop = crop | small[regions[inner]]
        changed = True

    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(
        crop.astype(np.uint8), connectivity=8
    )
    sizes = stats[1:, cv2.CC_STAT_AREA]
    is_small = sizes < area_thresh
    if is_small.any():
        lut = np.zeros(n_labels, dtype=bool)
        lut[1:] = ~is_small
        if not lut.any():
            if np.count_nonzero(sizes == sizes.max()) > 1:
                # Which of equally large islands survives depends on OpenCV's label
                # order, which depends on the frame: decide it on the whole image.
                return _remove_small_regions_full(
                    original, (y0, x0), (big_h, big_w), area_thresh
                )
            lut[int(np.argmax(sizes)) + 1] = True
        crop = lut[regions]
        changed = True
    if not changed:
        return crop, (y0, x0), False
    return (*_cut_to_box(crop, (y0, x0)), True)


def _remove_small_regions_full(
    crop: np.ndarray, origin: tuple[int, int], image_shape: tuple[int, int], area_thresh: float
) -> tuple[np.ndarray, tuple[int, int], bool]:
    full = np.zeros(image_shape, dtype=bool)
    y0, x0 = origin
    full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    full, changed_holes = remove_small_regions(full, area_thresh, "holes")
    full, changed_islands = remove_small_regions(full, area_thresh, "islands")
    if not (changed_holes or changed_islands):
        return crop, origin, False
    return (*_cut_to_box(full, (0, 0)), True)


def _cut_to_box(mask: np.ndarray, origin: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """``mask`` cut to its bounding box, and the box's corner (``(0, 0)``-sized if empty)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 0), dtype=bool), (0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return mask[r0:r1, c0:c1], (origin[0] + int(r0), origin[1] + int(c0))
