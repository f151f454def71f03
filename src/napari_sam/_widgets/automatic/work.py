"""The work of one automatic run, made before the job starts (no Qt).

:func:`run_work` turns what a run segments (a
:class:`~napari_sam._widgets.automatic.lines.Target`) into the function the
job runs in its worker thread:

- a plane, a stack, or the stack of one time point of an nD image:
  :func:`~napari_sam.workflows.segment.segment_iter` (the viewer's embedding
  store is used by AIS), driven step by step so that Cancel stops it;
- every time point of an nD image (``target.whole``):
  :func:`~napari_sam.workflows.segment_planes.segment_planes`, which numbers
  objects on through the time points and links them through the slices of
  each one.

Either way SAM sees the image with its contrast limits, or the chosen channel
layers as red, green and blue
(:class:`~napari_sam._widgets.channel_layers.ChannelLayers`). Input errors and
refusals (a SAM 2.1 model, AIS without a decoder, a tiling that does not fit)
are raised by :func:`run_work`, before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari_sam._widgets.automatic.lines import Target, channel_input
from napari_sam.errors import Cancelled
from napari_sam.runtime.progress import drive
from napari_sam.workflows import segment as logic
from napari_sam.workflows.image import ImageLayout
from napari_sam.workflows.planes import ImagePlanes
from napari_sam.workflows.segment import AutoSettings, SegmentationResult

__all__ = ["CANCELLED", "run_work"]

CANCELLED = "Automatic segmentation was cancelled; no layer was changed."

Work = Callable[[Any, Any], SegmentationResult]


def run_work(model: Any, image: Any, layout: ImageLayout, target: Target,
             settings: AutoSettings, choices: Any, ais_settings: Any,
             channels: Any = None, store: Any = None) -> Work:
    """``work(progress, should_cancel)`` segmenting ``target`` of the Image layer ``image``
    with ``settings`` (the grid), ``choices`` (mode and tiling) and ``ais_settings``;
    ``channels``: the channel layers SAM sees instead of the image (None: the image).

    Raises
    ------
    NapariSamError
        Input errors and refusals, before any work.
    """
    contrast = tuple(float(c) for c in image.contrast_limits)
    tiling, mode = choices.to_tiling(), choices.workflow_mode
    if target.whole is not None:  # every time point: the image's planes as SAM sees them
        logic.refuse_sam2(model)
        logic.resolve_mode(mode, model)
        settings.check()
        planes = channels.planes() if channels is not None else ImagePlanes(
            image.data, rgb=bool(image.rgb), contrast=contrast)
        tiling.grid(layout.plane_shape)  # a tiling that does not fit is said now

        def whole(progress: Any, should_cancel: Any) -> SegmentationResult:
            from napari_sam.workflows.segment_planes import segment_planes

            try:
                return segment_planes(model, planes, settings=settings, progress=progress,
                                      should_cancel=should_cancel, mode=mode,
                                      ais_settings=ais_settings, tiling=tiling)
            except Cancelled:
                raise Cancelled(CANCELLED) from None

        return whole
    data, rgb = target.data, layout.rgb
    if channels is not None:  # SAM's RGB of the channel layers
        data, rgb, contrast = channel_input(channels, target), True, (0.0, 255.0)
    steps = logic.segment_iter(
        model, data, rgb=rgb, contrast_limits=contrast, settings=settings,
        slices=None if target.k is None else [target.k], tiling=tiling, mode=mode,
        ais_settings=ais_settings, store=store,
    )  # fmt: skip

    def stepwise(progress: Any, should_cancel: Any) -> SegmentationResult:
        return drive(steps, progress, should_cancel, cancelled=CANCELLED)

    return stepwise
