"""From prompts to the preview: one prediction of the current slice.

:func:`update` is what the controller runs whenever the prompts, the slice,
the image, its contrast or the model change: it reads the current slice's
prompts from the prompt layers (world -> data coordinates, x/y for SAM), says
what cannot be used, makes sure the model is loaded and the plane encoded (both
as jobs; the prediction runs again when they finish), then decodes the
objects on the main thread and paints the preview.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam._widgets.interactive.planes_layout import (
    PlaneKey,
    is_planes,
    plane_index,
    plane_prompts_from_layers,
    where,
)
from napari_sam._widgets.interactive.preview import describe_preview
from napari_sam._widgets.model_session import LOAD_FAILED
from napari_sam._widgets.notices import Notice, notice_for
from napari_sam.errors import NapariSamError
from napari_sam.runtime.fallbacks import relay_fallbacks
from napari_sam.workflows import interactive as logic
from napari_sam.workflows.click_preview import anchors_of, compose_click_preview
from napari_sam.workflows.embeddings import EmbeddingKey
from napari_sam.workflows.prompts import SlicePrompts, group_objects, slice_prompts_from_layers
from napari_sam.workflows.tiled_prompts import compose_tiled_preview

__all__ = ["current_plane", "keep_encoded", "plane_key", "update"]

COMMIT_KEY = "Shift+C"


def _view_problem(c: Any) -> str | None:
    """Why the viewer's view cannot be segmented (3D view, transposed axes), if so."""
    dims = c.viewer.dims
    if dims.ndisplay != 2:
        return "Interactive segmentation works in the 2D view (Ctrl+Y toggles)."
    if tuple(dims.displayed) != (dims.ndim - 2, dims.ndim - 1):
        return (
            "SAM segments YX planes: show the image's last two axes (View > Axes order, "
            "or Ctrl+E to roll them back)."
        )
    return None


def _warn_unusable(c: Any, n_outside: int, n_degenerate: int) -> None:
    """Warn about prompts outside the image and boxes without area (when their number grows)."""
    if n_outside > c.warned["outside"]:
        n = n_outside
        c.warn(f"{n} prompt{'s' if n > 1 else ''} on this slice lie{'s' if n == 1 else ''} "
               "outside the image and will be ignored.")
    if n_degenerate > c.warned["degenerate"]:
        n = n_degenerate
        c.warn(f"{n} box{'es' if n > 1 else ''} on this slice {'have' if n > 1 else 'has'} no "
               "area inside the image and will be ignored; draw a box by dragging a rectangle.")
    c.warned.update(outside=n_outside, degenerate=n_degenerate)


def current_plane(c: Any) -> tuple[PlaneKey, str | None]:
    """The plane of ``c``'s image in view: its key (None: a 2D image; the slice of a stack;
    the full leading index of an nD image) and why it cannot be segmented (None if it can)."""
    problem = _view_problem(c)
    layout = c.layout
    planes = is_planes(layout)
    if planes:
        k = plane_index(layout, c.image, c.viewer.dims.point)
    else:
        k = c.current_slice() if layout.is_stack else None
    if problem is None and (layout.is_stack or planes) and k is None:
        problem = f"The current position is outside the {'image' if planes else 'stack'}."
    return k, problem


def plane_key(c: Any, model: Any, k: PlaneKey, channels: bool) -> tuple[EmbeddingKey, Any]:
    """The embedding key of plane ``k`` for ``model`` and what the encoder is given: the
    plane, or with ``channels`` SAM's RGB made of the channel layers."""
    if channels:  # 1-3 channel layers, each with its contrast limits, as SAM's RGB
        return c.channels.key_and_plane(k, model.embedding_id)
    return c.embeddings.key_and_plane(c.image, c.layout, k, model.embedding_id)


def update(c: Any) -> None:
    """Predict the current slice of ``c``'s image from its prompts and show the preview."""
    layout = c.layout
    planes = is_planes(layout)
    k, problem = current_plane(c)
    if problem is not None:
        c.preview.clear(layout)
        c.set_status(problem)
        return
    if planes:
        prompts = plane_prompts_from_layers(
            layout, c.image, k, c.viewer.dims.point,
            c.prompts.points.current, c.prompts.boxes.current,
        )
    else:
        prompts = slice_prompts_from_layers(
            layout.spatial_shape, c.image, k, c.viewer.dims.point,
            c.prompts.points.current, c.prompts.boxes.current,
        )
    c.slice_prompts = prompts
    _warn_unusable(c, prompts.n_outside, prompts.n_degenerate)
    ignored = ""
    if c.one_click:
        objects, ignored = _click_objects(c, prompts, k)
    else:
        objects = group_objects(prompts.points_xy, prompts.point_labels, prompts.boxes)
    if not objects:
        c.preview.clear(layout)
        hint = " (negative points alone describe no object)" if len(prompts.points_xy) else ""
        c.set_status(f"No prompts on {where(k)}{hint}.{ignored}")
        c.ahead.request(k)  # encode it while the user looks at it
        return
    model = c.session.ensure(c.runner, c._model_loaded)
    if model is None:
        if c.session.loading:
            c.set_status(c.session.describe(""))
        else:
            c.set_status(LOAD_FAILED)
        return
    channels = c.channels.active_for(c.image)
    tiled = c.tiles.embeddings_for(c.image, layout, model, c.embeddings.store,
                                   c.channels if channels else None)
    if tiled is not None:  # a large plane: tiles encoded on demand, prompts routed to tiles
        _update_tiled(c, tiled, k, objects, ignored)
        return
    key, plane = plane_key(c, model, k, channels)
    embedding, notices = c.embeddings.find(key)
    for notice in notices:
        c.notify(notice)
    if embedding is None:
        _start_encode(c, model, key, plane, channels)
        return
    if c.predictor is None or c.predictor.model is not model.sam:
        c.predictor = logic.make_predictor(model.sam)  # SAM 1 or SAM 2.1
    try:
        with relay_fallbacks(c.on_fallback):  # the decoder runs here, on the main thread
            c.predictor.set_embedding(embedding)
            if c.one_click:  # all single clicks decoded as one batch; unchanged ones cached
                results = logic.predict_objects_batched(
                    c.predictor, objects, c.multimask, c.candidate,
                    cache=c.click_cache, cache_key=key,
                )
            else:
                results = logic.predict_objects(c.predictor, objects, c.multimask, c.candidate)
    except NapariSamError as exc:
        c.notify(notice_for(exc))
        c.set_status(str(exc))
        return
    c.preview.show(c.image, layout, k, results, anchors_of(objects) if c.one_click else None)
    c.changed("layers")
    c.set_status(describe_preview(k, results, COMMIT_KEY) + ignored)


def _update_tiled(c: Any, tiled: Any, k: PlaneKey, objects: list, ignored: str) -> None:
    """Predict on a tiled plane: encode the tiles the prompts need (a job), then decode and
    paste the masks at full resolution."""
    predictor = c.tiles.predictor(tiled)
    missing = predictor.windows_to_encode(k, objects)
    if missing:
        if c.runner.running("encode"):
            return  # when it finishes, the preview is updated and asks again
        outcome = {"ok": True}

        def failed(exc: BaseException) -> Notice | None:
            outcome["ok"] = False
            c.set_status(str(exc))
            return None

        def finished() -> None:
            c.changed("busy")
            if outcome["ok"] and not c.closed:
                c.update_preview()

        n = len(missing)
        text = f"Encoding {n} tile{'s' if n > 1 else ''} of {where(k)} with {c.model.name}…"
        c.set_status(text)
        c.runner.start(c.tiles.encode_job(tiled, k, missing, text, failed, finished))
        return
    try:
        with relay_fallbacks(c.on_fallback):
            results = predictor.predict(k, objects, c.multimask, c.candidate)
    except NapariSamError as exc:
        c.notify(notice_for(exc))
        c.set_status(str(exc))
        return
    layout = c.layout
    dtype = np.uint8 if len(results) < 256 else np.uint16
    if c.one_click:  # overlaps go to the nearest click, as on untiled planes
        plane = compose_click_preview(
            [r.mask for r in results], anchors_of(objects), layout.plane_shape, dtype,
            offsets=[(r.window.y0, r.window.x0) for r in results],
        )
    else:
        plane = compose_tiled_preview(results, layout.plane_shape, dtype)
    c.preview.show(c.image, layout, k, results, plane=plane)
    c.changed("layers")
    c.set_status(f"{describe_preview(k, results, COMMIT_KEY)} {c.tiles.describe(tiled)}{ignored}")


def _committed_plane(c: Any, k: PlaneKey) -> Any:
    """The output labels of slice ``k`` (None: no output yet, or one of another shape)."""
    labels = c.output.current
    if labels is None or labels.data.shape != c.layout.spatial_shape:
        return None
    return labels.data[k] if k is not None else labels.data


def _click_objects(c: Any, prompts: SlicePrompts, k: PlaneKey) -> tuple[list, str]:
    """One click = one cell: the objects of the slice (boxes first, then one per free positive
    point; :func:`~napari_sam.workflows.interactive.group_clicks`) and a sentence about the
    clicks ignored because they lie on committed objects ("" if none)."""
    grouped = logic.group_clicks(
        prompts.points_xy, prompts.point_labels, prompts.boxes, _committed_plane(c, k)
    )
    ignored = ""
    n = len(grouped.ignored)
    if n:
        ids = ", ".join(str(int(i)) for i in dict.fromkeys(grouped.ignored_labels.tolist()))
        ignored = (f" {n} click{'s' if n > 1 else ''} on already labelled object"
                   f"{'s' if len(set(grouped.ignored_labels.tolist())) > 1 else ''} {ids} "
                   f"{'were' if n > 1 else 'was'} ignored.")
    return grouped.objects, ignored


def keep_encoded(c: Any, result: tuple) -> None:
    """Keep what an encoding job of ``c`` returned, ``(key, embedding, disk problem or
    None)``: say once if the disk cache failed (it is then switched off), and keep the
    embedding unless the model was replaced meanwhile (keys name the weights AND the
    encoder precision, ``embedding_id``, e.g. "vit_t@bfloat16")."""
    key, embedding, disk_problem = result
    if disk_problem is not None:
        c.notify(c.embeddings.disk_failed(disk_problem))
        c.changed("disk")
    if c.model is not None and key.model_id == c.model.embedding_id:
        c.embeddings.keep(key, embedding)


def _start_encode(c: Any, model: Any, key: EmbeddingKey, plane: Any,
                  channels: bool = False) -> None:
    """Encode the plane in a job; predict again when it is done (not after a failure).

    With ``channels``, ``plane`` is already SAM's RGB input (channel layers)."""
    if c.runner.running("encode") or c.series.encoding(key) or c.ahead.encoding(key):
        return  # when it finishes, the preview is updated and asks again
    if not channels:
        warning = c.embeddings.uniform_warning(key, plane, c.layout, c.image.name)
        if warning is not None:
            c.notify(warning)
    outcome = {"ok": False}

    def done(result: tuple) -> None:
        outcome["ok"] = True
        keep_encoded(c, result)

    def failed(exc: BaseException) -> Notice | None:
        c.set_status(str(exc))
        return None

    def finished() -> None:
        c.changed("busy")
        if outcome["ok"] and not c.closed:  # after a failure, the next change of prompts retries
            c.update_preview()

    text = f"Encoding {where(key.slice)} with {model.name}…"
    c.set_status(text)
    c.runner.start(c.embeddings.encode_job(
        model.sam, key, plane, c.layout.rgb or channels, text, done, failed, finished,
        contrast=(0.0, 255.0) if channels else None,
    ))
