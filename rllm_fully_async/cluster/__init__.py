# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The Ray cluster a run lives on: joining it, where each part is placed, and the addresses between nodes."""
