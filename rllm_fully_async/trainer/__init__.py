# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The trainer side: FullyAsyncTrainer (a verl RayPPOTrainer), batch assembly, the verl training
workers, validation and run metrics."""
