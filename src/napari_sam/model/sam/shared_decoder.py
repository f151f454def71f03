"""SAM's mask decoder for many point prompts on one image embedding.

An algebraic re-arrangement of :class:`~napari_sam.model.sam.mask_decoder.MaskDecoder`
(same weights, same result up to floating-point rounding) that never copies
the image embedding per prompt; the automatic mask generator decodes its
point grid with it. :meth:`SharedImageDecoder.supports` says whether a model
has the structure it relies on; the automatic mask generator also checks its
first output against the model's own decoder and falls back to it on any
disagreement.

Precision: with ``dtype=torch.bfloat16`` the per-prompt image tokens (the
decoder's bulk: ``4096 × 256`` values per prompt, updated twice) and the mask
upscaling are computed in bfloat16, which halves their memory traffic and
runs the matrix products on bf16 instructions; everything on the prompt-token
side (self-attention, MLPs, layer norms of the tokens, the IoU head and the
hypernetworks) stays float32, and so do the IoU predictions returned.
Attention logits over the image tokens are rounded to bfloat16 once; their
softmax is computed in float32. Mask logits are returned in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.buffers import KeptBuffers
from napari_sam.model.sam.sam import Sam

__all__ = ["SharedImageDecoder", "agrees_with_model"]

#: ``scratch(name, shape)``: a reusable buffer of that shape, or None.
Scratch = Callable[[str, tuple[int, ...]], "torch.Tensor | None"]

#: Largest reusable buffer kept between calls (CPU): a larger batch of prompts
#: allocates afresh, so that it does not hold its memory until the next image.
KEEP_BYTES = 128 * 2**20
#: Slice of a layer norm written into a kept buffer (see ``_layer_norm_last``).
_SLICE_BYTES = 8 * 2**20


class SharedImageDecoder:
    """SAM's mask decoder for many point prompts on one image embedding.

    Computes what ``model.mask_decoder(..., multimask_output=True)`` computes
    (same weights, same operations up to floating-point rounding) without
    copying the image embedding per prompt:

    - In the first two-way block the image tokens are the same for every
      prompt, so their key/value projections (token→image attention) and query
      projection (image→token attention) are computed once.
    - In later blocks, the attention projections on the image side are folded
      into the prompt side: with only a handful of tokens per prompt,
      ``q · (W_k x)`` is computed as ``(W_kᵀ q) · x`` and ``Σ p x W_vᵀ`` as
      ``(Σ p x) W_vᵀ``, and the output projection is applied to the token
      values before the attention weights.
    - The final token→image attention is computed only for the tokens the
      multimask output reads (the IoU token and three mask tokens).
    - Image→token attention weights are laid out with the image tokens
      innermost, and on the CPU the per-prompt image tokens are written into
      buffers kept from call to call.
    - IoU predictions are available before any upscaling, and masks are
      upscaled (transposed convolutions as matrix products) only for the
      prompts and outputs asked for.

    Parameters
    ----------
    model : Sam
    features : Tensor ``(1, C, h, w)``
        The image embedding (float32).
    image_pe : Tensor ``(1, C, h, w)``
        Dense positional encoding of the embedding grid.
    dense : Tensor ``(1, C, h, w)``
        Dense prompt embedding (the "no mask" embedding for point prompts).
    dtype : torch.dtype, optional
        Arithmetic of the image-token side and the upscaling (see the module
        documentation); default the features' dtype (float32).
    """

    def __init__(
        self,
        model: Sam,
        features: torch.Tensor,
        image_pe: torch.Tensor,
        dense: torch.Tensor,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.dec = model.mask_decoder
        self.tr = self.dec.transformer
        self.dtype = features.dtype if dtype is None else dtype
        src = features + dense  # (1, C, h, w)
        _, _, h, w = src.shape
        self.hw = (h, w)
        keys0 = src.flatten(2).transpose(1, 2)  # (1, HW, C)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        kpe = keys0 + key_pe
        first = self.tr.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        # Shared projections in float32, then kept in the decoder's dtype.
        cast = self._image_side
        self.k0 = cast(t2i.k_proj(kpe))
        self.v0 = cast(t2i.v_proj(keys0))
        self.q0 = cast(i2t.q_proj(kpe))
        self.keys0, self.key_pe = cast(keys0), cast(key_pe)
        up = self.dec.output_upscaling
        conv1, conv2 = up[0], up[3]
        c, c1, c2 = conv1.in_channels, conv1.out_channels, conv2.out_channels
        # A 2×2 stride-2 transposed convolution maps each pixel to a 2×2 block:
        # a matrix product per pixel, outputs ordered (di, dj, channel).
        self._w1 = cast(conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1))
        self._b1 = cast(conv1.bias.repeat(4))
        self._w2 = cast(conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2))
        self._b2 = cast(conv2.bias.repeat(4))
        # On the CPU the per-prompt image tokens (tens of MB per decoder call)
        # are written into buffers kept from call to call: a fresh allocation
        # that size is mapped from the system and faulted in page by page
        # every time, which cost more than the arithmetic on it.
        self._pool = KeptBuffers(
            features.device, self.dtype, KEEP_BYTES, active=features.device.type == "cpu"
        )
        self._calls = 0

    def _image_side(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in the decoder's image-side dtype, contiguous."""
        return t.to(self.dtype).contiguous()

    # -------------------------------------------------------------- structure check
    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether ``model`` has the structure of SAM's mask decoder."""
        try:
            dec = model.mask_decoder
            tr = dec.transformer
            attns = [tr.final_attn_token_to_image]
            for layer in tr.layers:
                attns += [layer.self_attn, layer.cross_attn_token_to_image,
                          layer.cross_attn_image_to_token]
                for name in ("norm1", "norm2", "norm3", "norm4", "mlp"):
                    if not isinstance(getattr(layer, name), nn.Module):
                        return False
                if not isinstance(layer.skip_first_layer_pe, bool):
                    return False
            for a in attns:
                if not all(
                    isinstance(getattr(a, p), nn.Linear)
                    for p in ("q_proj", "k_proj", "v_proj", "out_proj")
                ):
                    return False
                if a.q_proj.out_features % int(a.num_heads):
                    return False
            up = dec.output_upscaling
            if len(up) != 5 or not isinstance(tr.norm_final_attn, nn.Module):
                return False
            for conv in (up[0], up[3]):
                if not (
                    type(conv) is nn.ConvTranspose2d
                    and tuple(conv.kernel_size) == (2, 2)
                    and tuple(conv.stride) == (2, 2)
                    and tuple(conv.padding) == (0, 0)
                    and tuple(conv.output_padding) == (0, 0)
                    and tuple(conv.dilation) == (1, 1)
                    and conv.groups == 1
                    and conv.bias is not None
                ):
                    return False
            ln = up[1]
            if ln.weight.shape != (up[0].out_channels,) or not isinstance(ln.eps, float):
                return False
            return (
                len(tr.layers) >= 1
                and len(dec.output_hypernetworks_mlps) == dec.num_mask_tokens
                and dec.mask_tokens.weight.shape[0] == dec.num_mask_tokens
                and isinstance(dec.iou_prediction_head, nn.Module)
            )
        except (AttributeError, TypeError, IndexError):
            return False

    # -------------------------------------------------------------- decoding
    def decode(self, sparse: torch.Tensor):
        """IoU predictions ``(B, 3)`` and a function flat-mask-indices -> low-res logits.

        Both are float32 whatever the decoder's dtype. The function reads
        buffers that the next ``decode`` call reuses (on the CPU): call it
        before decoding the next prompts.
        """
        dec, tr = self.dec, self.tr
        b = sparse.shape[0]
        hw, c = self.keys0.shape[1:]
        self._calls += 1
        call = self._calls
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [out_tokens.unsqueeze(0).expand(b, -1, -1).to(sparse.dtype), sparse], dim=1
        )
        query_pe = queries = tokens
        keys = kpe = None
        for i, layer in enumerate(tr.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries, queries, queries)
            else:
                q = queries + query_pe
                queries = queries + layer.self_attn(q, q, queries)
            queries = layer.norm1(queries)
            q = queries + query_pe
            if i == 0:
                attn = _t2i_shared(layer.cross_attn_token_to_image, q, self.k0, self.v0)
            else:
                kpe = self._add_pe(keys)
                attn = _t2i_folded(layer.cross_attn_token_to_image, q, kpe, keys, self._pool)
            queries = layer.norm2(queries + attn)
            queries = layer.norm3(queries + layer.mlp(queries))
            q = queries + query_pe
            attn_module = layer.cross_attn_image_to_token
            updated = self._pool("keys", (b, hw, c))
            if i == 0:
                keys = _i2t_shared(attn_module, self.q0, q, queries, residual=self.keys0,
                                   out=updated, scratch=self._pool)
            else:
                keys = _i2t_folded(attn_module, kpe, q, queries, residual=keys, out=updated,
                                   scratch=self._pool)
            del kpe, updated
            # Into a second buffer: the "keys" buffer is free again for the next block.
            keys = _layer_norm(layer.norm4, keys, out=self._pool("normed", (b, hw, c)))
        n_tok = 1 + dec.num_mask_tokens
        # The IoU token and the multimask output tokens (mask token 0 is the
        # single-mask output, unused here): position j >= 1 is mask token j.
        used = [0, *range(2, n_tok)]
        q = (queries + query_pe)[:, used]
        kpe = self._add_pe(keys)
        final = _t2i_folded(tr.final_attn_token_to_image, q, kpe, keys, self._pool)
        del kpe
        queries = tr.norm_final_attn(queries[:, used] + final)

        iou = dec.iou_prediction_head(queries[:, 0])[:, 1:]  # multimask outputs
        hyper = torch.stack(
            [dec.output_hypernetworks_mlps[j](queries[:, j]) for j in range(1, n_tok - 1)],
            dim=1,
        )  # (B, 3, C/8)
        n_out = hyper.shape[1]

        def low_res_for(idx: torch.Tensor) -> torch.Tensor:
            if self._pool.active and call != self._calls:
                raise RuntimeError("Upscale a decoder call's masks before the next call.")
            idx = idx.to(keys.device)
            prompts = idx // n_out
            uniq, inverse = torch.unique(prompts, return_inverse=True)
            first, last = int(uniq[0]), int(uniq[-1])
            if last - first + 1 == len(uniq):  # consecutive prompts: no gather
                logits = self.upscale(keys[first : last + 1], hyper[first : last + 1])
            else:
                gathered = self._pool("gathered", (len(uniq), hw, c))
                picked = torch.index_select(keys, 0, uniq, out=gathered) if (
                    gathered is not None) else keys[uniq]
                logits = self.upscale(picked, hyper[uniq])  # (P, 3, 4h, 4w)
            return logits[inverse, idx % n_out].float()

        return iou, low_res_for

    def _add_pe(self, keys: torch.Tensor) -> torch.Tensor:
        """``keys + key_pe``, into the reusable "kpe" buffer on the CPU."""
        out = self._pool("kpe", tuple(keys.shape))
        if out is None:
            return keys + self.key_pe
        return torch.add(keys, self.key_pe, out=out)

    def upscale(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(P, M, 4h, 4w)`` from image tokens ``(P, HW, C)`` and
        hypernetwork weights ``(P, M, C/8)``, in the decoder's dtype."""
        up = self.dec.output_upscaling
        conv1, norm, act1, conv2, act2 = up[0], up[1], up[2], up[3], up[4]
        p, hw, c = keys.shape
        c1, c2 = conv1.out_channels, conv2.out_channels
        # On the CPU the intermediates go into buffers kept from call to call
        # ("kpe" and "keys" are free once decoding is done; "keys" holds the
        # image tokens before their last layer norm).
        y = torch.addmm(self._b1, keys.reshape(p * hw, c), self._w1,
                        out=self._pool("kpe", (p * hw, 4 * c1)))
        y = _layer_norm_last(y.view(p * hw * 4, c1), (c1,), norm.weight, norm.bias, norm.eps,
                             out=self._pool("keys", (p * hw * 4, c1)))
        y = _act_(act1, y)
        y = torch.addmm(self._b2, y, self._w2, out=self._pool("upscaled", (p * hw * 4, 4 * c2)))
        y = _act_(act2, y)  # (P*HW*4, 4*C2)
        m = hyper.shape[1]
        logits = torch.bmm(y.view(p, hw * 16, c2), hyper.transpose(1, 2).to(y.dtype))
        h, w = self.hw
        logits = logits.view(p, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return logits.reshape(p, m, 4 * h, 4 * w)


def _scratch(scratch: Scratch | None, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A reusable buffer from ``scratch`` (None: allocate afresh)."""
    return None if scratch is None else scratch(name, shape)


def _heads(attn: nn.Module) -> tuple[int, int]:
    n = int(attn.num_heads)
    return n, attn.q_proj.out_features // n


def _layer_norm(norm: nn.Module, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``norm(x)``, written to ``out`` if given (same shape as ``x``, not
    overlapping it) when ``norm`` is a :class:`~torch.nn.LayerNorm`."""
    if out is None or type(norm) is not nn.LayerNorm:
        return norm(x)
    return _layer_norm_last(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps, out)


def _layer_norm_last(
    x: torch.Tensor,
    shape: tuple[int, ...],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    out: torch.Tensor | None,
) -> torch.Tensor:
    """``F.layer_norm(x, shape, weight, bias, eps)``, written to ``out`` if given.

    Into ``out`` (contiguous) the norm is computed in slices of at most
    :data:`_SLICE_BYTES` of rows, each copied in while it is still in cache: ATen has
    no layer norm that writes into a given tensor, and a fresh tensor of tens
    of MB costs more than the norm itself (page faults; see
    :mod:`napari_sam.runtime.allocator`), most of all on a worker thread,
    whose glibc arena maps every block over 64 MiB afresh.
    """
    if out is None:
        return F.layer_norm(x, shape, weight, bias, eps)
    rows, dst = x.reshape(-1, math.prod(shape)), out.view(-1, math.prod(shape))
    step = max(1, _SLICE_BYTES // (rows.shape[1] * x.element_size()))
    for start in range(0, rows.shape[0], step):
        dst[start : start + step].copy_(
            F.layer_norm(rows[start : start + step], shape, weight, bias, eps)
        )
    return out


def _act_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for GELU/ReLU (``x`` is a temporary of the upscaling)."""
    if isinstance(act, nn.GELU):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    if isinstance(act, nn.ReLU):
        return x.relu_()
    return act(x)


def _t2i_shared(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Token→image attention with projected image keys/values shared by all prompts.

    ``q``: float32 tokens ``(B, Nq, C)``; ``k``, ``v``: ``(1, HW, Ci)`` in the
    image-side dtype. Returns float32 ``(B, Nq, C)``.
    """
    b, nq, _ = q.shape
    nh, d = _heads(attn)
    qh = attn.q_proj(q).reshape(b * nq, nh, d).transpose(0, 1).unsqueeze(0).to(k.dtype)
    kh = k[0].reshape(-1, nh, d).transpose(0, 1).unsqueeze(0)
    vh = v[0].reshape(-1, nh, d).transpose(0, 1).unsqueeze(0)
    out = F.scaled_dot_product_attention(qh, kh, vh)  # (1, nh, B*Nq, d)
    out = out[0].transpose(0, 1).reshape(b, nq, nh * d)
    return attn.out_proj(out.to(q.dtype))


def _t2i_folded(
    attn: nn.Module,
    q: torch.Tensor,
    kpe: torch.Tensor,
    keys: torch.Tensor,
    scratch: Scratch | None = None,
):
    """Token→image attention on per-prompt image tokens ``(B, HW, C)``.

    The key projection is folded into the queries (its bias adds the same
    value to every logit of a query and cancels in the softmax) and the value
    projection is applied after the attention-weighted sum (weights sum to 1).
    ``scratch`` gives reusable buffers for the attention logits and weights.
    """
    b, nq, _ = q.shape
    c = keys.shape[-1]
    nh, d = _heads(attn)
    qh = attn.q_proj(q).reshape(b, nq, nh, d)
    wk = attn.k_proj.weight.reshape(nh, d, c)
    qk = torch.einsum("bthd,hdc->bhtc", qh, wk).reshape(b, nh * nq, c) * d**-0.5
    shape = (b, nh * nq, kpe.shape[1])
    logits = torch.bmm(qk.to(kpe.dtype), kpe.transpose(1, 2),
                       out=_scratch(scratch, "logits", shape))  # (B, nh*Nq, HW)
    # bf16 in: computed in float32, rounded once.
    weights = torch.softmax(logits, dim=-1, out=_scratch(scratch, "weights", shape))
    del logits
    mixed = torch.bmm(weights, keys).reshape(b, nh, nq, c).to(q.dtype)
    wv = attn.v_proj.weight.reshape(nh, d, c)
    out = torch.einsum("bhtc,hdc->bthd", mixed, wv)
    if attn.v_proj.bias is not None:
        out = out + attn.v_proj.bias.reshape(nh, d)
    return attn.out_proj(out.reshape(b, nq, nh * d))


def _i2t_shared(
    attn: nn.Module,
    q_img: torch.Tensor,
    q_tok: torch.Tensor,
    v_tok: torch.Tensor,
    residual: torch.Tensor,
    out: torch.Tensor | None = None,
    scratch: Scratch | None = None,
) -> torch.Tensor:
    """``residual +`` image→token attention whose projected image queries
    ``(1, HW, Ci)`` are shared by all prompts (written to ``out`` if given)."""
    b, nq, _ = q_tok.shape
    nh, d = _heads(attn)
    hw = q_img.shape[1]
    k = attn.k_proj(q_tok).reshape(b, nq, nh, d) * d**-0.5
    qh = q_img[0].reshape(hw, nh, d).permute(1, 2, 0)  # (nh, d, HW)
    kh = k.permute(2, 0, 1, 3).reshape(nh, b * nq, d).to(q_img.dtype)
    into = _scratch(scratch, "logits", (nh, b * nq, hw))
    logits = torch.bmm(kh, qh, out=into).view(nh, b, nq, hw).transpose(0, 1)  # (B, nh, Nq, HW)
    laid_out = _scratch(scratch, "weights", (b, nh, nq, hw))
    if laid_out is None or into is None:
        return _weighted_token_values(attn, _softmax_tokens(logits), v_tok, residual, out)
    # The softmax needs the logits contiguous: copy them into one buffer and
    # write the weights into the other.
    logits = laid_out.copy_(logits)
    weights = _softmax_tokens(logits, into.view(b, nh, nq, hw))
    return _weighted_token_values(attn, weights, v_tok, residual, out)


def _i2t_folded(
    attn: nn.Module,
    kpe: torch.Tensor,
    q_tok: torch.Tensor,
    v_tok: torch.Tensor,
    residual: torch.Tensor,
    out: torch.Tensor | None = None,
    scratch: Scratch | None = None,
) -> torch.Tensor:
    """``residual +`` image→token attention on per-prompt image tokens; the
    query projection is folded into the token keys (written to ``out`` if given)."""
    b, nq, _ = q_tok.shape
    nh, d = _heads(attn)
    hw, c = kpe.shape[1:]
    k = attn.k_proj(q_tok).reshape(b, nq, nh, d) * d**-0.5
    wq = attn.q_proj.weight.reshape(nh, d, c)
    folded = torch.einsum("hdc,bthd->bhtc", wq, k).reshape(b, nh * nq, c).to(kpe.dtype)
    into = _scratch(scratch, "logits", (b, nh * nq, hw))
    if attn.q_proj.bias is not None:
        bias = torch.einsum("hd,bthd->bht", attn.q_proj.bias.reshape(nh, d), k)
        logits = torch.baddbmm(
            bias.reshape(b, nh * nq, 1).to(kpe.dtype), folded, kpe.transpose(1, 2), out=into
        )
    else:
        logits = torch.bmm(folded, kpe.transpose(1, 2), out=into)
    weights = _softmax_tokens(
        logits.view(b, nh, nq, hw), _scratch(scratch, "weights", (b, nh, nq, hw))
    )
    return _weighted_token_values(attn, weights, v_tok, residual, out)


def _softmax_tokens(logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the (few) prompt tokens of image→token attention logits.

    ``logits``: ``(B, heads, Nq, HW)``, image tokens innermost, so that the
    softmax over ``Nq`` is vectorised along the 4096 image tokens (a softmax
    over a short innermost axis runs several times slower on a CPU).
    Returns the weights contiguous as ``(B, heads * Nq, HW)``; a reduced-precision
    input is computed in float32 and rounded once. ``out``, if given, is a
    contiguous ``(B, heads, Nq, HW)`` buffer for the weights.
    """
    b, nh, nq, hw = logits.shape
    return torch.softmax(logits, dim=2, out=out).reshape(b, nh * nq, hw)


def _weighted_token_values(
    attn: nn.Module,
    weights: torch.Tensor,
    v_tok: torch.Tensor,
    residual: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``residual + out_proj(attention · values)``, with the output projection
    applied to the (few) token values first.

    ``weights`` is ``(B, heads * Nq, HW)``; each head's weights sum to 1, so the
    output bias is spread evenly over the heads' projected values. ``out``, if
    given, is a ``(B, HW, C)`` buffer that receives the result (it must not
    overlap ``residual``).
    """
    b, nq, _ = v_tok.shape
    nh, d = _heads(attn)
    v = attn.v_proj(v_tok).reshape(b, nq, nh, d)
    c = attn.out_proj.out_features
    wo = attn.out_proj.weight.reshape(c, nh, d)
    projected = torch.einsum("bthd,chd->bhtc", v, wo).reshape(b, nh * nq, c)
    if attn.out_proj.bias is not None:
        projected = projected + attn.out_proj.bias / nh
    projected = projected.to(weights.dtype)
    if out is None:
        return torch.baddbmm(residual, weights.transpose(1, 2), projected)
    return torch.baddbmm(residual, weights.transpose(1, 2), projected, out=out)


def agrees_with_model(
    fast: SharedImageDecoder,
    model: nn.Module,
    features: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> bool:
    """Whether ``fast`` gives the model's own mask decoder's multimask result on the prompts
    ``sparse`` / ``dense`` (a few suffice): IoU predictions and low-resolution logits within
    1e-3 of their scale in float32 (1e-1 when either is bfloat16). A structural mismatch
    gives errors of the order of the logits; rounding stays far below."""
    ref_low, ref_iou = model.mask_decoder(
        image_embeddings=features,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )
    iou, low_res_for = fast.decode(sparse)
    low = low_res_for(torch.arange(ref_iou.numel())).reshape(ref_low.shape)
    tol = 1e-3 if fast.dtype == ref_low.dtype == torch.float32 else 1e-1
    scale = 1.0 + float(ref_low.abs().max())
    return (
        iou.shape == ref_iou.shape
        and float((iou - ref_iou).abs().max()) <= tol * (1.0 + float(ref_iou.abs().max()))
        and float((low - ref_low).abs().max()) <= tol * scale
    )
