"""The Qt side of the napari-sam widgets: small parts composed into the two docks.

The only part of the package that imports Qt, superqt or napari.qt; each dock
(``interactive``, ``automatic``) shows a Qt-free controller
(``napari_sam._widgets.interactive`` / ``.automatic``) and runs its long work in
one :class:`~napari_sam._widgets._qt.jobs.QtJobRunner`.
"""
