"""Where and how the networks run: devices, memory, precision, weights and model loading.

- :mod:`~napari_sam.runtime.config`: environment variables and user settings, read in one place;
- :mod:`~napari_sam.runtime.device`: cuda > mps > cpu;
- :mod:`~napari_sam.runtime.memory`: batch sizes from free memory, out-of-memory fallbacks;
- :mod:`~napari_sam.runtime.checkpoints`: checkpoint files -> models;
- :mod:`~napari_sam.runtime.weights`: the catalogue of published weights, cache, verified download;
- :mod:`~napari_sam.runtime.loader`: THE model loader used by the CLI and the widgets;
- :mod:`~napari_sam.runtime.progress` and :mod:`~napari_sam.runtime.files`: the progress/cancel
  contract, atomic writes and content hashes.

Imports only :mod:`napari_sam.model` and :mod:`napari_sam.errors` from the package.
"""
