"""The automatic dock's run choices: which automatic mode, and whether planes are tiled.

Three modes (:data:`MODES`), the words the dock shows for
:func:`napari_sam.workflows.segment.segment`'s ``mode``:

- ``"auto"``: the instance decoder (AIS) when the model has one (micro-sam's
  models), else the point grid;
- ``"instance decoder (AIS)"``: AIS, refused in one sentence for a model without
  a decoder;
- ``"point grid"``: SAM's automatic mask generator, with every SAM model.

Tiling (:class:`RunChoices` ``tiling``, ``tile_size``, ``halo``) becomes a
:class:`~napari_sam.workflows.tiling.Tiling` of square tiles: ``"auto"`` tiles
planes whose longest side exceeds
:data:`~napari_sam.workflows.tiling.AUTO_TILING_THRESHOLD` pixels, ``"on"``
tiles every plane larger than one tile, ``"off"`` never tiles. The command line
and the Python API also take non-square tiles and halos.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from napari_sam.errors import SettingsError
from napari_sam.workflows.tiling import (
    AUTO_TILING_THRESHOLD,
    DEFAULT_HALO,
    DEFAULT_TILE_SHAPE,
    Tiling,
)

__all__ = [
    "MODES",
    "MODE_AIS",
    "MODE_AUTO",
    "MODE_GRID",
    "MODE_NAMES",
    "RunChoices",
    "workflow_mode",
]

MODE_AUTO, MODE_AIS, MODE_GRID = "auto", "instance decoder (AIS)", "point grid"
#: The dock's modes, in the order shown.
MODES = (MODE_AUTO, MODE_AIS, MODE_GRID)
#: The dock's words for the modes :func:`napari_sam.workflows.segment.segment` ran.
MODE_NAMES = {"ais": MODE_AIS, "amg": MODE_GRID}
_WORKFLOW = {MODE_AUTO: "auto", MODE_AIS: "ais", MODE_GRID: "amg"}


def workflow_mode(mode: str) -> str:
    """``"auto"``, ``"ais"`` or ``"amg"``: the ``mode`` of ``segment()`` for a dock mode."""
    try:
        return _WORKFLOW[mode]
    except KeyError:
        raise SettingsError(
            f"The mode must be one of {', '.join(MODES)}, not {mode!r}."
        ) from None


@dataclass(frozen=True)
class RunChoices:
    """How the next automatic run segments (remembered between sessions)."""

    # The help of each field is written once, here: the dock's tooltips are made from it.
    mode: Literal["auto", "instance decoder (AIS)", "point grid"] = field(
        default=MODE_AUTO, metadata={
            "label": "Mode",
            "help": "auto: the instance decoder (AIS) when the model has one (micro-sam's "
            "models, e.g. vit_b_lm), else the point grid. AIS: one encoder and one decoder "
            "pass per image, then a watershed; fast, made for cells and nuclei. Point grid: "
            "SAM prompted with a grid of points; works with every SAM model."})
    tiling: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "label": "Tiling",
        "help": f"auto: planes whose longest side exceeds {AUTO_TILING_THRESHOLD} pixels are "
        "cut into overlapping tiles, each seen by SAM at full resolution; on: every plane "
        "larger than one tile; off: the whole plane is shrunk to SAM's 1024 pixels."})
    tile_size: int = field(default=DEFAULT_TILE_SHAPE[0], metadata={
        "label": "Tile size (px)", "min": 64, "max": 8192,
        "help": "The side of the square tiles; each is encoded with the halo around it "
        "(768 with a 128 halo: SAM's 1024 pixels exactly)."})
    halo: int = field(default=DEFAULT_HALO[0], metadata={
        "label": "Halo (px)", "min": 0, "max": 4095,
        "help": "Context added on each side of a tile, less than half the tile size; at least "
        "the radius of the largest objects, so that an object is seen whole."})

    def check(self) -> None:
        """Raise :class:`SettingsError` for a value out of range (one sentence)."""
        workflow_mode(self.mode)
        self.to_tiling()

    @property
    def workflow_mode(self) -> str:
        """``"auto"``, ``"ais"`` or ``"amg"``."""
        return workflow_mode(self.mode)

    def to_tiling(self) -> Tiling:
        """The :class:`~napari_sam.workflows.tiling.Tiling` for ``segment(tiling=...)``."""
        if self.tiling not in ("auto", "on", "off"):
            raise SettingsError(f"Tiling must be auto, on or off, not {self.tiling!r}.")
        return Tiling(mode=self.tiling, tile_shape=self.tile_size, halo=self.halo)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
