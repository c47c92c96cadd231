# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The rollout side: the SGLang HTTP client, the persistent RolloutExecutor, rollout functions,
trajectories and the staleness budget."""
