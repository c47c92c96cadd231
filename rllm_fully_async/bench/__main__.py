# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""``python -m rllm_fully_async.bench``."""

from rllm_fully_async.bench.cli import main

if __name__ == "__main__":
    main()
