"""Two processes (gloo on CPU) give the one-process result; only the main process writes; evaluation gathers each
example exactly once.

`accelerate launch --cpu --num_processes 2` starts a single process here (several CPU processes need mpirun), so the
test launches with torchrun, which really starts two, and asserts the world size from the record.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_glue_fixture

EVAL_ROWS = 13  # odd, and not a multiple of the eval batch: the last batch is padded on one process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def common(data, run_dir) -> list[str]:
    # LoPA without dropout: with it, two processes draw other dropout masks than one and the runs cannot agree.
    # One epoch (not max_steps) and a linear schedule with warm-up: the step count and the learning rate at each
    # step must come out the same with two processes as with one.
    return ["model=tiny-llama", "encoder=tiny-bert", "method=lopa", "method.prompt_length=4", "method.dropout=0",
            f"data_dir={data}", "logger=none", "device=cpu", "trainer.epochs=1", "trainer.scheduler=linear",
            "trainer.warmup_steps=2", "trainer.log_every=1",
            "trainer.eval_every=3", "trainer.checkpoint_every=3", "eval.batch_size=4", f"hydra.run.dir={run_dir}"]


def test_two_processes_match_one_and_only_the_main_one_writes(tmp_path):
    data = write_glue_fixture(tmp_path / "data", "rte", train_rows=24, eval_rows=EVAL_ROWS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    workdir = tmp_path / "cwd"  # the processes' working directory: nothing may appear in it
    workdir.mkdir()
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.Popen([sys.executable, str(REPO / "run.py"), *common(data, one), "trainer.batch_size=4"],
                              cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Half the batch per process: the same 4 examples make each optimiser step.
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(free_port()), str(REPO / "run.py"), *common(data, two), "trainer.batch_size=2"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=400)
    assert double.returncode == 0, double.stderr[-3000:]
    _, single_stderr = single.communicate(timeout=400)
    assert single.returncode == 0, single_stderr

    expected, record = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert record["num_processes"] == 2 and expected["num_processes"] == 1
    assert record["steps"] == expected["steps"] == 6  # 24 rows, 4 per optimiser step
    assert [e["num_examples"] for e in record["evaluations"]] == [EVAL_ROWS, EVAL_ROWS]  # gathered without duplicates
    for got, want in zip(record["evaluations"], expected["evaluations"], strict=True):
        assert got["step"] == want["step"] and got["accuracy"] == pytest.approx(want["accuracy"])
    for got, want in zip(record["train_losses"], expected["train_losses"], strict=True):
        assert got["step"] == want["step"] and got["loss"] == pytest.approx(want["loss"], rel=1e-5)

    assert sorted(os.listdir(workdir)) == []
    assert sorted(p.name for p in two.iterdir()) == [".hydra", ".lock", "checkpoints", "config.yaml", "results.json",
                                                     "run.log", "weights"]  # .lock: the main process held the directory
    log = (two / "run.log").read_text()
    assert log.count("lopa on tiny-llama") == 1  # one process's lines only
    # Both processes' RNG states are in the checkpoint (written by the main process), so a resume is exact on each.
    import torch

    assert len(torch.load(two / "checkpoints" / "step-000006" / "rng.pt", weights_only=False)) == 2
    assert double.stdout.count("best accuracy=") == 1  # the summary line comes from the main process only


def test_accelerate_launch_cpu_gets_the_processes_it_asks_for(tmp_path):
    """`accelerate launch --cpu --num_processes 2` alone starts one process here; run.py relaunches it under torchrun."""
    data = write_glue_fixture(tmp_path / "data", "rte", train_rows=8, eval_rows=5)
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--main_process_port",
         str(free_port()), str(REPO / "run.py"), "model=tiny-llama", "method=prompt_tuning", f"data_dir={data}",
         "logger=none", "device=cpu", "trainer.max_steps=1", "trainer.batch_size=2", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=400,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "running `torchrun --nproc_per_node 2` instead" in out.stderr
    record = json.loads((run_dir / "results.json").read_text())
    assert record["num_processes"] == 2 and record["evaluations"][-1]["num_examples"] == 5


@pytest.mark.parametrize("launcher_args, processes", [
    (["accelerate", "launch", "--cpu", "--num_processes", "2", "run.py"], 2),
    (["accelerate", "launch", "--num_processes=3", "--cpu", "run.py"], 3),
    (["accelerate", "launch", "--cpu", "run.py"], None),  # one process asked for
    (["accelerate", "launch", "--cpu", "--num_processes", "2", "--num_machines", "2", "run.py"], None),
    (["accelerate", "launch", "--cpu", "--num_processes", "2", "--mpirun_hostfile", "hosts", "run.py"], None),
])
def test_torchrun_relaunch_reads_the_launcher_command(launcher_args, processes):
    from lopa.cli import torchrun_relaunch

    env = {"ACCELERATE_USE_CPU": "True", "MASTER_PORT": "29555"}
    command = torchrun_relaunch(["run.py", "method=lopa"], env, launcher_args)
    if processes is None:
        assert command is None
    else:
        assert command[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        assert command[-2:] == ["run.py", "method=lopa"] and "29555" in command
    assert torchrun_relaunch(["run.py"], {**env, "WORLD_SIZE": "2"}, launcher_args) is None  # already several


# Two processes, each with its own accumulation window of micro-batches holding unequal numbers of target tokens.
# Prints (rank 0) the largest difference between the DDP gradient and that of the mean token loss over all four
# micro-batches computed in one process, and what each rank drew from torch's RNG after the per-rank seeding.
WINDOWS_AND_SEEDS = """
import copy, json, sys
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from lopa.trainer import accumulate_gradients, seed_processes

class Toy(torch.nn.Module):  # TunedModel's interface: logits and targets at the positions that have a target
    def __init__(self):
        super().__init__()
        self.embed, self.out = torch.nn.Embedding(11, 5), torch.nn.Linear(5, 11)
    def forward(self, batch):
        scored = batch["target_ids"] != -100
        return self.out(self.embed(batch["input_ids"]))[scored], batch["target_ids"][scored]

def micro_batch(seed, targets):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (2, 4), generator=generator)
    target_ids = torch.full((2, 4), -100)
    target_ids.view(-1)[:targets] = torch.randint(0, 11, (targets,), generator=generator)
    return {"input_ids": ids, "target_ids": target_ids}

WINDOWS = [[micro_batch(0, 1), micro_batch(1, 7)], [micro_batch(2, 5), micro_batch(3, 2)]]  # one per rank
torch.manual_seed(0)
model = Toy()
reference = copy.deepcopy(model)
accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
ddp = accelerator.prepare(model)
accumulate_gradients(ddp, WINDOWS[accelerator.process_index], accelerator)
batches = [batch for window in WINDOWS for batch in window]
logits, targets = zip(*(reference(batch) for batch in batches))
F.cross_entropy(torch.cat(logits), torch.cat(targets)).backward()
difference = max((a.grad - b.grad).abs().max().item() for a, b in zip(model.parameters(), reference.parameters()))

def draws():
    seed_processes(7)
    return {"rand": torch.rand(3).tolist(), "dropout": F.dropout(torch.ones(12), 0.5).tolist()}

first, again = draws(), draws()  # seeding anew repeats the stream: what a relaunch would draw
per_rank = gather_object([{"draws": first, "repeated": again == first}])
if accelerator.is_main_process:
    print("RESULT " + json.dumps({"difference": difference, "ranks": per_rank}))
accelerator.end_training()  # destroy the process group: left to exit, gloo's threads can abort a rank (SIGABRT)
"""


def test_token_loss_is_averaged_over_both_processes_and_each_rank_draws_its_own_stream(tmp_path):
    script = tmp_path / "windows_and_seeds.py"
    script.write_text(WINDOWS_AND_SEEDS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["difference"] < 1e-6  # the gradient of the mean over all 15 target tokens, not of per-batch means
    ranks = result["ranks"]
    assert len(ranks) == 2 and ranks[0]["draws"] != ranks[1]["draws"]  # other dropout masks on each rank
    assert all(rank["repeated"] for rank in ranks)  # and the same seed repeats each rank's stream exactly
