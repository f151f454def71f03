"""The SAM network in pure PyTorch: no I/O, no napari."""

from .build import CONFIGS, SamConfig, build_sam, sam_model_registry
from .sam import Sam

__all__ = ["CONFIGS", "Sam", "SamConfig", "build_sam", "sam_model_registry"]
