"""THE model loader: the one function the CLI, the widgets and Python users load models with.

:func:`load` resolves the model name and device, finds (or downloads, hash
checked) the weights, builds the network with strict keys, moves it to the
device, sets the encoder precision and returns a :class:`LoadedModel`, which
knows its name, its weights' identity (for embedding caches), the device it
was loaded on and the device it is on now (after an out-of-memory fallback the
model may have moved to the CPU). :func:`load_model` returns the bare
:class:`~napari_sam.model.sam.sam.Sam` for ``segment_anything``-style code::

    sam = load_model("vit_b")                       # downloads once, then cached
    sam = load_model("vit_b", "sam_vit_b_01ec64.pth", device="cpu")
    sam = load_model("auto")                        # vit_t on CPU, vit_b on a GPU
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from napari_sam.errors import CheckpointError, ModelTypeMismatchError, UnknownModelTypeError
from napari_sam.model.build import CONFIGS
from napari_sam.model.precision import check_precision
from napari_sam.model.sam.sam import Sam
from napari_sam.model.sam2.build import SAM2_CONFIGS
from napari_sam.runtime import config
from napari_sam.runtime.checkpoints import build_any
from napari_sam.runtime.device import resolve_device
from napari_sam.runtime.weights import CHECKPOINTS, MODEL_TYPE_ALIASES, checkpoint_path

__all__ = [
    "AUTO",
    "LoadedModel",
    "is_sam2",
    "load",
    "load_model",
    "model_id_for",
    "model_names",
    "resolve_model_type",
]

#: The model name that picks a model for the device (MobileSAM on a CPU, ViT-B on a GPU).
AUTO = "auto"


def model_names() -> list[str]:
    """Every model name :func:`load` accepts besides ``"auto"`` (aliases included)."""
    return sorted(set(CONFIGS) | set(SAM2_CONFIGS) | set(MODEL_TYPE_ALIASES))


def is_sam2(model_type: str) -> bool:
    """Whether a (resolved) model name is a SAM 2.1 model (``"sam2_tiny"``, ...)."""
    return MODEL_TYPE_ALIASES.get(model_type, model_type) in SAM2_CONFIGS


def resolve_model_type(model_type: str = AUTO, device: str | torch.device | None = "auto") -> str:
    """Turn ``"auto"`` into a concrete model type for a device; check other names.

    ``"auto"`` means ``"vit_b"`` on a GPU (CUDA or MPS) and the much faster
    MobileSAM ``"vit_t"`` on a CPU. Aliases (``"default"`` = ``"vit_h"``) are
    resolved.

    Raises
    ------
    UnknownModelTypeError
        If ``model_type`` is not a model napari-sam knows.
    DeviceError
        If ``device`` is not usable here.
    """
    if model_type != AUTO:
        name = MODEL_TYPE_ALIASES.get(model_type, model_type)
        if name not in CONFIGS and name not in SAM2_CONFIGS:
            known = ", ".join(model_names())
            raise UnknownModelTypeError(
                f"{model_type!r} is not a model napari-sam knows; choose 'auto' or one of {known}."
            )
        return name
    dev = resolve_device(device)
    if dev.type == "cpu" and "vit_t" in CHECKPOINTS:
        return "vit_t"
    return "vit_b"


def model_id_for(model_type: str, checkpoint: str | os.PathLike[str] | None = None) -> str:
    """The identity of a model's weights, as embedding caches name it.

    Published weights are named by their model type (``"vit_b"``; they are
    verified by hash when downloaded); a checkpoint file by its absolute path,
    size and modification time, so a file replaced by another gets a new id.

    Raises
    ------
    CheckpointError
        If ``checkpoint`` is given but cannot be found.
    """
    if checkpoint is None or not str(checkpoint).strip():
        return str(model_type)
    path = Path(checkpoint).expanduser()
    try:
        stat = path.stat()
    except OSError as exc:
        raise CheckpointError(
            f"The checkpoint file {path} cannot be found ({exc.strerror or exc})."
        ) from exc
    return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class LoadedModel:
    """A model ready to use, and what it is.

    Attributes
    ----------
    sam : Sam
        The network, in eval mode.
    model_type : str
        Its architecture (``"vit_b"``, ``"vit_t"``, ...).
    model_id : str
        Identity of its weights in embedding keys (:func:`model_id_for`).
    name : str
        Shown to the user: the model type, or the checkpoint's file name.
    loaded_on : torch.device
        The device it was loaded on.
    """

    sam: Any
    model_type: str
    model_id: str
    name: str
    loaded_on: torch.device

    @property
    def device(self) -> torch.device:
        """The device its weights are on now (the CPU after an out-of-memory fallback)."""
        try:
            return next(self.sam.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            return self.loaded_on

    @property
    def moved(self) -> bool:
        """Whether it left the device it was loaded on (moved to the CPU: out of memory)."""
        return self.device.type != self.loaded_on.type

    @property
    def encoder_precision(self) -> str:
        """``"float32"``, ``"bfloat16"`` or ``"float16"``: the image encoder's arithmetic now."""
        dtype = getattr(self.sam, "encoder_dtype", None)
        return "float32" if dtype is None else str(dtype).removeprefix("torch.")

    def describe(self) -> str:
        """One line for the user, e.g. ``"vit_t on cpu, bf16 encoder"``."""
        short = {"bfloat16": "bf16", "float16": "fp16"}.get(self.encoder_precision)
        note = f", {short} encoder" if short else ""
        if self.moved:
            return (
                f"{self.name} on {self.device.type} (moved from {self.loaded_on.type}: "
                f"out of memory){note}"
            )
        return f"{self.name} on {self.loaded_on}{note}"

    @classmethod
    def wrap(cls, sam: Any, model_id: str, name: str | None = None) -> LoadedModel:
        """A :class:`LoadedModel` for a model built elsewhere (scripts, tests)."""
        try:
            device = next(sam.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            device = torch.device("cpu")
        return cls(sam, getattr(sam, "model_type", "custom"), model_id, name or model_id, device)


def load(
    model: str = AUTO,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "auto",
    *,
    precision: str | None = None,
    compile: bool | None = None,
    download: bool = True,
    progress: bool = True,
    progress_callback: Any = None,
    should_cancel: Any = None,
) -> LoadedModel:
    """Load a model with its weights on a device, ready for inference.

    Parameters
    ----------
    model : str
        ``"auto"`` (MobileSAM on a CPU, ViT-B on a GPU), ``"vit_b"``, ``"vit_l"``,
        ``"vit_h"``, ``"vit_t"`` or ``"default"`` (= ViT-H); or a SAM 2.1 model
        (:class:`~napari_sam.model.sam2.sam2.Sam2`): ``"sam2_tiny"``,
        ``"sam2_small"``, ``"sam2_base_plus"``, ``"sam2_large"``.
    checkpoint : path, optional
        A local checkpoint file. If omitted (or empty), the published weights
        of ``model`` are taken from the cache (downloaded if missing). With
        ``model="auto"``, the architecture is the one the file holds.
    device : str or torch.device, optional
        ``"auto"`` (CUDA > MPS > CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    precision : str, optional
        Image-encoder precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``
        (see :mod:`napari_sam.model.precision`); "auto" (default) is what
        :func:`napari_sam.runtime.config.default_precision` says. Masks and scores
        are always float32.
    compile : bool, optional
        Compile the image encoder with ``torch.compile`` (slow first call);
        default :func:`napari_sam.runtime.config.compile_by_default`.
    download : bool
        Allow downloading missing published weights.
    progress : bool
        Show a text progress bar on stderr while downloading.
    progress_callback, should_cancel : callable, optional
        Download progress (:class:`~napari_sam.runtime.progress.Progress` events)
        and cancellation (see :func:`napari_sam.runtime.weights.download`).

    Raises
    ------
    UnknownModelTypeError, DeviceError, CheckpointError, WeightsDownloadError, Cancelled
    """
    precision = check_precision(precision or "auto")
    if precision == "auto":  # NAPARI_SAM_PRECISION says what "auto" means
        precision = check_precision(config.default_precision())
    dev = resolve_device(device)
    model_type = resolve_model_type(model, dev)
    if checkpoint is not None and not str(checkpoint).strip():
        checkpoint = None  # an empty path field in a GUI means "the published weights"
    if checkpoint is None:
        path = checkpoint_path(
            model_type,
            download=download,
            progress=progress,
            progress_callback=progress_callback,
            should_cancel=should_cancel,
        )
        name = model_type
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"The checkpoint file {path} does not exist; check the path, or leave the "
                "checkpoint empty to use the published weights."
            )
        name = path.name
    try:
        sam = build_any(model_type, path)
    except ModelTypeMismatchError as exc:
        known = exc.found in CONFIGS or exc.found in SAM2_CONFIGS
        if not (model == AUTO and checkpoint is not None and known):
            raise
        model_type = exc.found
        sam = build_any(model_type, path)
    sam = sam.to(dev).eval()
    sam.precision = precision
    sam.model_type = model_type
    if compile if compile is not None else config.compile_by_default():
        sam.compile_encoder()
    model_id = model_id_for(model_type, None if checkpoint is None else path)
    return LoadedModel(sam, model_type, model_id, name, dev)


def load_model(
    model_type: str = "vit_b",
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "auto",
    **kwargs: Any,
) -> Sam:
    """:func:`load`, returning the bare network (``segment_anything`` style).

    ``model_type`` defaults to ``"vit_b"``; the other arguments are those of :func:`load`.
    """
    return load(model_type, checkpoint, device, **kwargs).sam
