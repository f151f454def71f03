"""SamPredictor: encode an image once, then predict masks from prompts quickly.

Coordinates follow SAM: points are ``(x, y)`` in pixels of the image passed to
:meth:`SamPredictor.set_image` (x = column, y = row); boxes are
``(x0, y0, x1, y1)``. Masks are ``(C, H, W)`` arrays in row-major image order.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from napari_sam.errors import ImageFormatError, ImageNotSetError, PromptError
from napari_sam.model.buffers import KeptBuffers
from napari_sam.model.sam import shared_decoder as _shared
from napari_sam.model.sam.sam import Sam
from napari_sam.predictors.transforms import ResizeLongestSide
from napari_sam.predictors.upscale import postprocess_masks


@dataclass(frozen=True)
class ImageEmbedding:
    """An encoded image: everything :meth:`SamPredictor.predict` needs besides prompts.

    Attributes
    ----------
    features : Tensor ``(1, 256, 64, 64)``
        Output of the image encoder.
    original_size : tuple of int
        ``(H, W)`` of the image given to ``set_image``.
    input_size : tuple of int
        ``(H', W')`` of the resized image inside the model's padded input.
    high_res : tuple of Tensor
        SAM 2 only: the stride-4 and stride-8 feature maps its mask decoder
        also uses (``(1, 32, 256, 256)`` and ``(1, 64, 128, 128)``); empty for SAM 1.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    high_res: tuple[torch.Tensor, ...] = ()

    @property
    def nbytes(self) -> int:
        """Memory taken by the features, in bytes."""
        return sum(t.numel() * t.element_size() for t in (self.features, *self.high_res))

    def to(self, device: torch.device | str) -> ImageEmbedding:
        """The same embedding with every feature map on ``device`` (detached)."""
        return ImageEmbedding(
            self.features.detach().to(device),
            self.original_size,
            self.input_size,
            tuple(t.detach().to(device) for t in self.high_res),
        )


def _input_tensor(
    transform: ResizeLongestSide, image: np.ndarray, image_format: str, model_format: str
) -> torch.Tensor:
    """A checked ``(H, W, 3)`` uint8 image as the model's resized ``(3, H', W')`` input (CPU)."""
    _check_rgb_uint8(image)
    if image_format != model_format:
        image = image[..., ::-1]
    resized = transform.apply_image(image)
    return torch.as_tensor(resized).permute(2, 0, 1).contiguous()


def _encode_with_fallback(
    model: Sam, images: list[torch.Tensor], batch_size: int, what: str, fallback: bool = True
) -> list[torch.Tensor]:
    """Encode resized ``(3, H', W')`` RGB 0–255 tensors, ``batch_size`` per forward pass.

    Returns one ``(1, 256, 64, 64)`` float32 embedding per image. If the GPU
    runs out of memory the batch is split, and a single image that does not
    fit moves the model to the CPU (:func:`napari_sam.runtime.memory.run_batches`).
    """
    from napari_sam.runtime.memory import run_batches

    def encode(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        dev = model.device
        inputs = torch.stack([model.preprocess(im.to(dev)) for im in batch], dim=0)
        with torch.no_grad():
            features = model.encode(inputs)
        if len(batch) == 1:
            return [features]
        return [features[i : i + 1].clone() for i in range(len(batch))]

    if not fallback:
        return [
            f
            for start in range(0, len(images), batch_size)
            for f in encode(images[start : start + batch_size])
        ]
    return run_batches(
        images,
        encode,
        batch_size,
        what=what,
        to_cpu=lambda: model.to("cpu"),
        device=lambda: model.device,
    )


def embed_images(
    model: Sam,
    images: list[np.ndarray],
    batch_size: int | None = None,
    *,
    fallback: bool = True,
) -> list[ImageEmbedding]:
    """Encode several RGB images, several per forward pass of the image encoder.

    Each result equals what :meth:`SamPredictor.set_image` gives for that
    image alone (up to floating-point reassociation); the images may differ
    in size. On a CUDA GPU this is faster per image than one at a time.

    Parameters
    ----------
    model : Sam
    images : list of ndarray ``(H, W, 3)`` uint8
        RGB pixels.
    batch_size : int, optional
        Images per forward pass; default as many as fit in the GPU's free
        memory (:func:`napari_sam.runtime.memory.auto_batch_size`, at most 8), 1 on a CPU.
    fallback : bool
        On running out of GPU memory, retry with smaller batches and then on
        the CPU (warning with :class:`~napari_sam.errors.DeviceFallbackWarning`).
        ``False`` lets the error propagate, for callers that handle it.

    Returns
    -------
    list of ImageEmbedding
        float32 features on the model's device, in the order of ``images``.
    """
    from napari_sam.runtime.memory import auto_batch_size, encoder_bytes_per_image

    transform = ResizeLongestSide(model.image_encoder.img_size)
    tensors = [_input_tensor(transform, image, "RGB", model.image_format) for image in images]
    sizes = [((int(im.shape[0]), int(im.shape[1])), tuple(t.shape[-2:]))
             for im, t in zip(images, tensors)]
    if batch_size is None:
        batch_size = auto_batch_size(model.device, encoder_bytes_per_image(model), maximum=8)
    features = _encode_with_fallback(
        model, tensors, int(batch_size), what="images", fallback=fallback
    )
    return [
        ImageEmbedding(f, orig, (int(inp[0]), int(inp[1])))
        for f, (orig, inp) in zip(features, sizes)
    ]


#: Per model: whether the shared-image decoder gave the model's own decoder's
#: result on the first prompts it decoded (checked once per model).
_SHARED_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: Largest buffer of upscaled masks a predictor keeps (CPU; see
#: :attr:`SamPredictor.upscale_buffers`): three masks of a 2360² image.
UPSCALE_KEEP_BYTES = 64 * 2**20


class SamPredictor:
    """Compute the image embedding once and predict masks for many prompts.

    Parameters
    ----------
    sam_model : Sam
        The model; its device is used for all computation.
    """

    def __init__(self, sam_model: Sam) -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self._upscale_buffers: KeptBuffers | None = None
        self.reset_image()

    # ------------------------------------------------------------------ image
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an image for later :meth:`predict` calls.

        Parameters
        ----------
        image : ndarray ``(H, W, 3)`` uint8
            RGB (or BGR, see ``image_format``) pixels, 0–255. Grayscale,
            16-bit or float microscopy images are converted by
            :mod:`napari_sam.workflows.image`, not here.
        image_format : {"RGB", "BGR"}
            Channel order of ``image``.
        """
        if image_format not in ("RGB", "BGR"):
            raise ImageFormatError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}.")
        input_torch = _input_tensor(self.transform, image, image_format, self.model.image_format)
        self.set_torch_image(input_torch.to(self.device)[None], image.shape[:2])

    @torch.no_grad()
    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """Encode an image already resized with :meth:`ResizeLongestSide.apply_image_torch`.

        Parameters
        ----------
        transformed_image : Tensor ``(1, 3, H', W')``
            RGB, 0–255, longest side equal to the model's ``img_size``.
        original_image_size : tuple of int
            ``(H, W)`` of the image before resizing.
        """
        size = self.model.image_encoder.img_size
        if (
            transformed_image.ndim != 4
            or transformed_image.shape[1] != 3
            or max(transformed_image.shape[2:]) != size
        ):
            raise ImageFormatError(
                "set_torch_image expects a (1, 3, H, W) tensor whose longest side is "
                f"{size} pixels, got shape {tuple(transformed_image.shape)}."
            )
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(int(s) for s in transformed_image.shape[-2:])
        (self.features,) = _encode_with_fallback(
            self.model, [transformed_image[0]], batch_size=1, what="images"
        )
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The current image embedding, ``(1, 256, 64, 64)``."""
        self._require_image()
        return self.features

    def get_embedding(self) -> ImageEmbedding:
        """The current image's embedding with its sizes, to store and restore later."""
        self._require_image()
        return ImageEmbedding(self.features, self.original_size, self.input_size)

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Restore an embedding from :meth:`get_embedding` without running the encoder.

        The features are moved to the model's device and dtype (an embedding
        stored as float16 on disk comes back as float32).
        """
        expected = (
            1,
            self.model.prompt_encoder.embed_dim,
            *self.model.prompt_encoder.image_embedding_size,
        )
        if tuple(embedding.features.shape) != expected:
            raise ImageFormatError(
                f"The stored image embedding has shape {tuple(embedding.features.shape)}, "
                f"but this model needs {expected}; it was made by another model."
            )
        dtype = self.model.pixel_mean.dtype
        features = embedding.features.to(device=self.device, dtype=dtype)
        # The same embedding again (the dock restores it before every prediction):
        # keep the decoder's image side computed for it.
        shared = self._shared if self._shared and self._shared[0] is features else None
        self.reset_image()
        self.features = features
        self._shared = shared
        self.original_size = tuple(int(s) for s in embedding.original_size)
        self.input_size = tuple(int(s) for s in embedding.input_size)
        self.is_image_set = True

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self._shared: tuple[torch.Tensor, _shared.SharedImageDecoder] | None = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self.original_size: tuple[int, ...] | None = None
        self.input_size: tuple[int, ...] | None = None

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.model.device

    @property
    def upscale_buffers(self) -> KeptBuffers:
        """Buffers for masks upscaled to the image
        (:func:`~napari_sam.predictors.upscale.postprocess_masks`), kept from
        prediction to prediction on the CPU (inactive on a GPU).

        A 2048² image's three upscaled masks take 48 MiB: as a fresh tensor per
        click, mapped and faulted in anew each time, they cost about as much
        as the upscaling itself. Masks upscaled into these buffers are valid
        until the next upscaling with them: threshold or copy them first.
        """
        device = self.device
        pool = self._upscale_buffers
        if pool is None or pool.device != device:
            pool = KeptBuffers(device, torch.float32, UPSCALE_KEEP_BYTES,
                               active=device.type == "cpu")
            self._upscale_buffers = pool
        return pool

    def shared_decoder(
        self, sparse: torch.Tensor, dense: torch.Tensor
    ) -> _shared.SharedImageDecoder | None:
        """SAM's mask decoder for point/box prompts on the current embedding, with
        the image side computed once per embedding (float32), or None.

        :class:`~napari_sam.model.sam.shared_decoder.SharedImageDecoder` computes
        the model decoder's multimask output up to float rounding; it is built
        once per embedding, so a click costs only its prompt's part of the
        decoder. ``sparse`` ``(B, n, C)`` and ``dense`` (the "no mask" embedding,
        ``(B, C, h, w)``) are the prompt encoder's output for the prompts about
        to be decoded: the first time a model is used, the shared decoder is
        checked on them against the model's own decoder, and where they
        disagree (or the model lacks SAM's decoder structure) this returns
        None for that model from then on.
        """
        self._require_image()
        model = self.model
        if not _SHARED_OK.get(model, True) or not _shared.SharedImageDecoder.supports(model):
            return None
        if self._shared is None or self._shared[0] is not self.features:
            fast = _shared.SharedImageDecoder(
                model, self.features, model.prompt_encoder.get_dense_pe(), dense[:1],
                dtype=torch.float32,
            )
            self._shared = (self.features, fast)
        fast = self._shared[1]
        if model not in _SHARED_OK:
            _SHARED_OK[model] = bool(
                _shared.agrees_with_model(
                    fast, model, self.features, model.prompt_encoder.get_dense_pe(),
                    sparse[:2], dense[:2],
                )
            )
            if not _SHARED_OK[model]:
                self._shared = None
                return None
        return fast

    # ------------------------------------------------------------------ prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts on the current image.

        Parameters
        ----------
        point_coords : ndarray ``(N, 2)``, optional
            Points as (x, y) pixels of the original image.
        point_labels : ndarray ``(N,)``, optional
            1 = foreground (positive), 0 = background (negative).
        box : ndarray ``(4,)`` or ``(1, 4)``, optional
            Box as x0, y0, x1, y1 pixels of the original image.
        mask_input : ndarray ``(1, 256, 256)``, optional
            Low-resolution logits of an earlier prediction (``logits[i:i+1]``).
        multimask_output : bool
            Return three candidate masks (best for ambiguous single clicks).
        return_logits : bool
            Return float logits instead of boolean masks.

        Returns
        -------
        masks : ndarray ``(C, H, W)`` bool (float32 logits with ``return_logits``)
        scores : ndarray ``(C,)`` float32, predicted IoU of each mask
        logits : ndarray ``(C, 256, 256)`` float32, low-resolution logits
        """
        self._require_image()
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None or point_labels is not None:
            coords, labels = _check_points(point_coords, point_labels)
            coords = self.transform.apply_coords(coords, self.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            box = _check_box(box)
            box = self.transform.apply_boxes(box, self.original_size)
            box_t = torch.as_tensor(box, dtype=torch.float, device=self.device)[None, :]
        if mask_input is not None:
            mask_t = torch.as_tensor(
                _check_mask_input(mask_input, self.model), dtype=torch.float, device=self.device
            )[None]

        masks, scores, low_res = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output, return_logits=return_logits
        )
        return (
            masks[0].detach().cpu().numpy(),
            scores[0].detach().float().cpu().numpy(),
            low_res[0].detach().float().cpu().numpy(),
        )

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction with prompts already in the model input frame.

        Parameters
        ----------
        point_coords : Tensor ``(B, N, 2)`` or None
            x, y in the resized frame (see :meth:`ResizeLongestSide.apply_coords_torch`).
        point_labels : Tensor ``(B, N)`` or None
        boxes : Tensor ``(B, 4)`` or None
        mask_input : Tensor ``(B, 1, 256, 256)`` or None

        Returns
        -------
        masks : Tensor ``(B, C, H, W)`` bool (logits with ``return_logits``)
        iou_predictions : Tensor ``(B, C)``
        low_res_logits : Tensor ``(B, C, 256, 256)``
        """
        self._require_image()
        if (point_coords is None) != (point_labels is None):
            raise PromptError("Point coordinates and point labels must be given together.")
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        fast = None
        if mask_input is None and multimask_output:
            fast = self.shared_decoder(sparse, dense)
        if fast is not None:
            iou, low_res_for = fast.decode(sparse)
            low_res = low_res_for(torch.arange(iou.numel(), device=iou.device))
            low_res = low_res.reshape(*iou.shape, *low_res.shape[-2:])
        else:
            low_res, iou = self.model.mask_decoder(
                image_embeddings=self.features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
        if return_logits:
            masks = postprocess_masks(self.model, low_res, self.input_size, self.original_size)
        else:
            masks = postprocess_masks(
                self.model, low_res, self.input_size, self.original_size, self.upscale_buffers
            )
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise ImageNotSetError(
                "An image must be set with .set_image(...) before mask prediction."
            )


# ---------------------------------------------------------------------- input checks
def _check_rgb_uint8(image: object) -> None:
    if not isinstance(image, np.ndarray):
        raise ImageFormatError(
            f"The image must be a numpy array of shape (H, W, 3), got {type(image).__name__}."
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageFormatError(
            f"The image must be RGB with shape (H, W, 3); got shape {image.shape}. "
            "Convert grayscale or multichannel microscopy images with "
            "napari_sam.workflows.image.to_sam_rgb first."
        )
    if image.dtype != np.uint8:
        raise ImageFormatError(
            f"The image must be 8-bit (uint8, 0-255); got {image.dtype}. Convert it with "
            "napari_sam.workflows.image.to_sam_rgb, which applies contrast limits."
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageFormatError(f"The image is empty (shape {image.shape}).")


def _check_points(coords: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    if coords is None or labels is None:
        raise PromptError("Point coordinates and point labels must be given together.")
    coords = np.asarray(coords, dtype=float)
    labels = np.asarray(labels)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise PromptError(f"point_coords must have shape (N, 2) as (x, y); got {coords.shape}.")
    if labels.ndim != 1 or labels.shape[0] != coords.shape[0]:
        raise PromptError(
            f"point_labels must hold one label per point: {coords.shape[0]} point(s) but "
            f"labels of shape {labels.shape}."
        )
    if not np.isfinite(coords).all():
        raise PromptError("point_coords contain NaN or infinite values.")
    if not np.isin(labels, (0, 1)).all():
        raise PromptError("point_labels must be 1 (foreground) or 0 (background).")
    return coords, labels


def _check_box(box: object) -> np.ndarray:
    box = np.asarray(box, dtype=float)
    if box.size != 4 or box.ndim > 2:
        raise PromptError(
            f"box must be a single box (x0, y0, x1, y1) of shape (4,); got {box.shape}. "
            "Use predict_torch for several boxes at once."
        )
    box = box.reshape(4)
    if not np.isfinite(box).all():
        raise PromptError("The box contains NaN or infinite values.")
    if box[2] < box[0] or box[3] < box[1]:
        raise PromptError(f"The box {box.tolist()} is inverted: expected x0 <= x1 and y0 <= y1.")
    return box


def _check_mask_input(mask: object, model: Sam) -> np.ndarray:
    mask = np.asarray(mask, dtype=np.float32)
    expected = (1, *model.prompt_encoder.mask_input_size)
    if mask.shape != expected:
        raise PromptError(
            f"mask_input must have shape {expected} (low-resolution logits of a previous "
            f"prediction, e.g. logits[best][None]); got {mask.shape}."
        )
    return mask
