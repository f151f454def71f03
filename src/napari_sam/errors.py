"""Every exception napari-sam raises, under one base class.

Each carries one plain sentence a biologist can act on. They derive from the
built-in exception a Python user would expect (``ValueError`` for bad input,
``RuntimeError`` for a wrong state or a failed operation, ``OSError`` for
files), so code written against Meta's ``segment_anything`` that catches those
keeps working. :class:`Cancelled` is the one exception for work the user
stopped (Cancel button, Ctrl+C): whatever was finished before is kept.

This module imports nothing from the package (it is the bottom layer).
"""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "CheckpointError",
    "ClusterError",
    "DeviceError",
    "DeviceFallbackWarning",
    "EmbeddingCacheError",
    "ImageFormatError",
    "ImageNotSetError",
    "InputFileError",
    "MaskRecordError",
    "ModelTypeMismatchError",
    "NapariSamError",
    "NoDecoderError",
    "OutOfMemoryError",
    "OutputFileError",
    "PromptError",
    "PropagationError",
    "SettingsError",
    "UnknownModelTypeError",
    "WeightsDownloadError",
]


class NapariSamError(Exception):
    """Base class of all napari-sam errors."""


class Cancelled(NapariSamError, RuntimeError):
    """The user stopped the work (a download, an encoding, a long job); what was done is kept."""


# --------------------------------------------------------------------------- input
class ImageFormatError(NapariSamError, ValueError):
    """The image has a shape, dtype or channel count the operation cannot use."""


class PromptError(NapariSamError, ValueError):
    """Point, box or mask prompts are malformed (shape, length, NaN, order)."""


class SettingsError(NapariSamError, ValueError):
    """A setting (automatic segmentation, mask generator) is out of range or inconsistent."""


class PropagationError(NapariSamError, ValueError):
    """Propagation was asked for with inputs it cannot use (empty seed, slice out of range)."""


class MaskRecordError(NapariSamError, ValueError):
    """A mask record (or mask) cannot be read, or does not fit the label image."""


class ImageNotSetError(NapariSamError, RuntimeError):
    """A prediction was requested before an image was encoded."""


# --------------------------------------------------------------------------- files
class InputFileError(NapariSamError, ValueError):
    """An input file is missing, unreadable or holds no image napari-sam can segment."""


class OutputFileError(NapariSamError, OSError):
    """An output file cannot be written."""


class EmbeddingCacheError(NapariSamError, OSError):
    """The on-disk embedding cache cannot be created, read or written."""


# --------------------------------------------------------------------------- models
class CheckpointError(NapariSamError, RuntimeError):
    """A checkpoint file cannot be read or does not fit the model."""


class ModelTypeMismatchError(CheckpointError):
    """The checkpoint holds the weights of another model type.

    Attributes
    ----------
    expected : str
        The model type that was asked for.
    found : str or None
        The model type the checkpoint's tensor shapes belong to, if known.
    """

    def __init__(self, message: str, expected: str, found: str | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.found = found


class UnknownModelTypeError(NapariSamError, ValueError):
    """The model name is not one napari-sam knows (e.g. a typo in ``"vit_b"``)."""


class WeightsDownloadError(NapariSamError, RuntimeError):
    """Model weights could not be downloaded or failed verification."""


class NoDecoderError(NapariSamError, ValueError):
    """Automatic instance segmentation (AIS) was asked of a model without an instance decoder."""


# --------------------------------------------------------------------------- devices
class DeviceError(NapariSamError, RuntimeError):
    """The requested compute device is not available on this machine."""


class OutOfMemoryError(NapariSamError, RuntimeError):
    """The work does not fit in memory even one item at a time on any device allowed."""


class ClusterError(NapariSamError, RuntimeError):
    """A Dask cluster cannot be reached or started, or lost the work it was given."""


class DeviceFallbackWarning(UserWarning):
    """Work had to be retried with less memory: smaller batches, or on the CPU.

    Raised as a warning (``warnings.warn``), never as an exception: the result
    is still correct, only slower. The napari widgets show it as a notification.
    """
