"""Determinism, sweeps that survive a failing job, and records that are never half-written."""

from __future__ import annotations

import importlib
import json
import os
import socket
import stat
import subprocess
import sys

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from lopa.records import WEIGHTS_FILE, RunDirInUseError, cpu_info, hold_run_dir, run_dir_holder, write_json
from lopa.runner import run
from tests.conftest import REPO, compose_config, write_glue_fixture

TINY = ["model=tiny-llama", "encoder=tiny-bert", "logger=none", "device=cpu", "trainer.batch_size=4",
        "trainer.log_every=1", "eval.batch_size=8"]


def test_same_seed_and_config_give_identical_records(tmp_path):
    data = write_glue_fixture(tmp_path / "data", "rte", train_rows=12, eval_rows=6)
    cfg = compose_config(*TINY, "method=lopa", "method.prompt_length=4", f"data_dir={data}", "trainer.max_steps=5",
                         "trainer.eval_every=2")
    records = []
    for name in ("first", "second"):
        AcceleratorState._reset_state(reset_partial_state=True)
        torch.manual_seed(len(name))  # whatever the global RNG holds before, the run seeds itself
        run(cfg, tmp_path / name)
        records.append(json.loads((tmp_path / name / "results.json").read_text()))
    first, second = records
    assert first["train_losses"] == second["train_losses"] and len(first["train_losses"]) == 5
    assert first["evaluations"] == second["evaluations"] and [e["step"] for e in first["evaluations"]] == [2, 4, 5]
    assert first["best"] == second["best"]
    weights = [load_file(tmp_path / name / "weights" / WEIGHTS_FILE) for name in ("first", "second")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_failing_job_does_not_stop_the_sweep(tmp_path, monkeypatch):
    """Job 0 (LoPA without an encoder) fails, job 1 still runs; the sweep exits 1 and lists the failure."""
    data = write_glue_fixture(tmp_path / "data", "rte", train_rows=8, eval_rows=4)
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(
        [sys.executable, "run.py", "-m", "method=lopa,prompt_tuning", "encoder=null", *TINY[:1], *TINY[2:],
         f"data_dir={data}", "trainer.max_steps=2", f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1, out.stderr
    failed_dir, completed_dir = sweep_dir / "0_lopa-rte-tiny-llama-s9876", sweep_dir / "1_prompt_tuning-rte-tiny-llama-s9876"
    failed = json.loads((failed_dir / "results.json").read_text())
    completed = json.loads((completed_dir / "results.json").read_text())
    assert failed["status"] == "failed" and "needs an instance encoder" in failed["error"]
    assert completed["status"] == "completed" and completed["steps"] == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: job 0 ({failed_dir}) failed: {failed['error']}",
        f"error: 1 job(s) of the sweep failed (status \"failed\" in their results.json): {failed_dir}",
    ]
    assert "Traceback" not in out.stderr
    assert (failed["method"], failed["model"], failed["config"]["method"]["rank"]) == ("lopa", "tiny-llama", 4)

    # The results collector lists the failed job with its error.
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    collect_results = importlib.import_module("collect_results")
    collect_results.collect([sweep_dir], tmp_path / "tables", figures=False)
    markdown = (tmp_path / "tables" / "adhoc.md").read_text()
    assert "failed: lopa-rte-tiny-llama-s9876" in markdown and failed["error"] in markdown


def test_records_are_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"status": "completed", "steps": 1})

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("crash in the middle of writing")

    with pytest.raises(RuntimeError):
        write_json(path, {"status": "completed", "steps": 2, "bad": Unserialisable()})
    assert json.loads(path.read_text()) == {"status": "completed", "steps": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # readable like any other file, not mkstemp's 0600


def test_a_run_directory_in_use_refuses_a_second_holder_until_the_first_lets_go(tmp_path):
    run_dir = tmp_path / "run"
    assert run_dir_holder(run_dir) is None
    with hold_run_dir(run_dir):
        me = f"pid {os.getpid()} on {socket.gethostname()}"
        assert run_dir_holder(run_dir) == me
        with pytest.raises(RunDirInUseError, match=f"^{run_dir} is in use by {me}; wait for that run to end"):
            with hold_run_dir(run_dir):
                pass
    assert run_dir_holder(run_dir) is None
    with hold_run_dir(run_dir):  # free again, and the lock file that stayed is reused
        assert run_dir_holder(run_dir) == me


def test_a_file_system_without_flock_runs_unguarded_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with hold_run_dir(tmp_path / "run"):
        assert run_dir_holder(tmp_path / "run") is None
    assert "cannot lock" in caplog.text and "No locks available" in caplog.text


def test_a_launch_into_a_live_runs_directory_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    """A relaunched sweep must not run a cell a second time beside the first (their checkpoints would interleave)."""
    data = write_glue_fixture(tmp_path / "data", "rte", train_rows=8, eval_rows=4)
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lopa.records import hold_run_dir\n"
         "with hold_run_dir(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)", str(run_dir)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = subprocess.run(
            [sys.executable, "run.py", "method=prompt_tuning", *TINY, f"data_dir={data}", "trainer.max_steps=2",
             f"hydra.run.dir={run_dir}"],
            cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines()[-1] == (
            f"error: {run_dir} is in use by pid {holder.pid} on {socket.gethostname()}; wait for that run to end, "
            "or use another run directory")
        assert not (run_dir / "results.json").exists()  # no failed record over the live run's directory
        assert not (run_dir / ".hydra").exists() and not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_dir_holder(run_dir) is None  # the OS dropped the dead holder's lock


def test_records_name_the_cpu_and_whether_bf16_is_native(tmp_path):
    """Without bf16 instructions bf16 autocast is emulated and steps are slower: wall times need the CPU beside them."""
    core = "processor\t: {n}\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f{extra}\n\n"
    native = tmp_path / "native"
    native.write_text(core.format(n=0, extra=" avx512_bf16") + core.format(n=1, extra=" avx512_bf16"))
    emulated = tmp_path / "emulated"
    emulated.write_text(core.format(n=0, extra=""))
    assert cpu_info(native) == {"cpu": "Intel(R) Xeon(R) Processor", "cpu_bf16": True}
    assert cpu_info(emulated) == {"cpu": "Intel(R) Xeon(R) Processor", "cpu_bf16": False}
    assert cpu_info(tmp_path / "missing")["cpu_bf16"] is None
