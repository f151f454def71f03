"""The ``segment_anything``-compatible API: drop-in names with the reference's behaviour.

:class:`~napari_sam.predictors.predictor.SamPredictor`,
:class:`~napari_sam.predictors.transforms.ResizeLongestSide`,
:class:`~napari_sam.predictors.automatic.SamAutomaticMaskGenerator` and
``sam_model_registry`` / ``build_sam*`` (:mod:`~napari_sam.predictors.build_sam`).
Works on numpy arrays and torch tensors; knows nothing of microscopy files or napari.
"""
