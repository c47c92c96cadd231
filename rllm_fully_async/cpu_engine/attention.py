# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Attention for the CPU engine's left-padded running batch: ready 4-D masks and grouped-query SDPA.

Given a 2-D padding mask, transformers rebuilds the 4-D mask with ``vmap`` on every forward pass and,
because a mask is present, copies every key/value head once per query head (``repeat_kv``) before
calling SDPA. On a streaming batch, where rows start at different positions and so always carry
padding, those two took most of a decode pass (the engine generated 44 samples/s in a stream against
155 in one batch; 146 with this module). A batch started all at once with equal prompt lengths has no
padding and never paid them, so the overhead also made lock-step look cheaper than streaming. SGLang
pages its KV cache and pays neither. Here the engine passes masks it builds itself, which transformers
uses as they are, and runs SDPA with ``enable_gqa`` (torch >= 2.5), which reads the shared heads in
place.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface

ATTN_IMPLEMENTATION = "rllm_sdpa_gqa"


def prefill_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[rows, 1, width, width]`` for a left-padded prefill: causal, padding keys masked, and each padding
    query attending to itself only (a query with no key at all would give NaN)."""
    width = attention_mask.shape[1]
    mask = torch.ones((width, width), dtype=torch.bool).tril() & attention_mask.bool()[:, None, :]
    mask |= torch.eye(width, dtype=torch.bool)
    return mask[:, None]


def decode_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[rows, 1, 1, cached]`` for one decoded token per row: every cached position that is not padding."""
    return attention_mask.bool()[:, None, None, :]


def sdpa_gqa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; ``query`` is ``[batch, heads, q, dim]``, ``key`` and
    ``value`` ``[batch, kv_heads, k, dim]``. Returns ``[batch, q, heads, dim]``."""
    if is_causal is None:
        is_causal = query.shape[2] > 1
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal and attention_mask is None,  # a given mask already holds the causal part
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPLEMENTATION, sdpa_gqa)
