"""Encoding the plane in view before the first click on it (no Qt).

On a CPU the image encoder takes seconds per plane (vit_b: ~4 s in bf16 on two
cores), and the decoder a few tens of milliseconds. A user who moves to a slice
usually looks at it for a while before clicking, so :class:`EncodeAhead`
encodes the plane in view meanwhile: once the view has rested on a plane with
no prompts and no embedding yet (a slice scrolled to, an image chosen, a model
loaded, contrast limits changed), the Qt dock's rest timer calls
:meth:`EncodeAhead.start`, which encodes that plane in a *background* job
(kind ``"ahead"``, :attr:`~napari_sam._widgets.jobs.Job.background`). The first
click there is then decoded at once.

Background work never stands in the user's way:

- moving to another plane stops it (at the next encoder block);
- any other job of the dock (a click on another plane, precomputing,
  propagating, loading a model) stops it
  (:func:`~napari_sam._widgets.jobs.yield_to`), and it does not start while a
  job runs in either napari-sam dock of the viewer
  (:meth:`~napari_sam._widgets.model_session.ModelSession.working`);
- a click on the plane being encoded waits for it instead of encoding it twice;
- it is quiet: no notification when it is stopped; a plane whose encoding
  failed, or which the user stopped (the dock's Cancel), is not encoded ahead
  again (a click encodes it, and says what went wrong);
- large planes (encoded tile by tile where clicked), planes SAM would see as
  one flat colour, a 3D view and planes already encoded are left alone.

Without a rest timer (scripts, tests) nothing starts by itself; call
:meth:`start`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari_sam._widgets.interactive.encoding import looks_uniform
from napari_sam._widgets.interactive.planes_layout import PlaneKey, where
from napari_sam._widgets.interactive.predict import current_plane, keep_encoded, plane_key
from napari_sam._widgets.notices import Notice
from napari_sam.errors import Cancelled
from napari_sam.workflows.embeddings import EmbeddingKey

__all__ = ["AHEAD", "EncodeAhead"]

#: Job kind of an encoding ahead.
AHEAD = "ahead"


class EncodeAhead:
    """Encodes the plane in view of an interactive controller ``c`` before it is clicked.

    Attributes
    ----------
    enabled : bool
        Encode ahead at all (the dock's "Encode the slice in view ahead" box).
    scheduler : callable or None
        Starts the Qt side's rest timer, whose timeout calls :meth:`start`.
    """

    def __init__(self, c: Any) -> None:
        self.c = c
        self.enabled = True
        self.scheduler: Callable[[], Any] | None = None
        self._key: EmbeddingKey | None = None  # the plane being encoded ahead
        self._where: tuple | None = None  # (image, plane, model) being encoded ahead
        self._moving_on = False  # stopped by stop(): the view moved on (not the user)
        self._skip: set[EmbeddingKey] = set()  # failed, or stopped by the user

    def encoding(self, key: EmbeddingKey) -> bool:
        """Whether the plane of ``key`` is being encoded ahead (a click then waits for it)."""
        return self._key is not None and self._key == key

    def set_enabled(self, on: bool) -> None:
        """Encode ahead, or not (stops an encoding ahead running now)."""
        self.enabled = bool(on)
        if not self.enabled:
            self.stop()
        else:
            self.c.schedule()

    def request(self, k: PlaneKey) -> None:
        """The view rests on plane ``k``, which has no prompts: stop encoding another plane
        ahead, and encode this one once the view has rested (the rest timer)."""
        c = self.c
        model = c.model
        here = (id(c.image), k, None if model is None else model.embedding_id)
        if self._where is not None and self._where != here:
            self.stop()
        if self.enabled and self.scheduler is not None and model is not None:
            self.scheduler()

    def stop(self) -> None:
        """Stop the encoding ahead, if one runs, because the view moved on (quietly; the
        plane is encoded ahead again when the view rests on it)."""
        if self._key is not None:
            self._moving_on = True
            self.c.runner.cancel(AHEAD)

    def start(self) -> bool:
        """Encode the plane in view now, in a background job, if it is worth it; whether a
        job was started."""
        c = self.c
        if not self.enabled or c.closed or c.image is None or c.layout is None:
            return False
        model = c.model
        if model is None or c.runner.running() or c.session.working():
            return False  # the user's work (or a load, or the automatic dock's run) first
        k, problem = current_plane(c)
        if problem is not None:
            return False
        channels = c.channels.active_for(c.image)
        if c.tiles.embeddings_for(c.image, c.layout, model, c.embeddings.store,
                                  c.channels if channels else None) is not None:
            return False  # a large plane: its tiles are encoded where the user clicks
        key, plane = plane_key(c, model, k, channels)
        if key in self._skip:
            return False
        embedding, notices = c.embeddings.find(key)
        for notice in notices:
            c.notify(notice)
        if embedding is not None:
            return False
        if not channels and looks_uniform(plane, key.contrast, c.layout.rgb):
            return False  # the click warns about it; nothing worth encoding
        self._run(model, key, plane, k, channels)
        return True

    def _run(self, model: Any, key: EmbeddingKey, plane: Any, k: PlaneKey,
             channels: bool) -> None:
        c = self.c
        image = c.image
        self._key = key
        self._where = (id(image), k, model.embedding_id)

        def done(result: tuple) -> None:
            keep_encoded(c, result)

        def failed(exc: BaseException) -> Notice:
            if not isinstance(exc, Cancelled):
                self._skip.add(key)  # not tried ahead again; a click says what is wrong
            elif not self._moving_on and not c.runner.running():
                self._skip.add(key)  # the user's Cancel (no other job took over)
            return Notice.nothing()

        def finished() -> None:
            self._key = self._where = None
            self._moving_on = False
            c.changed("busy")
            if not c.closed and c.image is image:
                c.schedule()  # a click meanwhile is decoded now; or the next plane in view

        text = f"Encoding {where(k)} ahead: click any time…"
        job = c.embeddings.encode_job(
            model.sam, key, plane, c.layout.rgb or channels, text, done, failed, finished,
            contrast=(0.0, 255.0) if channels else None,
        )
        job.kind = AHEAD
        job.background = True
        c.runner.start(job)
