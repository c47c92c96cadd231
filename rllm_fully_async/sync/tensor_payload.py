# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""SGLang's wire format for ``/update_weights_from_tensor``, usable without SGLang installed.

SGLang 0.5.6 sends ``serialized_named_tensors`` as a list with one entry per tensor-parallel rank;
each entry is ``base64(pickle(payload))`` made by ``MultiprocessingSerializer`` and read back by its
allow-listing ``SafeUnpickler`` (``sglang/srt/utils/common.py``). The payload is a list of
``(name, tensor)`` pairs, where a tensor may be wrapped in ``LocalSerializedTensor`` (one nested
payload per rank), or, with ``load_format="flattened_bucket"``, a dict with a ``uint8``
``flattened_tensor`` and a list of ``FlattenedTensorMetadata``.

On GPU, ForkingPickler turns a tensor into a CUDA IPC handle. ``serialize_named_tensors`` pickles
CPU tensors by value instead, which both SGLang's unpickler and ``deserialize_named_tensors`` accept.
"""

from __future__ import annotations

import base64
import binascii
import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

_ALLOWED_MODULE_PREFIXES = (
    "builtins.",
    "collections.",
    "copyreg.",
    "torch.",
    "multiprocessing.resource_sharer.",
    "multiprocessing.reduction.",
)
_DENIED = {("builtins", "eval"), ("builtins", "exec"), ("builtins", "compile"), ("builtins", "__import__")}


@dataclass
class FlattenedTensorMetadata:
    """Stands in for ``sglang.srt.weight_sync.tensor_bucket.FlattenedTensorMetadata``."""

    name: str
    shape: torch.Size
    dtype: torch.dtype
    start_idx: int
    end_idx: int
    numel: int


@dataclass
class LocalSerializedTensor:
    """Stands in for ``sglang.srt.model_executor.model_runner.LocalSerializedTensor``."""

    values: list[bytes]


_SGLANG_CLASSES = {
    ("sglang.srt.weight_sync.tensor_bucket", "FlattenedTensorMetadata"): FlattenedTensorMetadata,
    ("sglang.srt.model_executor.model_runner", "LocalSerializedTensor"): LocalSerializedTensor,
}


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SGLANG_CLASSES:
            return _SGLANG_CLASSES[(module, name)]
        if (module, name) not in _DENIED and (module + ".").startswith(_ALLOWED_MODULE_PREFIXES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight payload")


def _unpickle(data: str | bytes) -> Any:
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"serialized_named_tensors entry is not valid base64: {exc}") from exc
    return _AllowListUnpickler(io.BytesIO(data)).load()


def serialize_named_tensors(named_tensors: Sequence[tuple[str, torch.Tensor]]) -> str:
    """One ``serialized_named_tensors`` entry (for one rank) carrying CPU copies of the tensors."""
    payload = [(name, tensor.detach().cpu().contiguous()) for name, tensor in named_tensors]
    return base64.b64encode(pickle.dumps(payload)).decode("ascii")


def deserialize_named_tensors(
    data: str | bytes, load_format: str | None = None
) -> list[tuple[str, torch.Tensor]]:
    """Decode one entry into ``(name, tensor)`` pairs (``load_format``: None, direct, flattened_bucket)."""
    payload = _unpickle(data)
    if load_format == "flattened_bucket":
        flat = payload["flattened_tensor"]
        return [
            (meta.name, flat[meta.start_idx : meta.end_idx].view(meta.dtype).reshape(meta.shape))
            for meta in payload["metadata"]
        ]
    if load_format not in (None, "direct"):
        raise ValueError(f"unsupported load_format {load_format!r}; use None, 'direct' or 'flattened_bucket'")
    named = []
    for name, tensor in payload:
        if isinstance(tensor, LocalSerializedTensor):
            tensor = _unpickle(tensor.values[0])
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"payload entry {name!r} is a {type(tensor).__name__}, not a tensor")
        named.append((name, tensor))
    return named
