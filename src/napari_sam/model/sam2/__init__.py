"""SAM 2.1 in pure PyTorch: Hiera image encoder, prompt encoder, mask decoder and memory.

:func:`~napari_sam.model.sam2.build.build_sam2` builds a model for one of
:data:`~napari_sam.model.sam2.build.SAM2_CONFIGS`; checkpoint files are read
by :mod:`napari_sam.runtime.checkpoints`.
"""

from napari_sam.model.sam2.build import SAM2_CONFIGS, Sam2Config, build_sam2
from napari_sam.model.sam2.sam2 import Sam2, Sam2Features

__all__ = ["SAM2_CONFIGS", "Sam2", "Sam2Config", "Sam2Features", "build_sam2"]
