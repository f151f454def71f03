"""THE model loader: the one function the CLI, the widgets and Python users load models with.

:func:`load` resolves the model name and device, finds (or downloads, hash
checked) the weights, builds the network with strict keys, moves it to the
device, sets the encoder precision ("auto" resolved for the machine, see
:mod:`napari_sam.runtime.precision`) and returns a :class:`LoadedModel`, which
knows its name, its weights' identity (for embedding caches), the device it
was loaded on and the device it is on now (after an out-of-memory fallback the
model may have moved to the CPU), and which precision its encoder uses and why.
:func:`load_model` returns the bare :class:`~napari_sam.model.sam.sam.Sam` for
``segment_anything``-style code::

    sam = load_model("vit_b")                       # downloads once, then cached
    sam = load_model("vit_b", "sam_vit_b_01ec64.pth", device="cpu")
    sam = load_model("auto")                        # vit_t on CPU, vit_b on a GPU

micro-sam's fine-tuned models (``"vit_b_lm"``, ``"vit_l_em_organelles"``, ...)
load the same way, together with their instance decoder for automatic instance
segmentation (:attr:`LoadedModel.decoder`); a local file exported by micro-sam as
``{"model_state": ..., "decoder_state": ...}`` brings its decoder too, and
``decoder=path`` adds a decoder file to any model of the same encoder size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from napari_sam.errors import CheckpointError, ModelTypeMismatchError, UnknownModelTypeError
from napari_sam.model.build import CONFIGS, detect_model_type
from napari_sam.model.decoders.instance import InstanceDecoder, decoder_from_state
from napari_sam.model.precision import check_precision, precision_tag
from napari_sam.model.sam.sam import Sam
from napari_sam.model.sam2.build import SAM2_CONFIGS
from napari_sam.runtime import config, weights
from napari_sam.runtime.checkpoints import (
    build_any,
    read_decoder_file,
    read_decoder_state,
)
from napari_sam.runtime.device import resolve_device
from napari_sam.runtime.precision import PrecisionChoice, apply_cpu_attention, resolve_auto
from napari_sam.runtime.weights import CHECKPOINTS, MODEL_TYPE_ALIASES, checkpoint_path

__all__ = [
    "AUTO",
    "LoadedModel",
    "architecture_of",
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
    """Every model name :func:`load` accepts besides ``"auto"`` (aliases, micro-sam's and
    SAM 2.1 models)."""
    return sorted(set(CONFIGS) | set(SAM2_CONFIGS) | set(MODEL_TYPE_ALIASES) | set(CHECKPOINTS))


def architecture_of(name: str) -> str:
    """The architecture (a key of ``CONFIGS`` or ``SAM2_CONFIGS``) of a model name:
    ``"vit_b_lm"`` -> ``"vit_b"``, ``"sam2.1_hiera_tiny"`` -> ``"sam2_tiny"``."""
    name = MODEL_TYPE_ALIASES.get(name, name)
    if name in CONFIGS or name in SAM2_CONFIGS:
        return name
    info = CHECKPOINTS.get(name)
    if info is not None and (info.arch in CONFIGS or info.arch in SAM2_CONFIGS):
        return info.arch
    known = ", ".join(model_names())
    raise UnknownModelTypeError(
        f"{name!r} is not a model napari-sam knows; choose 'auto' or one of {known}."
    )


def is_sam2(model_type: str) -> bool:
    """Whether a model name is a SAM 2.1 model (``"sam2_tiny"``, ...)."""
    try:
        return architecture_of(model_type) in SAM2_CONFIGS
    except UnknownModelTypeError:
        return False


def resolve_model_type(model_type: str = AUTO, device: str | torch.device | None = "auto") -> str:
    """Turn ``"auto"`` into a concrete model type for a device; check other names.

    ``"auto"`` means ``"vit_b"`` on a GPU (CUDA or MPS) and the much faster
    MobileSAM ``"vit_t"`` on a CPU. Aliases (``"default"`` = ``"vit_h"``) are
    resolved. micro-sam's names (``"vit_b_lm"``) are returned as they are
    (:func:`architecture_of` gives their architecture).

    Raises
    ------
    UnknownModelTypeError
        If ``model_type`` is not a model napari-sam knows.
    DeviceError
        If ``device`` is not usable here.
    """
    if model_type != AUTO:
        name = MODEL_TYPE_ALIASES.get(model_type, model_type)
        if not isinstance(name, str) or (
            name not in CONFIGS and name not in SAM2_CONFIGS and name not in CHECKPOINTS
        ):
            known = ", ".join(model_names())
            raise UnknownModelTypeError(
                f"{model_type!r} is not a model napari-sam knows; choose 'auto' or one of {known}."
            )
        architecture_of(name)
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
    decoder : InstanceDecoder or None
        The instance decoder for automatic instance segmentation (AIS), if the
        model has one (micro-sam's models, or a file exported with its decoder).
    precision_choice : PrecisionChoice, optional
        What "auto" (or ``NAPARI_SAM_PRECISION``) resolved the encoder precision
        to at load time, and why; ``None`` when the caller chose it.
    """

    sam: Any
    model_type: str
    model_id: str
    name: str
    loaded_on: torch.device
    decoder: InstanceDecoder | None = None
    precision_choice: PrecisionChoice | None = None

    @property
    def has_decoder(self) -> bool:
        """Whether automatic instance segmentation (AIS) is possible with this model."""
        return self.decoder is not None

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

    @property
    def embedding_id(self) -> str:
        """The model's name in embedding keys: :attr:`model_id`, plus the encoder
        precision when it is not float32 (``"vit_b@bfloat16"``), so caches never
        mix bf16 and fp32 embeddings (the same tag as
        :class:`~napari_sam.workflows.embeddings.StackEmbeddings` uses)."""
        return precision_tag(self.model_id, getattr(self.sam, "encoder_dtype", None))

    def precision_note(self) -> str:
        """``", bf16 encoder (auto: …)"``, ``", fp32 encoder (auto: …)"`` or ``""``.

        A reduced precision is always named; float32 only when "auto" chose it
        with a reason worth telling (a CPU that could have used bf16 or cannot).
        The reason is given while the encoder still uses what was chosen.
        """
        dtype = self.encoder_precision
        short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)
        choice = self.precision_choice
        reason = choice.reason if choice is not None and choice.dtype == dtype else ""
        if dtype == "float32" and not reason:
            return ""
        return f", {short} encoder" + (f" ({reason})" if reason else "")

    def describe(self) -> str:
        """One line for the user, e.g. ``"vit_t on cpu, bf16 encoder (auto: AVX-512 BF16: …)"``."""
        note = self.precision_note()
        if self.decoder is not None:
            note += ", AIS decoder"
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
    decoder: str | os.PathLike[str] | bool | None = None,
) -> LoadedModel:
    """Load a model with its weights on a device, ready for inference.

    Parameters
    ----------
    model : str
        ``"auto"`` (MobileSAM on a CPU, ViT-B on a GPU), ``"vit_b"``, ``"vit_l"``,
        ``"vit_h"``, ``"vit_t"``, ``"default"`` (= ViT-H), one of micro-sam's
        fine-tuned models (``"vit_b_lm"``, ``"vit_b_em_organelles"``, ... see
        ``napari-sam info``), which come with an instance decoder, or a SAM 2.1
        model (:class:`~napari_sam.model.sam2.sam2.Sam2`): ``"sam2_tiny"``,
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
        :func:`napari_sam.runtime.config.default_precision` says, and otherwise
        bf16 on GPUs with bf16 tensor cores and on CPUs whose bf16 matrix
        products are measured to be fast, fp32 elsewhere
        (:func:`napari_sam.runtime.precision.resolve_auto`). Masks and scores
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
    decoder : path, bool or None
        The instance decoder for automatic instance segmentation. ``None``
        (default): the published model's decoder (downloaded with it), or the
        ``"decoder_state"`` a local checkpoint holds, if any. A path: that
        decoder file (micro-sam's ``*_decoder.pt``, or an export holding
        ``"decoder_state"``), which must belong to the same encoder size.
        ``False``: no decoder.

    Raises
    ------
    UnknownModelTypeError, DeviceError, CheckpointError, ModelTypeMismatchError,
    WeightsDownloadError, Cancelled
        Every check (files, keys, encoder sizes) happens here, before any image is
        processed; a damaged cached decoder file is deleted (the next load downloads it
        again).
    """
    precision = check_precision(precision or "auto")
    from_env = precision == "auto" and config.default_precision().strip().lower() != "auto"
    if precision == "auto":  # NAPARI_SAM_PRECISION says what "auto" means
        precision = check_precision(config.default_precision())
    dev = resolve_device(device)
    published = resolve_model_type(model, dev)
    model_type = architecture_of(published)
    if checkpoint is not None and not str(checkpoint).strip():
        checkpoint = None  # an empty path field in a GUI means "the published weights"
    if isinstance(decoder, (str, os.PathLike)) and not str(decoder).strip():
        decoder = None
    fetch = {
        "download": download,
        "progress": progress,
        "progress_callback": progress_callback,
        "should_cancel": should_cancel,
    }
    if checkpoint is None:
        path = checkpoint_path(published, **fetch)
        name = published
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
    instance_decoder = None
    if model_type in SAM2_CONFIGS and decoder not in (None, False, True):
        raise CheckpointError(
            f"The decoder {decoder} is an AIS decoder for a SAM (ViT) encoder; SAM 2.1 models "
            "have none. Choose a ViT model (e.g. vit_b_lm) for automatic instance segmentation."
        )
    if decoder is not False and model_type not in SAM2_CONFIGS:
        instance_decoder = _load_decoder(
            published if checkpoint is None else None,
            model_type,
            None if checkpoint is None else path,
            None if decoder is None or decoder is True else Path(decoder).expanduser(),
            fetch,
        )
    sam = sam.to(dev).eval()
    choice = None
    if precision == "auto" and hasattr(sam, "encoder_dtype"):
        choice = resolve_auto(dev)  # on a CPU: "bf16" where measured fast, else "fp32"
        precision = choice.precision
    sam.precision = precision
    if from_env and hasattr(sam, "encoder_dtype"):
        dtype = sam.encoder_dtype
        dtype_name = "float32" if dtype is None else str(dtype).removeprefix("torch.")
        choice = PrecisionChoice(precision, dtype_name, f"set by {config.PRECISION_ENV}")
    apply_cpu_attention(sam, dev)  # bf16 on a CPU: the attention kernel measured fastest
    sam.model_type = model_type
    if compile if compile is not None else config.compile_by_default():
        sam.compile_encoder()
    if instance_decoder is not None:
        instance_decoder = instance_decoder.to(dev).eval()
    model_id = model_id_for(published, None if checkpoint is None else path)
    return LoadedModel(sam, model_type, model_id, name, dev, instance_decoder, choice)


def _load_decoder(
    published: str | None,
    architecture: str,
    checkpoint: Path | None,
    decoder_file: Path | None,
    fetch: dict[str, Any],
) -> InstanceDecoder | None:
    """The instance decoder for a model being loaded (see :func:`load`), checked; or None."""
    if decoder_file is not None:
        state, sam_state = read_decoder_file(decoder_file)
        source = str(decoder_file)
        found = detect_model_type(sam_state) if sam_state else None
        if found is None:
            entry = weights.published_decoder(decoder_file)
            found = None if entry is None else entry.arch
        if found is not None and found != architecture:
            raise ModelTypeMismatchError(
                f"The decoder {decoder_file} was trained with a '{found}' encoder, not with "
                f"this '{architecture}' model; choose a '{found}' model or a "
                f"'{architecture}' decoder.",
                expected=architecture,
                found=found,
            )
    elif checkpoint is not None:
        state = read_decoder_state(checkpoint)
        if state is None:
            return None
        source = str(checkpoint)
    elif published is not None and CHECKPOINTS.get(published, None) is not None:
        path = weights.decoder_path(published, **fetch)
        if path is None:
            return None
        source = str(path)
        try:
            state, _ = read_decoder_file(path)
        except CheckpointError as exc:
            weights.discard_cached(published, decoder=True)
            raise CheckpointError(
                f"The cached decoder file {path} is damaged or incomplete and was deleted; "
                "load the model again to download it anew."
            ) from exc
    else:
        return None
    instance_decoder = decoder_from_state(state, source=source)
    instance_decoder.encoder = architecture
    return instance_decoder


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
