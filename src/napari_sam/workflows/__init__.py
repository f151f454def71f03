"""Microscopy workflows on arrays: what the CLI and the napari widgets do, without napari.

- :mod:`~napari_sam.workflows.image`: a microscopy plane -> SAM's RGB input (contrast limits);
- :mod:`~napari_sam.workflows.prompts`: napari-style prompts (world coordinates) -> SAM prompts;
- :mod:`~napari_sam.workflows.interactive`: encode a plane, predict objects, compose, plan commits;
- :mod:`~napari_sam.workflows.embeddings`: embedding keys, memory store, disk cache, stacks;
- :mod:`~napari_sam.workflows.propagation`: objects followed through a stack (SAM 1 rule);
- :mod:`~napari_sam.workflows.segment`: automatic segmentation of 2D/3D arrays, slice linking;
- :mod:`~napari_sam.workflows.labels`: masks -> label images (never overwriting);
- :mod:`~napari_sam.workflows.io`: TIFF in/out, COCO export;
- :mod:`~napari_sam.workflows.samples`: synthetic nuclei for demos and tests.

Imports the predictors, runtime and model layers below; never napari or Qt.
"""
