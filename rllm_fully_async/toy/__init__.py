# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The offline toy model (``python -m rllm_fully_async.toy build --out DIR``) and its verifiable task."""
