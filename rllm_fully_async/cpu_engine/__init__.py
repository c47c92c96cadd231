# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The embedded CPU engine: a generation server on transformers that speaks SGLang's HTTP API.

``python -m rllm_fully_async.cpu_engine --model-path DIR`` serves one."""
