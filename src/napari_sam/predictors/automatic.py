"""Automatic mask generation: segment everything in an image with a grid of point prompts.

:class:`SamAutomaticMaskGenerator` follows the procedure of the Segment Anything
paper (and gives the results of Meta's ``segment_anything`` package, argument
for argument):

1. The image (and, with ``crop_n_layers > 0``, overlapping crops of it) is
   encoded once per crop.
2. A regular grid of single positive points is decoded in batches of
   ``points_per_batch``; each point gives three candidate masks.
3. Masks whose predicted IoU is not above ``pred_iou_thresh``, or whose
   stability score (IoU of the masks thresholded at ``±stability_score_offset``
   around the logit threshold) is below ``stability_score_thresh``, are
   dropped, as are masks that touch a crop edge that is not an image edge.
4. Duplicates are removed by box non-maximum suppression, within each crop
   (by predicted IoU) and across crops (smaller crops win).
5. With ``min_mask_region_area > 0``, holes and islands smaller than that are
   removed from each mask, and a last NMS prefers masks that needed no change.

How this implementation saves time and memory (same results):

- The mask decoder runs once per batch with the image embedding shared by
  all prompts instead of copied per prompt: attention projections of the image
  side are computed once, or folded into the (few) prompt tokens.
- Predicted IoUs come out of the decoder before the masks are upscaled; masks
  that fail ``pred_iou_thresh`` are never upscaled at all.
- Surviving masks are upscaled to the image in small chunks; the stability
  score counts pixels over the two thresholds; boxes come from row/column
  any-reductions; each kept mask is stored as its bounding-box window, packed
  to bits. Full-resolution float masks of a whole batch never exist.
- Small-region removal labels only each mask's bounding window.

Progress and cancellation: :meth:`SamAutomaticMaskGenerator.generate_iter` is
a generator that yields :class:`AmgProgress` after each step (suitable for
napari's ``thread_worker``: stop by closing the generator) and returns the
records; :meth:`~SamAutomaticMaskGenerator.generate` takes optional
``progress(done, total)`` and ``should_cancel()`` callables and raises
:class:`Cancelled` when asked to stop.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_sam.errors import ImageFormatError, SettingsError
from napari_sam.model.buffers import KeptBuffers
from napari_sam.model.sam.sam import Sam
from napari_sam.model.sam.shared_decoder import SharedImageDecoder, agrees_with_model
from napari_sam.predictors.amg_utils import (
    batched_nms,
    box_area,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    count_true,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_coco_rle,
    mask_to_rle,
    masks_to_boxes,
    remove_small_regions_cropped,
    stability_score,
)
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.predictors.upscale import postprocess_masks
from napari_sam.runtime.allocator import reuse_freed_memory
from napari_sam.runtime.progress import CancelCheck, Progress, ProgressCallback, drive

__all__ = [
    "AmgProgress",
    "SamAutomaticMaskGenerator",
]

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

#: Bytes of float logits upscaled at once (bounds the memory of one step).
_UPSCALE_BUDGET_BYTES = 96 * 2**20
#: Prompts whose decoder features are upscaled at once (about 12 MiB each).
_PROMPT_CHUNK = 8
#: Prompts decoded at once on the CPU (the decoder holds ~16 MiB per prompt).
_CPU_DECODE_CHUNK = 16
#: On a GPU the same bounds are larger (few large kernels beat many small
#: ones) and limited by free memory: this share of it for upscaled logits.
_GPU_UPSCALE_SHARE = 0.25
_GPU_PROMPT_CHUNK = 64
#: GPU working memory per prompt of one decoder batch (decoder activations
#: of 4096 image tokens, the prompt's three low-res masks and their upscaled
#: logits at 1024²), generous; used when ``points_per_batch=None``.
_GPU_BYTES_PER_PROMPT = 64 * 2**20
#: Most prompts per batch with ``points_per_batch=None`` on a GPU.
_GPU_MAX_POINTS_PER_BATCH = 1024
#: Default ``points_per_batch`` where free memory cannot be measured (CPU).
_DEFAULT_POINTS_PER_BATCH = 64


@dataclass(frozen=True)
class AmgProgress(Progress):
    """Progress of :meth:`SamAutomaticMaskGenerator.generate_iter`.

    ``done`` of ``total`` steps are finished. Steps are: one image encoding per
    crop, one decoder batch of ``points_per_batch`` prompts, and a final
    post-processing step. ``stage`` is ``"starting"``, ``"encoding"``,
    ``"decoding prompts"`` or ``"post-processing"``; ``crop`` is the index of
    the current crop out of ``n_crops``.
    """

    crop: int = 0
    n_crops: int = 1


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image from a grid of point prompts.

    The arguments are those of ``segment_anything.SamAutomaticMaskGenerator``.

    Parameters
    ----------
    model : Sam
        The SAM model (any device).
    points_per_side : int or None
        Points sampled along one side of the image; the grid has
        ``points_per_side**2`` points. ``None`` if ``point_grids`` is given.
    points_per_batch : int or None
        Prompts decoded together (more is faster and uses more memory).
        ``None`` picks it from the device: as many as fit in the free memory
        of a CUDA GPU (up to 1024, i.e. a whole 32×32 grid in one pass), 64
        elsewhere. On a GPU an out-of-memory error halves it and retries.
    pred_iou_thresh : float in [0, 1]
        Keep masks whose predicted IoU is above this (0 keeps all).
    stability_score_thresh : float in [0, 1]
        Keep masks whose stability score is at least this (0 keeps all).
    stability_score_offset : float >= 0
        Logit offset of the stability score.
    box_nms_thresh : float in [0, 1]
        Box IoU above which the lower-scoring of two masks is dropped.
    crop_n_layers : int >= 0
        Extra crop layers: layer ``i`` runs on ``(2**i)**2`` overlapping crops.
    crop_nms_thresh : float in [0, 1]
        Box IoU for removing duplicates between crops.
    crop_overlap_ratio : float in [0, 1)
        Overlap of neighbouring crops, as a fraction of the image's short side
        (for the first crop layer; it halves with each further layer).
    crop_n_points_downscale_factor : int >= 1
        Points per side in layer ``i`` are ``points_per_side / factor**i``.
    point_grids : list of ndarray ``(N, 2)`` or None
        Explicit points ``(x, y)`` in ``[0, 1]``, one grid per crop layer.
    min_mask_region_area : int >= 0
        Fill holes and remove islands smaller than this many pixels (OpenCV).
    output_mode : {"binary_mask", "uncompressed_rle", "coco_rle"}
        Form of each record's ``segmentation``.

    Raises
    ------
    SettingsError
        An argument is out of range, or ``points_per_side`` and ``point_grids``
        are both given or both ``None``.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int | None = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        if points_per_batch is not None:
            _check_int("points_per_batch", points_per_batch, minimum=1)
        _check_int("crop_n_layers", crop_n_layers, minimum=0)
        _check_int("crop_n_points_downscale_factor", crop_n_points_downscale_factor, minimum=1)
        for name, value in (
            ("pred_iou_thresh", pred_iou_thresh),
            ("stability_score_thresh", stability_score_thresh),
            ("box_nms_thresh", box_nms_thresh),
            ("crop_nms_thresh", crop_nms_thresh),
        ):
            _check_fraction(name, value, upper_open=False)
        _check_fraction("crop_overlap_ratio", crop_overlap_ratio, upper_open=True)
        if not _is_real(stability_score_offset) or not (
            0 <= stability_score_offset < math.inf
        ):
            raise SettingsError(
                f"stability_score_offset must be a finite number >= 0, got "
                f"{stability_score_offset!r}."
            )
        if not _is_real(min_mask_region_area) or not (0 <= min_mask_region_area < math.inf):
            raise SettingsError(
                f"min_mask_region_area must be a number of pixels >= 0, got "
                f"{min_mask_region_area!r}."
            )
        if output_mode not in OUTPUT_MODES:
            raise SettingsError(
                f"output_mode must be one of {', '.join(map(repr, OUTPUT_MODES))}; "
                f"got {output_mode!r}."
            )
        if (points_per_side is None) == (point_grids is None):
            raise SettingsError(
                "Give exactly one of points_per_side and point_grids (set the other to None)."
            )
        if points_per_side is not None:
            _check_int("points_per_side", points_per_side, minimum=1)
            for layer in range(crop_n_layers + 1):
                if int(points_per_side / crop_n_points_downscale_factor**layer) < 1:
                    raise SettingsError(
                        f"Crop layer {layer} would get no points: points_per_side="
                        f"{points_per_side} divided by crop_n_points_downscale_factor="
                        f"{crop_n_points_downscale_factor} to the power {layer} is below 1. "
                        "Use fewer crop layers or a smaller downscale factor."
                    )
            grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            grids = _check_point_grids(point_grids, crop_n_layers)
        if output_mode == "coco_rle":
            import pycocotools.mask  # noqa: F401  (fail early if missing)
        if min_mask_region_area > 0:
            import cv2  # noqa: F401

        self.predictor = SamPredictor(model)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        self.point_grids = grids
        self.points_per_batch = (
            self._auto_points_per_batch() if points_per_batch is None else int(points_per_batch)
        )
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        #: Use the shared-image decoder (falls back to the model's own decoder
        #: if the model's structure is not the SAM decoder's, or if a first
        #: check against the model's decoder fails).
        self._fast_decoder = SharedImageDecoder.supports(model)
        self._fast_checked = False
        self._decoder_state: SharedImageDecoder | None = None
        #: Upscaled logits and masks of one chunk of prompts, reused chunk
        #: after chunk on the CPU (see :mod:`napari_sam.model.buffers`).
        self._upscale_buffers: KeptBuffers | None = None
        #: Crop embeddings encoded ahead in a batch (GPU), by crop box.
        self._crop_embeddings: dict[tuple[int, ...], Any] = {}

    def _auto_points_per_batch(self) -> int:
        from napari_sam.runtime.memory import auto_batch_size

        most = max(len(g) for g in self.point_grids) if self.point_grids else 1
        return auto_batch_size(
            self.predictor.device,
            _GPU_BYTES_PER_PROMPT,
            maximum=max(1, min(most, _GPU_MAX_POINTS_PER_BATCH)),
            cpu_default=_DEFAULT_POINTS_PER_BATCH,
        )

    def _limits(self) -> tuple[int, int, int | None]:
        """(upscale budget in bytes, prompts per upscale chunk, prompts per decode or None)."""
        device = self.predictor.device
        if device.type != "cuda":
            return _UPSCALE_BUDGET_BYTES, _PROMPT_CHUNK, _CPU_DECODE_CHUNK
        from napari_sam.runtime.memory import free_memory_bytes

        free = free_memory_bytes(device) or 0
        budget = max(_UPSCALE_BUDGET_BYTES, int(free * _GPU_UPSCALE_SHARE))
        return budget, max(_PROMPT_CHUNK, _GPU_PROMPT_CHUNK), None

    # ------------------------------------------------------------------ public API
    def generate(
        self,
        image: np.ndarray,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[dict[str, Any]]:
        """Segment everything in ``image``.

        Parameters
        ----------
        image : ndarray ``(H, W, 3)`` uint8
            RGB image. A grayscale uint8 image ``(H, W)`` or ``(H, W, 1)`` is
            repeated into three channels. Other dtypes (uint16, float) must be
            converted with their contrast limits first
            (``napari_sam.workflows.image.to_sam_rgb``).
        progress : callable, optional
            Called with an :class:`AmgProgress` after each step.
        should_cancel : callable ``() -> bool``, optional
            Polled before each step; when it returns True, generation stops
            and :class:`Cancelled` is raised.

        Returns
        -------
        list of dict
            One record per mask: ``segmentation`` (``(H, W)`` bool array, or
            an RLE dict, see ``output_mode``), ``area`` (int), ``bbox``
            (``[x, y, w, h]``), ``predicted_iou``, ``point_coords``
            (``[[x, y]]``), ``stability_score``, ``crop_box`` (``[x, y, w, h]``).
        """
        return drive(
            self.generate_iter(image),
            progress,
            should_cancel,
            cancelled="Automatic mask generation was cancelled.",
        )

    def generate_iter(
        self, image: np.ndarray
    ) -> Generator[AmgProgress, None, list[dict[str, Any]]]:
        """Like :meth:`generate`, as a generator of :class:`AmgProgress`.

        The records are the generator's return value (``StopIteration.value``;
        napari's ``thread_worker`` emits it as ``returned``). Closing the
        generator stops the work after the current step. A bad image raises
        :class:`~napari_sam.errors.ImageFormatError` here, before any step.
        """
        return self._steps(_as_rgb_uint8(image))

    def _steps(self, image: np.ndarray) -> Generator[AmgProgress, None, list[dict[str, Any]]]:
        orig_h, orig_w = image.shape[:2]
        boxes, layers = generate_crop_boxes((orig_h, orig_w), self.crop_n_layers,
                                            self.crop_overlap_ratio)
        # Crops of a degenerate (1-pixel) image can be empty; they hold nothing.
        crops = [(b, li) for b, li in zip(boxes, layers) if b[2] > b[0] and b[3] > b[1]]
        n_batches = [
            math.ceil(len(self.point_grids[li]) / self.points_per_batch) for _, li in crops
        ]
        total = len(crops) + sum(n_batches) + 1
        done = 0
        yield AmgProgress(done, total, "starting", "steps", 0, len(crops))

        data = _MaskStore.empty()
        self._crop_embeddings = {}
        try:
            for c, (crop_box, layer) in enumerate(crops):
                self._encode_crop(image, crop_box, [b for b, _ in crops[c:]])
                done += 1
                yield AmgProgress(done, total, "encoding", "steps", c, len(crops))
                crop_data = _MaskStore.empty()
                x0, y0, x1, y1 = crop_box
                points = self.point_grids[layer] * np.array([[x1 - x0, y1 - y0]], dtype=float)
                start = 0
                # The decoder's tensors are reused from batch to batch (see
                # runtime.allocator; on a GPU its caching allocator does that).
                with reuse_freed_memory(self.predictor.device.type == "cpu"):
                    while start < len(points):
                        batch = points[start : start + self.points_per_batch]
                        crop_data.extend(
                            self._process_batch_safely(batch, crop_box, (orig_h, orig_w))
                        )
                        start += len(batch)
                        done += 1
                        yield AmgProgress(
                            min(done, total - 1), total, "decoding prompts", "steps", c,
                            len(crops),
                        )
                self._release_crop()
                keep = _nms(crop_data.boxes, crop_data.iou, self.box_nms_thresh)
                data.extend(crop_data.take(keep))
        finally:  # also when the caller stops early: free the embeddings
            self._release_crop()
            self._crop_embeddings = {}

        records = self._finish(data, (orig_h, orig_w), n_crops=len(crops))
        yield AmgProgress(
            total, total, "post-processing", "steps", max(len(crops) - 1, 0), len(crops)
        )
        return records

    # ------------------------------------------------------------------ steps
    @torch.inference_mode()
    def _encode_crop(
        self, image: np.ndarray, crop_box: Sequence[int], upcoming: Sequence[Sequence[int]] = ()
    ) -> None:
        """Make ``crop_box`` the predictor's image.

        On a GPU, crops still to come (``upcoming``, starting with this one)
        are encoded several per forward pass and kept until their turn.
        """
        key = tuple(int(v) for v in crop_box)
        self._decoder_state = None
        if key not in self._crop_embeddings and self._encodes_ahead():
            self._encode_crops_batched(image, upcoming)
        embedding = self._crop_embeddings.pop(key, None)
        if embedding is not None:
            self.predictor.set_embedding(embedding)
            return
        x0, y0, x1, y1 = crop_box
        self.predictor.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]))

    def _encodes_ahead(self) -> bool:
        """Encode several crops per forward pass (on a GPU, where it is faster)."""
        return self.predictor.device.type == "cuda"

    def _encode_crops_batched(self, image: np.ndarray, boxes: Sequence[Sequence[int]]) -> None:
        from napari_sam.predictors.predictor import embed_images
        from napari_sam.runtime.memory import auto_batch_size, encoder_bytes_per_image

        model = self.predictor.model
        n = auto_batch_size(model.device, encoder_bytes_per_image(model), maximum=8)
        boxes = [tuple(int(v) for v in b) for b in boxes[:n]]
        crops = [np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes]
        for box, embedding in zip(boxes, embed_images(model, crops, batch_size=len(crops))):
            self._crop_embeddings[box] = embedding

    def _process_batch_safely(
        self, points: np.ndarray, crop_box: Sequence[int], orig_size: tuple[int, int]
    ) -> _MaskStore:
        """:meth:`_process_batch`; if memory runs out, in smaller batches, then on the CPU."""
        from napari_sam.runtime.memory import run_batches

        def shrink(size: int) -> None:
            self.points_per_batch = size

        def to_cpu() -> None:
            predictor = self.predictor
            predictor.model.to("cpu")
            predictor.features = predictor.features.to("cpu")
            self._decoder_state = None
            self._crop_embeddings = {}

        parts = run_batches(
            points,
            lambda batch: [self._process_batch(batch, crop_box, orig_size)],
            len(points),
            what="prompts",
            per_item=False,
            to_cpu=to_cpu,
            device=lambda: self.predictor.device,
            on_shrink=shrink,
        )
        out = _MaskStore.empty()
        for part in parts:
            out.extend(part)
        return out

    def _release_crop(self) -> None:
        self.predictor.reset_image()
        self._decoder_state = None
        self._upscale_buffers = None

    def _chunk_buffers(self, budget: int) -> KeptBuffers:
        """The buffers of one upscaled chunk (inactive on a GPU); kept until the crop ends."""
        pool = self._upscale_buffers
        if pool is None or pool.keep_bytes != budget:
            device = self.predictor.device
            pool = KeptBuffers(device, torch.float32, budget, active=device.type == "cpu")
            self._upscale_buffers = pool
        return pool

    @torch.inference_mode()
    def _process_batch(
        self, points: np.ndarray, crop_box: Sequence[int], orig_size: tuple[int, int]
    ) -> _MaskStore:
        """Decode one batch of points (crop coordinates) into compact kept masks.

        On the CPU the batch is decoded in sub-batches of ``_CPU_DECODE_CHUNK``
        prompts (same results, a quarter of the peak memory for 64 points).
        """
        out = _MaskStore.empty()
        decode_chunk = self._limits()[2]
        step = len(points) if decode_chunk is None else min(len(points), decode_chunk)
        for start in range(0, len(points), step):
            out.extend(self._process_prompts(points[start : start + step], crop_box, orig_size))
        return out

    def _process_prompts(
        self, points: np.ndarray, crop_box: Sequence[int], orig_size: tuple[int, int]
    ) -> _MaskStore:
        predictor = self.predictor
        model = predictor.model
        device = predictor.device
        crop_h, crop_w = predictor.original_size
        coords = predictor.transform.apply_coords(points, (crop_h, crop_w))
        coords_t = torch.as_tensor(coords, device=device)[:, None, :]
        labels_t = torch.ones((len(points), 1), dtype=torch.int, device=device)
        sparse, dense = model.prompt_encoder(points=(coords_t, labels_t), boxes=None, masks=None)

        iou, low_res_for = self._decode(sparse, dense)
        n_out = iou.shape[1]
        flat_iou = iou.reshape(-1)
        if self.pred_iou_thresh > 0.0:
            selected = torch.nonzero(flat_iou > self.pred_iou_thresh).flatten()
        else:
            selected = torch.arange(flat_iou.numel(), device=flat_iou.device)
        selected = selected.cpu()

        out = _MaskStore.empty()
        if selected.numel() == 0:
            return out
        threshold = model.mask_threshold
        offset = self.stability_score_offset
        cx0, cy0 = int(crop_box[0]), int(crop_box[1])
        crop_edges = [int(v) for v in crop_box]
        image_box = [0, 0, int(orig_size[1]), int(orig_size[0])]
        per_mask = 4 * (predictor.transform.target_length**2 + crop_h * crop_w)
        budget, prompt_chunk, _ = self._limits()
        mask_chunk = max(1, budget // per_mask)
        buffers = self._chunk_buffers(budget)

        for idx in _chunks_by_prompt(selected, n_out, mask_chunk, prompt_chunk):
            low = low_res_for(idx)  # (k, 256, 256) logits
            logits = postprocess_masks(
                model, low[None], predictor.input_size, (crop_h, crop_w), buffers
            )[0]
            del low
            stab = stability_score(logits, threshold, offset)
            keep = torch.ones_like(stab, dtype=torch.bool)
            if self.stability_score_thresh > 0.0:
                keep = stab >= self.stability_score_thresh
            if not bool(keep.any()):
                continue
            # Threshold first, then pick: a boolean copy is 4× smaller.
            masks = torch.gt(logits, threshold, out=buffers("masks", logits.shape, torch.bool))
            if not bool(keep.all()):
                masks = masks[keep]
            del logits
            boxes = masks_to_boxes(masks)
            keep2 = ~is_box_near_crop_edge(boxes, crop_edges, image_box)
            kept_idx = idx[keep.cpu()][keep2.cpu()]
            if not bool(keep2.all()):
                masks, boxes = masks[keep2], boxes[keep2]
            if masks.shape[0] == 0:
                continue
            areas = count_true(masks).cpu().numpy()
            boxes_np = boxes.cpu().numpy()
            bits = _compact_masks(masks, boxes_np, areas, self._packs_on_device())
            del masks
            shifted = boxes_np.copy()
            nonempty = areas > 0
            shifted[nonempty] += np.array([cx0, cy0, cx0, cy0])
            # Empty masks keep SAM's (0, 0, 0, 0) box shifted by the crop corner.
            shifted[~nonempty] = np.array([cx0, cy0, cx0, cy0])
            point_idx = (kept_idx // n_out).numpy()
            out.extend(
                _MaskStore(
                    boxes=shifted.astype(np.int64),
                    iou=flat_iou[kept_idx.to(flat_iou.device)].float().cpu().numpy(),
                    stability=stab[keep][keep2].float().cpu().numpy(),
                    points=points[point_idx] + np.array([[cx0, cy0]], dtype=float),
                    crop_boxes=np.tile(np.asarray(crop_box, dtype=np.int64), (len(areas), 1)),
                    areas=areas.astype(np.int64),
                    bits=bits,
                )
            )
        return out

    def _packs_on_device(self) -> bool:
        """Pack masks to bits before moving them to the host (on a GPU: 8× less to copy)."""
        return self.predictor.device.type != "cpu"

    def _decode(self, sparse: torch.Tensor, dense: torch.Tensor):
        """Run the decoder; returns (iou ``(B, 3)``, function idx -> low-res logits)."""
        predictor = self.predictor
        model = predictor.model
        if self._fast_decoder:
            if self._decoder_state is None:
                self._decoder_state = SharedImageDecoder(
                    model,
                    predictor.features,
                    model.prompt_encoder.get_dense_pe(),
                    dense[:1],
                    dtype=_decoder_dtype(model),
                )
            fast = self._decoder_state
            if not self._fast_checked:
                self._fast_checked = True
                if not self._check_fast_decoder(fast, sparse[:2], dense[:2]):
                    self._fast_decoder = False
                    return self._decode(sparse, dense)
            return fast.decode(sparse)

        low_res, iou = model.mask_decoder(
            image_embeddings=predictor.features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        flat = low_res.reshape(-1, *low_res.shape[-2:])

        def low_res_for(idx: torch.Tensor) -> torch.Tensor:
            return flat[idx.to(flat.device)]

        return iou, low_res_for

    def _check_fast_decoder(
        self, fast: SharedImageDecoder, sparse: torch.Tensor, dense: torch.Tensor
    ) -> bool:
        """Compare the shared-image decoder with the model's decoder on a few prompts."""
        model = self.predictor.model
        ok = agrees_with_model(fast, model, self.predictor.features,
                               model.prompt_encoder.get_dense_pe(), sparse, dense)
        if not ok:
            warnings.warn(
                "The fast automatic-mask decoder disagrees with the model's mask decoder; "
                "using the model's decoder (slower).",
                RuntimeWarning,
                stacklevel=3,
            )
        return ok

    @torch.inference_mode()
    def _finish(
        self, data: _MaskStore, orig_size: tuple[int, int], n_crops: int
    ) -> list[dict[str, Any]]:
        if n_crops > 1 and len(data) > 0:
            # Prefer masks from smaller crops.
            crop_t = torch.as_tensor(data.crop_boxes)
            scores = 1 / box_area(crop_t)
            keep = _nms(data.boxes, scores, self.crop_nms_thresh)
            data = data.take(keep)
        if self.min_mask_region_area > 0 and len(data) > 0:
            data = self._remove_small_regions(data, orig_size)
        return self._records(data, orig_size)

    def _remove_small_regions(self, data: _MaskStore, orig_size: tuple[int, int]) -> _MaskStore:
        new_bits, new_boxes, new_areas, unchanged = [], [], [], []
        for i in range(len(data)):
            window, origin = data.window(i)
            window, origin, changed = remove_small_regions_cropped(
                window, origin, orig_size, self.min_mask_region_area
            )
            unchanged.append(not changed)
            if not changed:
                new_bits.append(data.bits[i])
                new_boxes.append(data.boxes[i])
                new_areas.append(data.areas[i])
                continue
            area = int(window.sum())
            if area == 0:
                new_bits.append(np.zeros(0, dtype=np.uint8))
                new_boxes.append(np.zeros(4, dtype=np.int64))
            else:
                new_bits.append(np.packbits(window))
                y, x = origin
                new_boxes.append(
                    np.array([x, y, x + window.shape[1] - 1, y + window.shape[0] - 1])
                )
            new_areas.append(area)
        boxes = np.stack(new_boxes).astype(np.int64)
        new_areas = np.asarray(new_areas, dtype=np.int64)
        # Boxes recomputed from the masks (an empty mask's box is all zeros).
        nms_boxes = boxes * (new_areas > 0)[:, None]
        scores = torch.as_tensor(unchanged, dtype=torch.float32)
        keep = _nms(nms_boxes, scores, max(self.box_nms_thresh, self.crop_nms_thresh))
        data = _MaskStore(
            boxes=boxes,
            iou=data.iou,
            stability=data.stability,
            points=data.points,
            crop_boxes=data.crop_boxes,
            areas=new_areas,
            bits=new_bits,
        )
        return data.take(keep)

    def _records(self, data: _MaskStore, orig_size: tuple[int, int]) -> list[dict[str, Any]]:
        records = []
        for i in range(len(data)):
            mask = data.full_mask(i, orig_size)
            if self.output_mode == "binary_mask":
                segmentation: Any = mask
            elif self.output_mode == "uncompressed_rle":
                segmentation = mask_to_rle(mask)[0]
            else:
                segmentation = mask_to_coco_rle(mask)
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(data.areas[i]),
                    "bbox": box_xyxy_to_xywh(data.boxes[i].tolist()),
                    "predicted_iou": float(data.iou[i]),
                    "point_coords": [data.points[i].tolist()],
                    "stability_score": float(data.stability[i]),
                    "crop_box": box_xyxy_to_xywh(data.crop_boxes[i].tolist()),
                }
            )
        return records


# ============================================================================= compact masks
@dataclass
class _MaskStore:
    """Kept masks and their data; each mask is its bounding-box window packed to bits.

    ``boxes`` are ``(x0, y0, x1, y1)`` inclusive, in image coordinates; a mask
    with ``areas == 0`` has no bits.
    """

    boxes: np.ndarray  # (N, 4) int64
    iou: np.ndarray  # (N,) float32
    stability: np.ndarray  # (N,) float32
    points: np.ndarray  # (N, 2) float64
    crop_boxes: np.ndarray  # (N, 4) int64, x0 y0 x1 y1 (exclusive ends)
    areas: np.ndarray  # (N,) int64
    bits: list[np.ndarray]

    @classmethod
    def empty(cls) -> _MaskStore:
        return cls(
            boxes=np.zeros((0, 4), dtype=np.int64),
            iou=np.zeros(0, dtype=np.float32),
            stability=np.zeros(0, dtype=np.float32),
            points=np.zeros((0, 2), dtype=np.float64),
            crop_boxes=np.zeros((0, 4), dtype=np.int64),
            areas=np.zeros(0, dtype=np.int64),
            bits=[],
        )

    def __len__(self) -> int:
        return len(self.bits)

    def extend(self, other: _MaskStore) -> None:
        if len(other) == 0:
            return
        self.boxes = np.concatenate([self.boxes, other.boxes])
        self.iou = np.concatenate([self.iou, other.iou])
        self.stability = np.concatenate([self.stability, other.stability])
        self.points = np.concatenate([self.points, other.points])
        self.crop_boxes = np.concatenate([self.crop_boxes, other.crop_boxes])
        self.areas = np.concatenate([self.areas, other.areas])
        self.bits = self.bits + other.bits

    def take(self, idx: np.ndarray | torch.Tensor) -> _MaskStore:
        idx = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)
        return _MaskStore(
            boxes=self.boxes[idx],
            iou=self.iou[idx],
            stability=self.stability[idx],
            points=self.points[idx],
            crop_boxes=self.crop_boxes[idx],
            areas=self.areas[idx],
            bits=[self.bits[i] for i in idx],
        )

    def window(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Mask ``i`` inside its box, and the box's corner ``(y0, x0)``."""
        if self.areas[i] == 0:
            return np.zeros((0, 0), dtype=bool), (0, 0)
        x0, y0, x1, y1 = (int(v) for v in self.boxes[i])
        h, w = y1 - y0 + 1, x1 - x0 + 1
        window = np.unpackbits(self.bits[i], count=h * w).reshape(h, w).view(bool)
        return window, (y0, x0)

    def full_mask(self, i: int, shape: tuple[int, int]) -> np.ndarray:
        mask = np.zeros(shape, dtype=bool)
        window, (y0, x0) = self.window(i)
        mask[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
        return mask


def _decoder_dtype(model: Any) -> torch.dtype | None:
    """Arithmetic of the shared-image decoder's image side and of the mask upscaling.

    bfloat16 when the model's image encoder runs in bfloat16 (on a GPU, or a
    CPU with fast bf16: see :mod:`napari_sam.model.precision`): the per-prompt
    image tokens dominate automatic mask generation, and bf16 halves their
    memory traffic; IoU predictions, stability scores and masks are unchanged
    to within the accuracy the tests require (``tests/test_precision_cpu.py``).
    Float32 otherwise (also under float16, whose range the attention logits
    could exceed).
    """
    dtype = getattr(model, "encoder_dtype", None)
    return torch.bfloat16 if dtype == torch.bfloat16 else None


def _nms(boxes: np.ndarray, scores: np.ndarray | torch.Tensor, thresh: float) -> np.ndarray:
    boxes_t = torch.as_tensor(boxes).float()
    scores_t = torch.as_tensor(scores)
    cats = torch.zeros(len(boxes_t), dtype=torch.int64)
    return batched_nms(boxes_t, scores_t, cats, thresh).numpy()


def _compact_masks(
    masks: torch.Tensor, boxes: np.ndarray, areas: np.ndarray, on_device: bool
) -> list[np.ndarray]:
    """Each mask's box, as :func:`numpy.packbits` of its flattened ``(y, x)`` pixels.

    ``masks``: ``(k, H, W)`` bool on the model's device; ``boxes``: ``(k, 4)``
    x0, y0, x1, y1 (inclusive) on the host. One transfer for the whole chunk:
    with ``on_device`` (a GPU) the masks are packed to bits there first (rows of
    ``W/8`` bytes), and only the rows inside each box are unpacked on the host.
    """
    if on_device:
        rows = _packbits_rows(masks).cpu().numpy()  # (k, H, ceil(W/8)) uint8
        width = masks.shape[-1]

        def box_pixels(i: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            return np.unpackbits(rows[i, y0 : y1 + 1], axis=1, count=width)[:, x0 : x1 + 1]
    else:
        masks_np = masks.numpy()

        def box_pixels(i: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            return masks_np[i, y0 : y1 + 1, x0 : x1 + 1]

    bits = []
    for i, ((bx0, by0, bx1, by1), area) in enumerate(zip(boxes, areas)):
        if area == 0:
            bits.append(np.zeros(0, dtype=np.uint8))
        else:
            bits.append(np.packbits(box_pixels(i, bx0, by0, bx1, by1)))
    return bits


def _packbits_rows(masks: torch.Tensor) -> torch.Tensor:
    """:func:`numpy.packbits` along the last axis, on the tensor's device.

    ``(..., W)`` bool -> ``(..., ceil(W / 8))`` uint8, first pixel in the most
    significant bit, the last byte zero-padded (numpy's convention).
    """
    width = masks.shape[-1]
    pad = (-width) % 8
    if pad:
        masks = torch.nn.functional.pad(masks, (0, pad))
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=masks.device)
    grouped = masks.reshape(*masks.shape[:-1], -1, 8).to(torch.uint8)
    return (grouped * weights).sum(dim=-1, dtype=torch.uint8)


def _chunks_by_prompt(
    selected: torch.Tensor, n_out: int, max_masks: int, max_prompts: int = _PROMPT_CHUNK
):
    """Split sorted flat mask indices into chunks of at most ``max_masks`` masks
    that also cover at most ``max_prompts`` prompts."""
    prompts = selected // n_out
    start = 0
    n = selected.numel()
    while start < n:
        stop = min(start + max_masks, n)
        first = int(prompts[start])
        last_allowed = first + max_prompts - 1
        stop = start + int((prompts[start:stop] <= last_allowed).sum())
        yield selected[start:stop]
        start = stop


# ============================================================================= input checks
def _as_rgb_uint8(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageFormatError(
            f"The image must be a numpy array of shape (H, W, 3), got {type(image).__name__}."
        )
    if image.dtype != np.uint8:
        raise ImageFormatError(
            f"Automatic mask generation needs an 8-bit RGB image (uint8, 0-255); got "
            f"{image.dtype}. Convert it with napari_sam.workflows.image.to_sam_rgb, which applies "
            "contrast limits."
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)  # grayscale -> RGB
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageFormatError(
            f"The image must be RGB (H, W, 3) or grayscale (H, W); got shape {image.shape}. "
            "Drop an alpha channel with image[..., :3]; convert stacks and multichannel "
            "images with napari_sam.workflows.image.to_sam_rgb."
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageFormatError(f"The image is empty (shape {image.shape}).")
    return image


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise SettingsError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_fraction(name: str, value: object, upper_open: bool) -> None:
    ok = _is_real(value) and 0.0 <= value and (value < 1.0 if upper_open else value <= 1.0)
    if not ok:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise SettingsError(f"{name} must be a number in {interval}, got {value!r}.")


def _check_point_grids(point_grids: object, crop_n_layers: int) -> list[np.ndarray]:
    if not isinstance(point_grids, (list, tuple)):
        raise SettingsError(
            "point_grids must be a list with one (N, 2) array of (x, y) points in [0, 1] per "
            f"crop layer; got {type(point_grids).__name__}."
        )
    if len(point_grids) < crop_n_layers + 1:
        raise SettingsError(
            f"point_grids has {len(point_grids)} grid(s) but crop_n_layers={crop_n_layers} "
            f"needs {crop_n_layers + 1} (one per crop layer)."
        )
    grids = []
    for i, grid in enumerate(point_grids):
        g = np.asarray(grid, dtype=float)
        if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
            raise SettingsError(
                f"point_grids[{i}] must have shape (N, 2) with N >= 1, got {g.shape}."
            )
        if not np.isfinite(g).all() or g.min() < 0 or g.max() > 1:
            raise SettingsError(
                f"point_grids[{i}] must hold (x, y) points scaled to [0, 1]."
            )
        grids.append(g)
    return grids
