"""Count SAM mask-decoder calls and their batch sizes, whichever decoder runs them.

``predict_objects_batched`` decodes with the model's ``mask_decoder`` or, for
multimask prompts, with :class:`~napari_sam.model.sam.shared_decoder.SharedImageDecoder`;
both are counted (one entry per call: the number of prompts decoded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from napari_sam.model.sam.shared_decoder import SharedImageDecoder


@contextlib.contextmanager
def decoder_calls(model) -> Iterator[list[int]]:
    """``with decoder_calls(model) as calls: ...``: the batch size of every decoder call."""
    calls: list[int] = []
    hook = model.mask_decoder.register_forward_hook(
        lambda m, args, out: calls.append(int(out[0].shape[0]))
    )
    decode = SharedImageDecoder.decode

    def counted(self, sparse):
        calls.append(int(sparse.shape[0]))
        return decode(self, sparse)

    SharedImageDecoder.decode = counted
    try:
        yield calls
    finally:
        SharedImageDecoder.decode = decode
        hook.remove()
