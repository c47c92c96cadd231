# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The CPU engine's wire format for ``/update_weights_from_tensor``: safetensors, which cannot carry code.

SGLang 0.5.6 sends each ``serialized_named_tensors`` entry as ``base64(pickle(...))`` and unpickles it
behind a name allow-list. An allow-list on pickle cannot be made safe: crafted payloads get past one
through a dotted name under an allowed module, through torch's own storage loader (which calls
``torch.load(weights_only=False)`` on bytes of the payload's choosing), or through builtins such as
``open``. So the CPU engine takes each entry as base64 of a safetensors file instead: a JSON header
(names, dtypes, shapes, byte offsets) and the raw tensor bytes. Parsing it allocates tensors and does
nothing else; anything that does not parse is refused (the engine answers 400, nothing loaded).

This is the CPU engine's format, not SGLang's: the run never sends weights to a server this way
(ParamSync broadcasts them through ``/update_weights_from_distributed``); it is for tools and tests
that push a state dict to a CPU engine over HTTP.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

LOAD_FORMATS = (None, "direct", "safetensors")


class PayloadError(ValueError):
    """A ``serialized_named_tensors`` entry that is not a safetensors payload."""


def serialize_named_tensors(named_tensors: Sequence[tuple[str, torch.Tensor]]) -> str:
    """One ``serialized_named_tensors`` entry (for one rank): base64 of a safetensors file of the tensors."""
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in named_tensors:
        if name in tensors:
            raise ValueError(f"tensor name {name!r} appears twice")
        tensors[name] = tensor.detach().cpu().contiguous().clone()  # clone: tied weights share storage
    return base64.b64encode(save_safetensors(tensors)).decode("ascii")


def deserialize_named_tensors(
    data: str | bytes, load_format: str | None = None
) -> list[tuple[str, torch.Tensor]]:
    """Decode one entry into ``(name, tensor)`` pairs; :class:`PayloadError` for anything else."""
    if load_format not in LOAD_FORMATS:
        raise PayloadError(
            f"unsupported load_format {load_format!r} for the CPU engine; send null (safetensors payloads)"
        )
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PayloadError(f"serialized_named_tensors entry is not valid base64: {exc}") from exc
    if not isinstance(data, bytes | bytearray):
        raise PayloadError(
            f"serialized_named_tensors entry must be a base64 string, got {type(data).__name__}"
        )
    try:
        tensors = load_safetensors(bytes(data))
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise PayloadError(
            "serialized_named_tensors entry is not a safetensors payload (the CPU engine does not take "
            f"pickled tensors): {exc}"
        ) from exc
    return list(tensors.items())
