# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""A resume whose newest checkpoint is gone falls back to the newest intact one (never starts over on top of
the good ones), and the summary of a resumed run counts every step."""

from __future__ import annotations

import shutil

import pytest
from test_e2e import balanced, command, ledger, run_main, step_metrics, task  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_resume_falls_back_when_the_tracked_checkpoint_is_missing(task, tmp_path):  # noqa: F811
    run_main(command(task, tmp_path, "trainer.save_freq=1", "trainer.total_training_steps=3"), tmp_path)
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "3"
    shutil.rmtree(tmp_path / "ckpt" / "global_step_3")  # the tracker names a checkpoint that is gone
    (tmp_path / "metrics.jsonl").unlink()

    proc = run_main(
        command(task, tmp_path, "trainer.save_freq=1", "trainer.total_training_steps=5"), tmp_path
    )
    assert "global_step_2, the newest intact checkpoint" in proc.stdout
    assert "global_step_3/fully_async_state.pt is missing" in proc.stdout
    steps = step_metrics(tmp_path)
    assert [m["training/global_step"] for m in steps] == [3, 4, 5]
    assert "steps: 5\n" in proc.stdout, proc.stdout[-2000:]
    assert balanced(ledger(tmp_path)["counts"])
