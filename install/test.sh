#!/usr/bin/env bash
# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
# The project's test command: install (or refresh) the CPU profile, lint, run the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash install/cpu.sh
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
status=0
.venv/bin/python -m pytest -q --durations=25 || status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests (exit 5); the test suite is missing or was deselected" >&2
    exit 1
fi
exit "$status"
