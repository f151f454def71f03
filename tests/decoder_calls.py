"""Count SAM mask-decoder calls and their batch sizes, whichever decoder runs them.

``predict_objects_batched`` decodes with the model's ``mask_decoder`` or, for
multimask prompts, with :class:`~napari_sam.model.sam.shared_decoder.SharedImageDecoder`;
both are counted (one entry per call: the number of prompts decoded). The
one-time check of the shared decoder against the model's own
(:func:`~napari_sam.model.sam.shared_decoder.agrees_with_model`) is not a
prediction and is not counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from napari_sam.model.sam import shared_decoder


@contextlib.contextmanager
def decoder_calls(model) -> Iterator[list[int]]:
    """``with decoder_calls(model) as calls: ...``: the batch size of every decoder call."""
    calls: list[int] = []
    checking = [False]

    def record(n: int) -> None:
        if not checking[0]:
            calls.append(n)

    hook = model.mask_decoder.register_forward_hook(
        lambda m, args, out: record(int(out[0].shape[0]))
    )
    decode, check = shared_decoder.SharedImageDecoder.decode, shared_decoder.agrees_with_model

    def counted(self, sparse):
        record(int(sparse.shape[0]))
        return decode(self, sparse)

    def quiet_check(*args, **kwargs):
        checking[0] = True
        try:
            return check(*args, **kwargs)
        finally:
            checking[0] = False

    shared_decoder.SharedImageDecoder.decode = counted
    shared_decoder.agrees_with_model = quiet_check
    try:
        yield calls
    finally:
        shared_decoder.SharedImageDecoder.decode = decode
        shared_decoder.agrees_with_model = check
        hook.remove()
