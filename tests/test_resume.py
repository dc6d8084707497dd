"""Checkpoint and resume: a run killed (SIGKILL) or pre-empted (SIGTERM) mid-training and resumed ends exactly
where an uninterrupted run ends: same evaluations, losses and weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lopa.checkpointing import CHECKPOINTS_DIR, STATE_FILE, WEIGHTS_FILE, EpochShuffle, completed_checkpoints
from lopa.records import WEIGHTS_FILE as BEST_WEIGHTS_FILE
from tests.conftest import REPO, write_glue_fixture

# Runs run.py in this process after wrapping the trainer's loss so that the process signals itself during the
# n-th forward pass: a crash (SIGKILL) or a pre-emption (SIGTERM) at an exact, reproducible point of training.
SELF_SIGNAL = """
import os, runpy, signal, sys
import lopa.trainer
signum, at_call = getattr(signal, sys.argv[1]), int(sys.argv[2])
original, calls = lopa.trainer.summed_loss, [0]
def summed_loss(model, batch):
    calls[0] += 1
    if calls[0] == at_call:
        os.kill(os.getpid(), signum)
    return original(model, batch)
lopa.trainer.summed_loss = summed_loss
sys.argv = ["run.py", *sys.argv[3:]]
runpy.run_path("run.py", run_name="__main__")
"""

# 12 training rows in batches of 4: 3 steps per epoch, 8 steps = 2 epochs and 2 steps; checkpoints every 2 steps.
STEPS, EVERY = 8, 2


def run_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["model=tiny-llama", "encoder=tiny-bert", "method=lopa", "method.prompt_length=4", f"data_dir={data}",
            "logger=none", "device=cpu", f"trainer.max_steps={STEPS}", "trainer.batch_size=4",
            f"trainer.checkpoint_every={EVERY}", "trainer.log_every=1", "eval.batch_size=8", f"hydra.run.dir={run_dir}",
            *extra]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def start(args: list[str], signal_name: str | None = None, at_call: int = 0) -> subprocess.Popen:
    command = [sys.executable, "run.py", *args]
    if signal_name is not None:
        command = [sys.executable, "-c", SELF_SIGNAL, signal_name, str(at_call), *args]
    return subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def checkpoint_steps(run_dir: Path) -> list[int]:
    return [int(path.name.split("-")[1]) for path in completed_checkpoints(run_dir / CHECKPOINTS_DIR)]


def test_killed_then_preempted_run_resumes_to_the_uninterrupted_result(tmp_path):
    data = write_glue_fixture(tmp_path / "data", "rte", train_rows=12, eval_rows=7)
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"

    # Crash: SIGKILL during step 5 (the 5th forward pass); the newest checkpoint is step 4, mid-epoch 1.
    reference = start(run_args(data, reference_dir, "trainer.keep_checkpoints=10"))
    killed = start(run_args(data, resumed_dir), "SIGKILL", at_call=5)
    code, stderr = finish(killed)
    assert code == -signal.SIGKILL, stderr
    assert checkpoint_steps(resumed_dir) == [4]
    assert not (resumed_dir / "results.json").exists()
    assert not list((resumed_dir / CHECKPOINTS_DIR).glob(".tmp-*"))

    # Pre-emption: the auto-resumed run gets SIGTERM during its 3rd step (step 7): it saves step 7 (not a multiple
    # of checkpoint_every) and exits with 143 and a one-line note on how to resume.
    preempted = start(run_args(data, resumed_dir), "SIGTERM", at_call=3)
    code, stderr = finish(preempted)
    assert code == 143, stderr
    assert "interrupted by SIGTERM at step 7" in stderr and "Traceback" not in stderr
    interrupted = record(resumed_dir)
    assert interrupted["status"] == "interrupted" and interrupted["steps"] == 7
    assert interrupted["resumed_from"].endswith("step-000004")
    assert checkpoint_steps(resumed_dir) == [7]  # keep_checkpoints=1

    code, stderr = finish(start(run_args(data, resumed_dir, "trainer.resume=true")))
    assert code == 0, stderr
    code, stderr = finish(reference)
    assert code == 0, stderr

    expected, resumed = record(reference_dir), record(resumed_dir)
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("step-000007")
    assert resumed["steps"] == expected["steps"] == STEPS
    assert resumed["train_losses"] == expected["train_losses"]
    assert resumed["evaluations"] == expected["evaluations"]
    assert [e["epoch"] for e in expected["evaluations"]] == [0, 1, 2]  # each epoch's end, and the last step
    assert resumed["best"] == expected["best"]
    # The record's wall time covers every process: the two earlier ones are carried by the checkpoint.
    assert expected["earlier_wall_time_s"] == 0 and resumed["earlier_wall_time_s"] > 0
    assert resumed["wall_time_s"] > resumed["earlier_wall_time_s"] > interrupted["earlier_wall_time_s"] > 0
    assert checkpoint_steps(reference_dir) == [2, 4, 6, 8]
    final = f"{CHECKPOINTS_DIR}/step-{STEPS:06d}/{WEIGHTS_FILE}"
    for weights in (final, f"weights/{BEST_WEIGHTS_FILE}"):
        saved, replayed = load_file(reference_dir / weights), load_file(resumed_dir / weights)
        assert saved.keys() == replayed.keys()
        for name in saved:
            assert torch.equal(saved[name], replayed[name]), (weights, name)
    state = json.loads((resumed_dir / final).parent.joinpath(STATE_FILE).read_text())
    assert state["train_state"] == {"step": 8, "epoch": 2, "batch_in_epoch": 2, "running_loss": 0.0, "running_count": 0,
                                    "schedule": {"name": "constant_with_warmup", "steps": STEPS, "warmup": 0}}


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_epoch_shuffle_depends_on_seed_and_epoch_only(epoch):
    first, second = EpochShuffle(10, seed=3), EpochShuffle(10, seed=3)
    list(first)  # drawing an epoch leaves no state behind
    first.set_epoch(epoch)
    second.set_epoch(epoch)
    assert list(first) == list(second) and sorted(first) == list(range(10))
    other = EpochShuffle(10, seed=3)
    other.set_epoch(epoch + 1)
    assert list(other) != list(first)


def test_resuming_with_another_config_names_the_differing_keys():
    from lopa.checkpointing import config_mismatches

    saved = {"method": {"name": "lopa", "rank": 4}, "seed": 1, "num_processes": 1,
             "trainer": {"batch_size": 4, "max_steps": 8, "resume": "auto", "lr": 0.001}}
    longer = {**saved, "trainer": {**saved["trainer"], "max_steps": 20, "resume": True}}
    assert config_mismatches(saved, longer) == []  # training longer is no config mismatch; the trainer checks the schedule
    other = {**saved, "method": {"name": "lopa", "rank": 2}, "num_processes": 2,
             "trainer": {**saved["trainer"], "batch_size": 2}}
    assert config_mismatches(saved, other) == ["method.rank", "num_processes", "trainer.batch_size"]


@pytest.mark.parametrize("scheduler, allow, refused", [("linear", False, True), ("linear", True, False),
                                                       ("constant", False, False)])
def test_a_longer_resume_refuses_a_learning_rate_jump_unless_allowed(tmp_path, scheduler, allow, refused):
    data = write_glue_fixture(tmp_path / "data", "rte", train_rows=12, eval_rows=4)
    run_dir = tmp_path / "run"
    common = [f"trainer.scheduler={scheduler}", "trainer.warmup_steps=0"]
    code, stderr = finish(start(run_args(data, run_dir, "trainer.max_steps=4", *common)))
    assert code == 0, stderr[-2000:]
    code, stderr = finish(start(run_args(data, run_dir, "trainer.max_steps=8", *common,
                                         f"trainer.allow_schedule_change={str(allow).lower()}")))
    if refused:  # linear over 4 steps ends at 0; over 8 steps it is at 0.5 at step 4
        assert code == 2 and "changes the rate from step 4 on" in stderr and "allow_schedule_change=true" in stderr
        assert stderr.strip().count("\n") == 0, stderr  # one line
    else:
        assert code == 0, stderr[-2000:]
        result = record(run_dir)
        assert result["steps"] == 8 and result["resumed_from"].endswith("step-000004")


def test_fp16_loss_scale_survives_a_resume(tmp_path):
    """The GradScaler's scale is part of the checkpoint: a resumed fp16 run does not restart it at 65536."""
    from accelerate import Accelerator

    from lopa.checkpointing import Checkpointer, TrainState

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(2))
            self.method = type("Method", (), {"saved_buffer_names": staticmethod(lambda: [])})()

    accelerator = Accelerator(cpu=True)
    model = Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpointer = Checkpointer(tmp_path, every=1, keep=1, config={}, accelerator=accelerator)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    accelerator.scaler.scale(torch.ones(()))  # a first scaled loss creates the scale
    accelerator.scaler.update(new_scale=512.0)  # what overflows had brought it down to
    path = checkpointer.save(model, optimizer, scheduler, TrainState(step=3), {})
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)  # a fresh process
    checkpointer.load(path, model, optimizer, scheduler)
    assert accelerator.scaler.get_scale() == 512.0
