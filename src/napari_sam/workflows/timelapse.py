"""One line of planes through a time-lapse of stacks ``(T, Z, Y, X)``, as a stack.

Following objects with SAM 2's memory (``napari-sam propagate``) works along
one axis of planes: the slices of a stack or the frames of a movie. In a
time-lapse of stacks the user says which (:class:`TimelapseLine`): **through
the slices** (``along="z"``) of one time point, or **through the time
points** (``along="t"``) at one slice. :meth:`TimelapseLine.view` shows that
line as a ``(N, Y, X)`` stack read one plane at a time (an
:class:`~napari_sam.workflows.planes.AxisStack`: a lazily read file stays
lazy), and :meth:`TimelapseLine.place` puts the labels found on it back into a
label image of the whole time-lapse, so that the output lies on the input.
A prompt table with a ``t`` column names several lines at once
(:meth:`TimelapseLine.from_table`).

No napari or torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.errors import SettingsError
from napari_sam.workflows.planes import AxisStack, ImagePlanes, plane_geometry

__all__ = ["ALONG", "TimelapseLine", "describe_lines"]

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

    def place(self, labels: np.ndarray, shape: Any) -> np.ndarray:
        """``labels`` ``(N, Y, X)`` of the line in a zero label image of ``shape``
        ``(T, Z, Y, X)`` (same dtype)."""
        out = np.zeros(tuple(int(s) for s in shape), dtype=labels.dtype)
        return self.write(out, labels)

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
