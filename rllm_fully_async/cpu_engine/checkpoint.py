# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Reading a Hugging Face checkpoint's tensors (``/update_weights_from_disk`` and start-up)."""

from __future__ import annotations

import glob
import os

import torch


def read_checkpoint(model_path: str) -> list[tuple[str, torch.Tensor]]:
    """All tensors of a Hugging Face checkpoint directory (safetensors, else PyTorch .bin files)."""
    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if files:
        from safetensors.torch import load_file

        return [item for file in files for item in load_file(file).items()]
    files = sorted(glob.glob(os.path.join(model_path, "*.bin")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or *.bin weight files in {model_path!r}")
    return [
        item for file in files for item in torch.load(file, map_location="cpu", weights_only=True).items()
    ]
