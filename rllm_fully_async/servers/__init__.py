# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Rollout server management: launch SGLang or the CPU engine as Ray actors, health-check, restart;
the supervisor that recovers a dead server during a run."""
