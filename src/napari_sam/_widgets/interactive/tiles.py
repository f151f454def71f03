"""Large planes in the interactive dock: tiled embeddings and prompts routed to tiles.

A plane whose longest side exceeds the automatic tiling threshold
(:data:`~napari_sam.workflows.tiling.AUTO_TILING_THRESHOLD`, 2048 pixels;
:class:`~napari_sam.workflows.tiling.Tiling` ``"auto"``) is not shrunk to
SAM's 1024-pixel input as a whole: it is cut into overlapping tiles (768
pixels plus a 128-pixel halo by default), each encoded at full resolution
**when a prompt needs it** (a job, like the encoding of an untiled plane).
Each object's prompts go to the tile that holds them best, an object cut by
its window is predicted again in a window centred on it, and the masks are
pasted back at full resolution
(:class:`~napari_sam.workflows.tiled_prompts.TiledPromptPredictor`), so a click
near a tile border gives one whole object. Tile embeddings share the dock's
embedding store. With channel layers
(:class:`~napari_sam._widgets.channel_layers.ChannelLayers`) the tiles are cut
from SAM's red, green and blue made of them (each with its contrast limits).
Planes segmented with a SAM 2.1 model are not tiled: such a plane is shown to
SAM whole.

A window grown around an object larger than its tile is encoded while the
prediction runs, on the main thread: that is the one encoding the dock does
not run as a job (rare: objects larger than the halo).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari_sam._widgets.jobs import Job
from napari_sam._widgets.notices import Notice
from napari_sam.runtime.progress import Progress
from napari_sam.workflows.interactive import PredictionCache, is_sam2_model
from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
from napari_sam.workflows.tiled_prompts import TiledPromptPredictor
from napari_sam.workflows.tiling import Tiling, Window

__all__ = ["DockTiling"]


class DockTiling:
    """When the dock tiles, and the tiled embeddings of the image in use.

    Attributes
    ----------
    tiling : Tiling
        ``Tiling()`` (automatic above the threshold); ``Tiling.off()`` never tiles.
    cache : PredictionCache
        Masks of unchanged objects, by window embedding and prompts.
    """

    def __init__(self, tiling: Tiling | None = None) -> None:
        self.tiling = tiling if tiling is not None else Tiling()
        self.cache = PredictionCache()
        self._tiled: TiledEmbeddings | None = None
        self._signature: tuple | None = None

    def embeddings_for(
        self, image: Any, layout: Any, model: Any, store: Any, channels: Any = None
    ) -> TiledEmbeddings | None:
        """The tiled embeddings of ``image`` for ``model`` (a LoadedModel), or None when its
        planes are not tiled (small planes; SAM 2.1 models, whose planes are shown whole).
        With ``channels`` (the chosen channel layers, the first being ``image``) the tiles
        are cut from SAM's red, green and blue made of them."""
        if self.tiling.grid(layout.plane_shape) is None or is_sam2_model(model.sam):
            return None
        contrast = tuple(float(v) for v in image.contrast_limits)
        seen: Any = contrast
        if channels is not None:
            seen = (tuple(id(layer) for layer in channels.layers), tuple(channels.contrasts()))
        signature = (id(image), tuple(image.data.shape), bool(layout.rgb), model.model_id,
                     id(model.sam), seen, id(store), self.tiling)
        if signature != self._signature:
            if channels is not None:
                source: dict[str, Any] = {"data": channels.planes()}
            else:
                source = {"data": image.data, "rgb": bool(layout.rgb),
                          "contrast": None if layout.rgb else contrast}
            self._tiled = TiledEmbeddings(model.sam, model_id=model.model_id,
                                          tiling=self.tiling, store=store, **source)
            self._signature = signature
        return self._tiled

    @property
    def automatic(self) -> bool:
        """Large planes are tiled (``Tiling()``, not ``Tiling.off()``)."""
        return self.tiling.mode != "off"

    def set_automatic(self, on: bool) -> None:
        self.tiling = Tiling() if on else Tiling.off()

    def predictor(self, tiled: TiledEmbeddings) -> TiledPromptPredictor:
        return TiledPromptPredictor(tiled.model, tiled, cache=self.cache)

    def describe(self, tiled: TiledEmbeddings) -> str:
        """E.g. "Tiled plane: 16 tiles of 768 + 128 px halo, 2 encoded"."""
        grid = tiled.grid
        return (f"Tiled plane: {len(grid)} tiles of {grid.tile_shape[0]} × {grid.tile_shape[1]}"
                f" px + {grid.halo[0]} px halo.")

    @staticmethod
    def encode_job(
        tiled: TiledEmbeddings,
        k: Any,
        windows: list[Window],
        text: str,
        failed: Callable[[BaseException], Notice | None],
        finished: Callable[[], Any],
    ) -> Job:
        """The job that encodes the ``windows`` of plane ``k`` that a prediction needs."""

        def run(progress: Any, should_cancel: Callable[[], bool]) -> int:
            for i, window in enumerate(windows):
                if progress is not None:
                    progress(Progress(i, len(windows), "encoding tiles", "tiles"))
                tiled.get(k, window, should_cancel)
            return len(windows)

        return Job("encode", text, run, failed=failed, finished=finished, unit="tiles")
