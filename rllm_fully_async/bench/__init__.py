# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The benchmark harness: ``python -m rllm_fully_async.bench``."""
