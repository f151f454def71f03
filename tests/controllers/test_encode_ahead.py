"""Encoding the plane in view ahead of the first click (InteractiveController, no display).

The dock's rest timer calls ``c.ahead.start()``; here the tests call it. Jobs
run on a deferred :class:`SyncRunner` where a test needs to act "while the
encoding runs". Every mask is compared with ``SamPredictor`` on the same plane.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_helpers import Reference, collect, cut, goto_slice, settle, to_layer, world_of
from napari_sam._widgets.automatic.controller import AutomaticController
from napari_sam._widgets.interactive.ahead import AHEAD
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam._widgets.jobs import Job, SyncRunner
from napari_sam.workflows.tiling import Tiling

Z = 2


@pytest.fixture(scope="module")
def stack(nuclei):
    """(4, 96, 160) uint16 nuclei."""
    return cut(nuclei, (28, 32))


class Counted:
    """Counts the image encoder's forward passes of ``model`` (and can make them fail)."""

    def __init__(self, model) -> None:
        self.calls = 0
        self.fail = False
        self.model = model
        self._forward = model.image_encoder.forward
        model.image_encoder.forward = self

    def __call__(self, x):
        self.calls += 1
        if self.fail:
            raise RuntimeError("encoder exploded")
        return self._forward(x)

    def restore(self) -> None:
        del self.model.image_encoder.forward


@pytest.fixture
def counted(fast_model):
    counter = Counted(fast_model)
    yield counter
    counter.restore()


def setup(stack, model, deferred=False):
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="nuclei")
    goto_slice(viewer, Z, scale=(1, 1, 1), translate=(0, 0, 0))
    runner = SyncRunner(deferred=deferred)
    c = InteractiveController(viewer, runner)
    seen = collect(c)
    c.set_model(model, "small-random")
    settle(c)
    return viewer, image, c, runner, seen


def click(viewer, c, z, row, col):
    points = c.prompts.points.current
    points.add(to_layer(points, world_of((z, row, col), (1, 1, 1), (0, 0, 0))))


def test_plane_in_view_is_encoded_ahead_and_the_first_click_needs_no_encoding(
    stack, fast_model, counted
):
    viewer, image, c, _runner, seen = setup(stack, fast_model)
    assert counted.calls == 0  # nothing starts by itself without the dock's rest timer
    assert "No prompts on slice 2" in c.status
    assert c.ahead.start()
    assert counted.calls == 1
    assert not c.ahead.start()  # encoded: nothing more to do
    assert counted.calls == 1

    click(viewer, c, Z, 50.2, 80.7)
    settle(c)
    assert counted.calls == 1  # the click used the plane encoded ahead
    contrast = tuple(image.contrast_limits)
    expected = Reference(fast_model).predict(
        stack[Z], contrast, point_coords=np.array([[80.7, 50.2]]), point_labels=np.array([1])
    )
    np.testing.assert_array_equal(c.preview.layer.data[Z] > 0, expected)
    assert seen == {"error": [], "warning": [], "info": []}


def test_moving_on_stops_the_encoding_ahead_quietly(stack, fast_model, counted):
    viewer, image, c, runner, seen = setup(stack, fast_model, deferred=True)
    scheduled = []
    c.ahead.scheduler = lambda: scheduled.append(True)  # the dock's rest timer
    assert c.ahead.start()
    job = runner.pending[0]
    assert job.kind == AHEAD and job.background
    assert c.runner.running(AHEAD)

    goto_slice(viewer, Z + 1, scale=(1, 1, 1), translate=(0, 0, 0))
    c.flush()  # the dock's debounce: the view is on slice 3, without prompts
    assert job.cancel_event.is_set()  # slice 2 is no longer worth encoding
    assert scheduled  # slice 3 will be encoded once the view rests
    runner.run_pending()
    assert counted.calls == 0  # stopped before the encoder's first block
    assert seen == {"error": [], "warning": [], "info": []}  # no word about it
    assert c.embeddings.store.get(c.embeddings.key_and_plane(
        image, c.layout, Z, c.model.embedding_id)[0]) is None

    settle(c)
    assert c.ahead.start()  # the rest timer fires on slice 3
    runner.run_pending()
    assert counted.calls == 1
    key = c.embeddings.key_and_plane(image, c.layout, Z + 1, c.model.embedding_id)[0]
    assert c.embeddings.find(key)[0] is not None


def test_a_click_on_the_plane_being_encoded_ahead_waits_for_it(stack, fast_model, counted):
    viewer, image, c, runner, _seen = setup(stack, fast_model, deferred=True)
    assert c.ahead.start()
    click(viewer, c, Z, 40.0, 60.0)
    c.flush()
    assert len(runner.pending) == 1  # no second encoding of the same plane
    settle(c)
    assert counted.calls == 1
    assert (c.preview.layer.data[Z] > 0).any()
    expected = Reference(fast_model).predict(
        stack[Z], tuple(image.contrast_limits), point_coords=np.array([[60.0, 40.0]]),
        point_labels=np.array([1]),
    )
    np.testing.assert_array_equal(c.preview.layer.data[Z] > 0, expected)


def test_other_work_stops_the_encoding_ahead(stack, fast_model, counted):
    _viewer, _image, c, runner, seen = setup(stack, fast_model, deferred=True)
    assert c.ahead.start()
    ahead = runner.pending[0]
    other = Job("precompute", "Precomputing…", lambda progress, cancel: None)
    runner.start(other)
    assert ahead.cancel_event.is_set() and not other.cancel_event.is_set()
    runner.run_pending()
    assert counted.calls == 0
    assert seen["info"] == [] and seen["error"] == []
    # and background work never starts while other work runs: in this dock
    runner.start(Job("precompute", "Precomputing…", lambda progress, cancel: None))
    assert not c.ahead.start()
    runner.run_pending()
    # or in the automatic dock of the same viewer (a run of the whole stack)
    auto = AutomaticController(_viewer, SyncRunner(deferred=True), session=c.session)
    auto.runner.start(Job("segment", "Segmenting…", lambda progress, cancel: None))
    assert not c.ahead.start()
    auto.runner.run_pending()
    assert c.ahead.start()


def test_a_failed_encoding_ahead_is_quiet_and_not_retried_ahead(stack, fast_model, counted):
    viewer, _image, c, _runner, seen = setup(stack, fast_model)
    counted.fail = True
    assert c.ahead.start()
    assert counted.calls == 1
    assert seen == {"error": [], "warning": [], "info": []}
    assert not c.ahead.start()  # not again ahead
    assert counted.calls == 1
    click(viewer, c, Z, 40.0, 60.0)
    settle(c)  # the click encodes it and says what went wrong, once
    assert counted.calls == 2
    assert len(seen["error"]) == 1 and "encoder exploded" in seen["error"][0]


def test_nothing_is_encoded_ahead_when_it_is_not_worth_it(stack, fast_model, counted):
    viewer, image, c, _runner, seen = setup(stack, fast_model)
    c.ahead.set_enabled(False)  # the user switched it off
    assert not c.ahead.start()
    c.ahead.set_enabled(True)

    flat = viewer.add_image(np.full((4, 96, 160), 7, np.uint16), name="flat")
    c.set_image(flat)
    assert not c.ahead.start()  # SAM would see one colour: the click warns about it
    c.set_image(image)

    viewer.dims.ndisplay = 3
    assert not c.ahead.start()  # a 3D view
    viewer.dims.ndisplay = 2

    c.tiles.tiling = Tiling(mode="on", tile_shape=(64, 64), halo=(16, 16))
    assert not c.ahead.start()  # large planes: tiles are encoded where the user clicks
    c.tiles.set_automatic(False)
    assert counted.calls == 0
    assert seen["warning"] == [] and seen["error"] == []

    viewer2 = ViewerModel()
    viewer2.add_image(stack, name="nuclei")
    c2 = InteractiveController(viewer2, SyncRunner())
    assert not c2.ahead.start()  # no model loaded: nothing is loaded (or downloaded) for it
    assert not c2.runner.running()


def test_the_users_cancel_is_not_undone_by_encoding_ahead_again(stack, fast_model, counted):
    viewer, _image, c, runner, seen = setup(stack, fast_model, deferred=True)
    assert c.ahead.start()
    c.cancel()  # the dock's Cancel, while slice 2 is encoded ahead
    settle(c)
    assert counted.calls == 0 and seen == {"error": [], "warning": [], "info": []}
    assert not c.ahead.start()  # not again on slice 2
    goto_slice(viewer, Z + 1, scale=(1, 1, 1), translate=(0, 0, 0))
    settle(c)
    assert c.ahead.start()  # another slice is
    runner.run_pending()
    assert counted.calls == 1
    click(viewer, c, Z, 40.0, 60.0)  # slice 2 is encoded when the user clicks there
    goto_slice(viewer, Z, scale=(1, 1, 1), translate=(0, 0, 0))
    settle(c)
    assert counted.calls == 2 and (c.preview.layer.data[Z] > 0).any()


def test_channel_layers_are_encoded_ahead_under_the_key_the_click_uses(stack, fast_model,
                                                                      counted):
    viewer, image, c, _runner, seen = setup(stack, fast_model)
    membrane = viewer.add_image(stack[::-1].copy(), name="membrane")
    c.set_image(image)
    c.set_channels([image, membrane])  # SAM sees nuclei as red, membrane as green
    settle(c)
    assert counted.calls == 0
    assert c.ahead.start()
    assert counted.calls == 1
    click(viewer, c, Z, 50.2, 80.7)
    settle(c)
    assert counted.calls == 1  # the click found the channels' embedding made ahead
    assert (c.preview.layer.data[Z] > 0).any()
    assert seen["error"] == [] and seen["warning"] == []
