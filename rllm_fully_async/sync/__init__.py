# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Weight sync from the training workers into the rollout servers: ParamSync, the weight-update
process group, and the tensor wire format."""
