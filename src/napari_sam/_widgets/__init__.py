"""napari widgets of napari-sam (the only package that imports napari and Qt).

``prompts`` and ``session`` hold the widgets' logic and import neither; the
Qt widgets live in ``interactive``.
"""
