"""Whether this desktop renders OpenGL in software (no GPU behind the display).

On remote desktops, virtual machines and headless servers, Qt and napari's
canvas draw through a software OpenGL driver (Mesa's llvmpipe, Windows' basic
render driver). There, every repaint of the window costs CPU time that the
segmentation needs: the "in progress" animation of napari's activity panel
alone took ~1.5 s of an 8 s automatic run on a 2-core machine
(docs/benchmarks.md). The job runner (:mod:`napari_sam._widgets._qt.jobs`)
asks :func:`software_opengl` and, where it is true, shows progress only in the
dock's own bar, which repaints only when the work reports progress.
"""

from __future__ import annotations

import functools
import logging

__all__ = ["is_software_renderer", "opengl_renderer", "software_opengl"]

log = logging.getLogger(__name__)

#: Parts of the ``GL_RENDERER`` string of software OpenGL drivers (lower case).
SOFTWARE_RENDERERS = (
    "llvmpipe",
    "softpipe",
    "swrast",
    "software rasterizer",
    "swiftshader",
    "microsoft basic render",
    "gdi generic",
)


def is_software_renderer(renderer: str) -> bool:
    """Whether an OpenGL ``GL_RENDERER`` string names a software driver."""
    name = renderer.lower()
    return any(part in name for part in SOFTWARE_RENDERERS)


def opengl_renderer() -> str:
    """The ``GL_RENDERER`` string of this desktop's OpenGL, read from a hidden 8×8
    vispy canvas (the backend napari draws with)."""
    from vispy import app, gloo

    canvas = app.Canvas(show=False, size=(8, 8))
    try:
        canvas.set_current()
        return str(gloo.gl.glGetParameter(gloo.gl.GL_RENDERER))
    finally:
        canvas.close()


@functools.cache
def software_opengl() -> bool:
    """Whether OpenGL is rendered in software here (:func:`opengl_renderer`, asked
    once per process); False when it cannot be told."""
    try:
        renderer = opengl_renderer()
    except Exception as exc:  # no OpenGL at all, or a backend that cannot tell
        log.debug("napari-sam: could not read the OpenGL renderer: %s", exc)
        return False
    return is_software_renderer(renderer)
