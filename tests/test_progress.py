"""Evaluation and generation progress bars: on stdout, also when it is not a terminal (a log file), main process only."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA
from tests.helpers import build, cpu_accelerator


def test_evaluation_shows_a_progress_bar_in_a_log(glue_data, capsys):
    model, task, examples = build(glue_data, "model=tiny-llama", "method=prompt_tuning")
    task.evaluate(model, task.dataloader(examples[:6], 2, shuffle=False), cpu_accelerator())
    out = capsys.readouterr()
    assert "eval: 100%" in out.out and "3/3" in out.out  # captured stdout is not a tty: the finished line stays
    assert "eval" not in out.err


@pytest.mark.skipif(not (SHARED_DATA / "cruxeval").is_dir(), reason=f"no benchmark data at {SHARED_DATA}")
def test_generation_shows_a_progress_bar_in_a_log(capsys):
    model, task, _ = build(SHARED_DATA, "model=tiny-llama", "method=prompt_tuning", "task=code/cruxeval_o",
                           "task.generation.do_sample=false", "task.generation.max_new_tokens=2")
    examples = [task.encode(row, i, "eval") for i, row in enumerate(task.load("eval", limit=2))]
    task.generate(model, task.dataloader(examples, 1, shuffle=False), cpu_accelerator())
    out = capsys.readouterr()
    assert "generate: 100%" in out.out and "2/2" in out.out
