"""The networks in pure PyTorch: no file or network I/O, no napari.

- :mod:`napari_sam.model.sam`: SAM 1 (ViT image encoder, MobileSAM's TinyViT,
  prompt encoder, mask decoder) and the shared-image decoder used by automatic
  mask generation;
- :mod:`napari_sam.model.build`: configurations and the builder;
- :mod:`napari_sam.model.precision`: the encoder's numeric precision.

Nothing above this package is imported here (arrows point down only).
"""
