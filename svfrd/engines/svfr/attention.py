"""Attention processors for SVFR's UNet (diffusers' `UNetSpatioTemporalConditionModel`).

`ClipIdAttention`: the temporal transformer blocks cross-attend to the 49 ID tokens (docs/svfr.md §3, §4).
diffusers' `TransformerSpatioTemporalModel` repeats each clip's tokens at every spatial position before the
stock processor projects K and V, so the same 49 rows are projected h·w times (at 512x512 about 4.6 of the
45.4 TFLOP of one UNet call, docs/svfr.md §9). Every query row of a clip attends to the same K and V, so this
processor projects the clip's tokens once and attends with all h·w·F queries of the clip at once: the same
softmax per row, the same result within floating-point rounding.

`SlicedAttention`: attention (scaled_dot_product_attention, fused where the GPU has the kernels) run over
slices of the batch, so an unfused fallback never holds the score matrices of the whole batch at once (the
"low" memory tier).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

STOCK = AttnProcessor2_0


class ClipIdAttention:
    """The temporal blocks' cross-attention (`attn2`) with K and V projected once per clip.

    The number of clips in the batch is not visible to a processor (it sees (clips·h·w, F, C) queries and
    (clips·h·w, T, D) repeated tokens), so a forward pre-hook on the owning transformer records it in `clips`
    before each call (`install_clip_id_attention`)."""

    def __init__(self) -> None:
        self.clips: int | None = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if not self._applies(attn, hidden_states, encoder_hidden_states, attention_mask):
            return STOCK()(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        clips = self.clips
        rows, frames, _ = hidden_states.shape
        # Rows are clip-major (clip·h·w + position), as TransformerSpatioTemporalModel lays them out.
        tokens = encoder_hidden_states.view(clips, rows // clips, *encoder_hidden_states.shape[1:])[:, 0]
        if attn.norm_cross:
            tokens = attn.norm_encoder_hidden_states(tokens)
        heads = attn.heads
        query = attn.to_q(hidden_states)  # (clips·hw, F, inner)
        key, value = attn.to_k(tokens), attn.to_v(tokens)  # (clips, T, inner)
        head_dim = key.shape[-1] // heads
        query = query.reshape(clips, -1, heads, head_dim).transpose(1, 2)  # (clips, heads, hw·F, d)
        key = key.view(clips, -1, heads, head_dim).transpose(1, 2)
        value = value.view(clips, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(rows, frames, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    def _applies(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> bool:
        """Only the plain 3-D cross-attention whose clip count is known; anything else goes to the stock path."""
        return (
            self.clips is not None
            and encoder_hidden_states is not None
            and attention_mask is None
            and hidden_states.ndim == 3
            and attn.spatial_norm is None
            and attn.group_norm is None
            and hidden_states.shape[0] % self.clips == 0
            and encoder_hidden_states.shape[0] == hidden_states.shape[0]
        )


def install_clip_id_attention(unet: torch.nn.Module) -> int:
    """Give every temporal cross-attention of `unet` a `ClipIdAttention`; returns how many were installed.
    Idempotent: a UNet that has them already keeps its hooks."""
    installed = 0
    for transformer in unet.modules():
        if not isinstance(transformer, TransformerSpatioTemporalModel):
            continue
        processors = [
            block.attn2
            for block in transformer.temporal_transformer_blocks
            if getattr(block, "attn2", None) is not None
        ]
        if not processors or isinstance(processors[0].processor, ClipIdAttention):
            continue
        shared = ClipIdAttention()
        for attention in processors:
            attention.set_processor(shared)
        transformer.register_forward_pre_hook(_clip_count_hook(shared), with_kwargs=True)
        installed += len(processors)
    return installed


def _clip_count_hook(processor: ClipIdAttention):
    def record_clips(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        indicator = kwargs.get("image_only_indicator")
        if indicator is None and len(args) > 2:
            indicator = args[2]
        processor.clips = None if indicator is None else int(indicator.shape[0])

    return record_clips


def uses_clip_id_attention(unet: torch.nn.Module) -> bool:
    return any(isinstance(p, ClipIdAttention) for p in unet.attn_processors.values())


class SlicedAttention:
    """diffusers' scaled-dot-product processor on `slice_size` batch rows at a time (same result per row)."""

    def __init__(self, slice_size: int) -> None:
        self.slice_size = slice_size
        self.stock = STOCK()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if attention_mask is not None or temb is not None or len(hidden_states) <= self.slice_size:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        parts = []
        for start in range(0, len(hidden_states), self.slice_size):
            rows = slice(start, start + self.slice_size)
            context = None if encoder_hidden_states is None else encoder_hidden_states[rows]
            parts.append(self.stock(attn, hidden_states[rows], context, None, None, **kwargs))
        return torch.cat(parts)


def slice_attention(unet: torch.nn.Module, slice_size: int) -> None:
    """Every attention of `unet` except the ID cross-attention (already small) runs in batch slices."""
    for attention in unet.modules():
        if isinstance(attention, Attention) and not isinstance(attention.processor, ClipIdAttention):
            attention.set_processor(SlicedAttention(slice_size))


def unslice_attention(unet: torch.nn.Module) -> None:
    for attention in unet.modules():
        if isinstance(attention, Attention) and isinstance(attention.processor, SlicedAttention):
            attention.set_processor(STOCK())
