# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""``python -m rllm_fully_async.bench``; with ``--learning``, the learning benchmark
(``python -m rllm_fully_async.bench.learning``)."""

import sys

from rllm_fully_async.bench.cli import main

if __name__ == "__main__":
    if "--learning" in sys.argv[1:]:
        from rllm_fully_async.bench.learning import main as learning_main

        learning_main([arg for arg in sys.argv[1:] if arg != "--learning"])
    else:
        main()
