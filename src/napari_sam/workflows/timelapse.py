"""One line of planes through a time-lapse of stacks ``(T, Z, Y, X)``, as a stack.

Following objects with SAM 2's memory (``napari-sam propagate``) works along
one axis of planes: the slices of a stack or the frames of a movie. In a
time-lapse of stacks the user says which (:class:`TimelapseLine`): **through
the slices** (``along="z"``) of one time point, or **through the time
points** (``along="t"``) at one slice. :meth:`TimelapseLine.view` shows that
line as a ``(N, Y, X)`` stack read one plane at a time (an
:class:`~napari_sam.workflows.planes.AxisStack`: a lazily read file stays
lazy), and :class:`LineLabels` puts the labels found on one or more lines back
into a label image of the whole time-lapse, so that the output lies on the
input; it is written plane by plane, never made whole in memory (a time-lapse of
100 stacks of 50 slices of 2048² pixels would need 84 GB of ``uint32``).
A prompt table with a ``t`` column names several lines at once
(:meth:`TimelapseLine.from_table`).

No napari or torch here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.errors import SettingsError
from napari_sam.workflows.planes import AxisStack, ImagePlanes, plane_geometry

__all__ = ["ALONG", "LineLabels", "TimelapseLine", "describe_lines"]

#: The axes a line can follow, by name: t (axis 0, the time points), z (axis 1, the slices).
ALONG = {"t": 0, "z": 1}


@dataclass(frozen=True)
class TimelapseLine:
    """Where objects are followed in a ``(T, Z, Y, X)`` image.

    Attributes
    ----------
    along : ``"z"`` or ``"t"``
        Through the slices of one time point, or through the time points at one slice.
    at : int
        The time point (``along="z"``) or the slice (``along="t"``).
    """

    along: str
    at: int

    @property
    def axis(self) -> int:
        """The leading axis followed: 1 (slices) or 0 (time points)."""
        return ALONG[self.along]

    @classmethod
    def check(cls, along: str | None, at: int | None, shape: Any, name: str) -> TimelapseLine:
        """The line of the image ``name`` of ``shape`` ``(T, Z, Y, X)`` the user asked for.

        Raises
        ------
        SettingsError
            No position given, an unknown axis or a position outside the image
            (one sentence each).
        """
        shape = tuple(int(s) for s in shape)
        along, n, other = _positions(along, shape)
        if at is None:
            raise SettingsError(
                f"{name} is a time-lapse of stacks (T, Z, Y, X) of shape {shape}: say where to "
                "follow the objects, --along z --at T (through the slices of time point T) or "
                "--along t --at Z (through the time points at slice Z)."
            )
        if not 0 <= int(at) < n:
            raise SettingsError(
                f"--at {at}: {name} has {n} {other}s (0 to {n - 1}) to follow objects at."
            )
        return cls(along, int(at))

    @property
    def index(self) -> tuple[int, int]:
        """A full leading index ``(t, z)`` on the line."""
        return (self.at, 0) if self.axis == 1 else (0, self.at)

    def view(self, data: Any, contrast: Any) -> AxisStack:
        """The line of ``data`` ``(T, Z, Y, X)`` as a ``(N, Y, X)`` stack (``contrast``: the
        display range SAM sees, the whole time-lapse's)."""
        return AxisStack(ImagePlanes(data, contrast=contrast), self.index, self.axis)

    def write(self, out: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Write ``labels`` ``(N, Y, X)`` of the line into ``out`` ``(T, Z, Y, X)`` (in place;
        returns ``out``). Other lines keep their labels."""
        out[plane_geometry(out.shape).line_slicer(self.index, self.axis)] = labels
        return out

    @classmethod
    def from_table(cls, along: str | None, keys: Any, shape: Any, name: str,
                   table: str) -> list[TimelapseLine]:
        """The lines of a prompt table with a ``t`` column (``keys``: its time points with
        ``along="z"``, its slices with ``along="t"``) in the image ``name`` of ``shape``.

        Raises
        ------
        SettingsError
            A line outside the image (one sentence naming the table).
        """
        along, n, other = _positions(along, shape)
        bad = [int(k) for k in keys if not 0 <= int(k) < n]
        if bad:
            raise SettingsError(
                f"{table} has clicks at {other} {bad[0]}, but {name} has {n} {other}s "
                f"(0 to {n - 1})."
            )
        return [cls(along, int(k)) for k in sorted(keys)]

    @property
    def unit(self) -> str:
        """What a position on the line is called: "slice" or "time point"."""
        return "slice" if self.axis == 1 else "time point"

    def describe(self) -> str:
        """E.g. "through the slices of time point 2"."""
        if self.axis == 1:
            return f"through the slices of time point {self.at}"
        return f"through the time points at slice {self.at}"

    @property
    def name(self) -> str:
        """The line in a list of lines, e.g. "time point 2" or "slice 5"."""
        return f"time point {self.at}" if self.axis == 1 else f"slice {self.at}"


def _positions(along: str | None, shape: Any) -> tuple[str, int, str]:
    """The checked axis (default z), how many lines there are on the other leading axis of
    ``shape`` ``(T, Z, Y, X)``, and what one of them is called ("time point" or "slice")."""
    along = "z" if along is None else str(along).lower()
    if along not in ALONG:
        raise SettingsError(f"--along must be z or t, not {along!r}.")
    n = int(tuple(shape)[1 - ALONG[along]])
    return along, n, "time point" if along == "z" else "slice"


def describe_lines(lines: list[TimelapseLine]) -> str:
    """E.g. "through the slices of time points 0, 1, 2" (one line: its
    :meth:`TimelapseLine.describe`)."""
    if len(lines) == 1:
        return lines[0].describe()
    ats = ", ".join(str(line.at) for line in lines)
    if lines[0].axis == 1:
        return f"through the slices of time points {ats}"
    return f"through the time points at slices {ats}"


class LineLabels:
    """The label image ``(T, Z, Y, X)`` of a time-lapse of stacks, found on some lines and
    zero elsewhere, kept as the lines' own ``(N, Y, X)`` label volumes.

    :func:`~napari_sam.workflows.io.write_labels_tiff` writes it plane by plane
    (:meth:`planes`): the whole image is never in memory.

    Parameters
    ----------
    shape : tuple of int
        ``(T, Z, Y, X)`` of the time-lapse.
    """

    def __init__(self, shape: Any) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 4:
            raise ValueError(f"A time-lapse of stacks has 4 axes (T, Z, Y, X), not {self.shape}.")
        self._lines: list[tuple[TimelapseLine, np.ndarray]] = []

    @property
    def ndim(self) -> int:
        return 4

    def add(self, line: TimelapseLine, labels: Any) -> None:
        """The labels ``(N, Y, X)`` found on ``line`` (``N``: slices for ``along="z"``,
        time points for ``along="t"``); a later line wins where lines cross."""
        labels = np.asarray(labels)
        expected = (self.shape[line.axis], *self.shape[2:])
        if labels.shape != expected:
            raise ValueError(f"Labels of {line.name} should have shape {expected}, "
                             f"not {labels.shape}.")
        self._lines.append((line, labels))

    def max_id(self) -> int:
        """The largest object id (0 when nothing was found)."""
        return max((int(v.max()) for _, v in self._lines if v.size), default=0)

    def plane(self, t: int, z: int) -> np.ndarray | None:
        """The labels ``(Y, X)`` of slice ``z`` of time point ``t``; None off every line."""
        for line, labels in reversed(self._lines):
            if line.axis == 1 and line.at == t:
                return labels[z]
            if line.axis == 0 and line.at == z:
                return labels[t]
        return None

    def planes(self, dtype: Any = np.uint32) -> Iterator[np.ndarray]:
        """Every plane ``(Y, X)`` in ``dtype``, time point by time point, slice by slice."""
        zero = np.zeros(self.shape[2:], dtype)
        for t in range(self.shape[0]):
            for z in range(self.shape[1]):
                found = self.plane(t, z)
                yield zero if found is None else found.astype(dtype, copy=False)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The whole image (for small ones and tests; writing never needs it)."""
        out = np.zeros(self.shape, np.uint32 if dtype is None else dtype)
        for line, labels in self._lines:
            line.write(out, labels)
        return out
