"""napari-sam: Segment Anything for microscopy, with a bundled PyTorch SAM.

The public API mirrors Meta's ``segment_anything``::

    from napari_sam import sam_model_registry, SamPredictor, ResizeLongestSide

Names are imported lazily so that ``import napari_sam`` stays cheap (no torch,
no napari until something is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "sam_model_registry": "napari_sam.predictors.build_sam",
    "build_sam_vit_h": "napari_sam.predictors.build_sam",
    "build_sam_vit_l": "napari_sam.predictors.build_sam",
    "build_sam_vit_b": "napari_sam.predictors.build_sam",
    "build_sam": "napari_sam.predictors.build_sam",
    "Sam": "napari_sam.model.sam.sam",
    "SamPredictor": "napari_sam.predictors.predictor",
    "SamAutomaticMaskGenerator": "napari_sam.predictors.automatic",
    "ResizeLongestSide": "napari_sam.predictors.transforms",
    "load_model": "napari_sam.runtime.loader",
    "load": "napari_sam.runtime.loader",
    "LoadedModel": "napari_sam.runtime.loader",
    "StackEmbeddings": "napari_sam.workflows.embeddings",
    "propagate": "napari_sam.workflows.propagation",
    "segment": "napari_sam.workflows.segment",
    "AutoSettings": "napari_sam.workflows.segment",
    "segment_instances": "napari_sam.workflows.segment",
    "AISSettings": "napari_sam.workflows.ais",
    "instance_maps": "napari_sam.workflows.ais",
    "instances_from_maps": "napari_sam.workflows.ais",
    "InstanceDecoder": "napari_sam.model.decoders.instance",
    "Sam2ImagePredictor": "napari_sam.predictors.sam2_predictor",
    "propagate_memory": "napari_sam.workflows.memory_propagation",
    "TrackPrompt": "napari_sam.workflows.memory_propagation",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
