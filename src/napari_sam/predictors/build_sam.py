"""``sam_model_registry`` and the ``build_sam*`` functions of ``segment_anything``.

``sam_model_registry[model_type](checkpoint=None)`` builds a :class:`Sam` with
random weights, or loads a checkpoint file with ``strict=True``. As in the
reference package, ``build_sam`` is the ViT-H builder and ``"default"`` means
``"vit_h"``. :func:`napari_sam.runtime.loader.load_model` adds downloading,
the device and the precision.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike

from napari_sam.model.build import CONFIGS
from napari_sam.model.sam.sam import Sam
from napari_sam.runtime.checkpoints import build_from_config

__all__ = [
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
]


def _builder(model_type: str) -> Callable[..., Sam]:
    def build(checkpoint: str | PathLike | None = None) -> Sam:
        return build_from_config(CONFIGS[model_type], checkpoint, model_type=model_type)

    build.__name__ = f"build_sam_{model_type}"
    build.__doc__ = (
        f"Build SAM '{model_type}': random weights, or the weights in ``checkpoint`` "
        "(loaded with strict=True)."
    )
    return build


build_sam_vit_h = _builder("vit_h")
build_sam_vit_l = _builder("vit_l")
build_sam_vit_b = _builder("vit_b")
build_sam_vit_t = _builder("vit_t")
#: As in ``segment_anything``: the ViT-H builder.
build_sam = build_sam_vit_h

#: Model type -> builder, as in ``segment_anything``.
sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_t": build_sam_vit_t,
}
