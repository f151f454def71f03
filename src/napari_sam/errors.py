"""Exceptions raised by napari-sam.

Every exception carries one plain sentence a biologist can act on. They derive
from the built-in exception a Python user would expect (``ValueError`` for bad
input, ``RuntimeError`` for a wrong state or a failed operation), so code
written against Meta's ``segment_anything`` that catches those keeps working.
"""

from __future__ import annotations


class NapariSamError(Exception):
    """Base class of all napari-sam errors."""


class ImageFormatError(NapariSamError, ValueError):
    """The image has a shape, dtype or channel count the operation cannot use."""


class PromptError(NapariSamError, ValueError):
    """Point, box or mask prompts are malformed (shape, length, NaN, order)."""


class ImageNotSetError(NapariSamError, RuntimeError):
    """A prediction was requested before an image was encoded."""


class CheckpointError(NapariSamError, RuntimeError):
    """A checkpoint file cannot be read or does not fit the model."""


class ModelTypeMismatchError(CheckpointError):
    """The checkpoint holds the weights of another SAM model type.

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


class WeightsDownloadError(NapariSamError, RuntimeError):
    """Model weights could not be downloaded or failed verification."""


class DeviceError(NapariSamError, RuntimeError):
    """The requested compute device is not available on this machine."""


class UnknownModelTypeError(NapariSamError, ValueError):
    """The model type name is not one napari-sam knows (e.g. a typo in ``"vit_b"``)."""


class DownloadCancelledError(WeightsDownloadError):
    """A weights download was stopped by the user (cancel button or Ctrl+C)."""


class DeviceFallbackWarning(UserWarning):
    """Work had to be retried with less memory: smaller batches, or on the CPU.

    Raised as a warning (``warnings.warn``), never as an exception: the result
    is still correct, only slower. The napari widgets show it as a notification.
    """


class OutOfMemoryError(NapariSamError, RuntimeError):
    """The work does not fit in memory even one item at a time on any device allowed."""
