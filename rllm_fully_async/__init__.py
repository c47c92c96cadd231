# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Fully-asynchronous PPO/GRPO training for verl 0.7.1.

Rollout generation runs continuously on inference servers, the trainer consumes finished
trajectory groups from a bounded queue, and new weights flow back to the servers every
``trigger_parameter_sync_step`` steps.
"""

__version__ = "0.1.0"
