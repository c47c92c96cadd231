# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The trainer side: FullyAsyncTrainer (verl's PPO step fed by the queue), batch assembly, the verl training
workers, validation and run metrics."""
