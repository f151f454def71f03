"""Decoders that run on SAM's image embedding without prompts.

- :mod:`napari_sam.model.decoders.instance`: the convolutional instance decoder
  of micro-sam's automatic instance segmentation (AIS): from the ``(256, 64, 64)``
  embedding of any SAM 1 encoder (vit_t, vit_b, vit_l, vit_h) to three per-pixel
  maps (foreground probability, distance to the object centre, distance to the
  object boundary). Parameter names are those of micro-sam's ``decoder_state``.

Pure torch; files are read by :mod:`napari_sam.runtime.checkpoints` /
:mod:`napari_sam.runtime.loader`.
"""
