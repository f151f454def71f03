"""Microscopy workflows on arrays: what the CLI and the napari widgets do, without napari.

- :mod:`~napari_sam.workflows.image`: a microscopy plane -> SAM's RGB input (contrast limits);
- :mod:`~napari_sam.workflows.prompts`: napari-style prompts (world coordinates) -> SAM prompts;
- :mod:`~napari_sam.workflows.interactive`: encode a plane, predict objects, compose, plan commits;
- :mod:`~napari_sam.workflows.embeddings`: embedding keys, memory store, disk cache, stacks;
- :mod:`~napari_sam.workflows.propagation`: objects followed through a stack (SAM 1 rule);
- :mod:`~napari_sam.workflows.segment`: automatic segmentation of 2D/3D arrays, slice linking;
- :mod:`~napari_sam.workflows.labels`: masks -> label images (never overwriting);
- :mod:`~napari_sam.workflows.io`: TIFF in/out, COCO export;
- :mod:`~napari_sam.workflows.samples`: synthetic nuclei for demos and tests;
- :mod:`~napari_sam.workflows.channels`: 1–3 channels -> SAM's RGB input, per-channel contrast;
- :mod:`~napari_sam.workflows.planes`: images with leading axes (T, Z, ...): full plane
  index, lazy plane reads, prompts per plane, propagation along any axis;
- :mod:`~napari_sam.workflows.segment_planes`: automatic segmentation of such images;
- :mod:`~napari_sam.workflows.timelapse`: one line of planes through a (T, Z, Y, X) image;
- :mod:`~napari_sam.workflows.tables`: object tables (scikit-image regionprops) and CSV;
- :mod:`~napari_sam.workflows.series`: a folder of images annotated one after another.

Imports the predictors, runtime and model layers below; never napari or Qt.
"""
