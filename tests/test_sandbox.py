"""The sandbox contains hostile programs, never scores them as passed, and pass@k is the unbiased estimator."""

from __future__ import annotations

import math
import socket
import textwrap
import time
from pathlib import Path

import pytest

from lopa.sandbox import (
    STATUSES,
    TAIL_BYTES,
    WALL_CLOCK_FACTOR,
    ExecutionResult,
    mean_pass_at_k,
    pass_at_k,
    run_program,
    run_programs,
)
from tests.helpers import accepted_connection

CORRECT = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
WRONG = "def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n"


def hostile_programs(outside: Path, port: int) -> dict[str, str]:
    """Programs that must each be contained and scored as not passed; `outside` is a directory the test owns."""
    programs = {
        "infinite loop": "while True:\n    pass\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "subprocess bomb": "import subprocess, sys\nwhile True:\n    subprocess.Popen([sys.executable, '-c', 'pass'])\n",
        "multiprocessing": "import multiprocessing\nmultiprocessing.Process(target=print).start()\n",
        "50 GB allocation": "block = bytearray(50 * 2**30)\nassert block\n",
        "write outside": f"open({str(outside / 'created.txt')!r}, 'w').write('x')\n",
        "write outside with os.open": (
            f"import os\nos.close(os.open({str(outside / 'created_os.txt')!r}, os.O_CREAT | os.O_WRONLY))\n"
        ),
        "write outside relative": "open('../../../../../../' + "
        f"{str(outside / 'created_relative.txt').lstrip('/')!r}, 'w').write('x')\n",
        "delete outside": f"import os\nos.remove({str(outside / 'victim.txt')!r})\n",
        "rmtree outside": f"import shutil\nshutil.rmtree({str(outside / 'victim_dir')!r})\n",
        "connect": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
        "connect raw": f"import _socket\n_socket.socket().connect(('127.0.0.1', {port}))\n",
        "os._exit(0) before asserts": "import os\nos._exit(0)\nassert False\n",
        "sys.exit(0) before asserts": "import sys\nsys.exit(0)\nassert False\n",
        "exit() before asserts": "exit()\nassert False\n",
        "100 MB of output": "import sys\nsys.stdout.write('x' * 100_000_000)\n",
        "endless output": "while True:\n    print('y' * 10_000)\n",
        "patched AssertionError": (
            "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\nassert 1 == 2\n"
        ),
        "redefined print": "print = lambda *args, **kwargs: None\nassert 1 == 2\n",
        "overridden __import__": (
            "import builtins, os\nbuiltins.__import__ = lambda *args, **kwargs: os._exit(0)\nassert 1 == 2\n"
        ),
        "guessed sentinel": "print('\\n' + '0' * 32)\nprint('PASSED')\nimport os\nos._exit(0)\n",
        "excepthook swallows": "import sys\nsys.excepthook = lambda *args: None\nassert 1 == 2\n",
        "atexit exit 0": "import atexit, os\natexit.register(lambda: os._exit(0))\nassert 1 == 2\n",
        "trace jump over assert": textwrap.dedent(
            """
            import sys
            def tracer(frame, event, arg):
                if event == "line" and frame.f_lineno == 10:
                    frame.f_lineno = 11
                return tracer
            sys.settrace(tracer)
            sys._getframe().f_trace = tracer
            x = 0
            assert x == 1
            print("jumped over the assert")
            """
        ),
        "read the token pipe": "import os\nfor fd in range(3, 64):\n    try:\n        print(os.read(fd, 64))\n"
        "    except OSError:\n        pass\nos._exit(0)\n",
        "kill parent": "import os\nos.kill(os.getppid(), 9)\n",
        "wrong answer": WRONG,
    }
    return programs


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    yield server
    server.close()


def test_correct_program_passes_and_wrong_one_fails():
    correct, wrong = run_program(CORRECT), run_program(WRONG)
    assert (correct.passed, correct.status, correct.returncode) == (True, "passed", 0)
    assert (wrong.passed, wrong.status) == (False, "failed")
    assert "AssertionError" in wrong.stderr_tail


def test_program_output_is_kept_without_the_token():
    result = run_program("print('hello')\n")
    assert result.passed
    assert result.stdout_tail == "hello\n"


def test_hostile_programs_are_contained_and_never_pass(tmp_path: Path, listener: socket.socket):
    (tmp_path / "victim.txt").write_text("keep me")
    (tmp_path / "victim_dir").mkdir()
    (tmp_path / "victim_dir" / "inside.txt").write_text("keep me too")
    programs = hostile_programs(tmp_path, listener.getsockname()[1])
    names = list(programs)
    start = time.monotonic()
    results = run_programs([*programs.values(), CORRECT], workers=4, timeout_s=2.0)
    elapsed = time.monotonic() - start
    by_name = dict(zip(names, results, strict=False))

    assert results[-1].passed, "the evaluation must go on after hostile programs"
    for name, result in by_name.items():
        assert not result.passed, f"{name!r} was scored as passed"
        assert result.status in STATUSES
    assert by_name["infinite loop"].status == "timeout"
    assert by_name["infinite loop"].duration_s < WALL_CLOCK_FACTOR * 2.0 + 1  # 2 s of CPU, or the wall-clock limit
    assert "MemoryError" in by_name["50 GB allocation"].stderr_tail
    assert by_name["os._exit(0) before asserts"].returncode == 0  # the exit status alone would be fooled
    assert by_name["guessed sentinel"].returncode == 0
    for name in ("100 MB of output", "endless output"):
        assert len(by_name[name].stdout_tail) <= TAIL_BYTES
        assert by_name[name].duration_s < 5
    assert not any(tmp_path.glob("created*")), "a program wrote outside its sandbox"
    assert (tmp_path / "victim.txt").read_text() == "keep me"
    assert (tmp_path / "victim_dir" / "inside.txt").read_text() == "keep me too"
    assert not accepted_connection(listener), "a program reached the network"
    assert elapsed < 30


def test_the_budget_is_cpu_time_and_the_wall_clock_stops_a_program_that_waits():
    """Waiting does not use the CPU budget (a verdict must not depend on the machine's load), up to the wall-clock limit."""
    waits_forever, waits_a_little = run_programs(
        ["import time\ntime.sleep(60)\n", "import time\ntime.sleep(1.3)\nassert True\n"], workers=2, timeout_s=1.0)
    assert (waits_forever.passed, waits_forever.status) == (False, "timeout")
    assert WALL_CLOCK_FACTOR * 1.0 <= waits_forever.duration_s < WALL_CLOCK_FACTOR * 1.0 + 1
    assert waits_a_little.passed, waits_a_little.stderr_tail


def test_files_inside_the_sandbox_are_usable():
    program = textwrap.dedent(
        """
        import os, tempfile
        with open("scratch.txt", "w") as handle:
            handle.write("data")
        with tempfile.TemporaryDirectory() as directory:
            open(os.path.join(directory, "a"), "w").write("1")
        os.remove("scratch.txt")
        assert not os.path.exists("scratch.txt")
        """
    )
    result = run_program(program)
    assert result.passed, result.stderr_tail


def test_each_run_gets_a_fresh_directory():
    first = run_program("open('left_behind.txt', 'w').write('x')\n")
    second = run_program("import os\nassert not os.path.exists('left_behind.txt')\n")
    assert first.passed and second.passed


def test_run_programs_keeps_input_order():
    programs = [f"print({i})\nassert {i} % 3 != 0\n" for i in range(9)]
    results = run_programs(programs, workers=3)
    assert [result.passed for result in results] == [i % 3 != 0 for i in range(9)]
    assert [result.stdout_tail for result in results] == [f"{i}\n" for i in range(9)]
    assert all(isinstance(result, ExecutionResult) for result in results)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"memory_mb": 1}, "memory_mb"),
        ({"max_output_bytes": 10}, "max_output_bytes"),
    ],
)
def test_bad_limits_are_rejected_with_their_value(limits: dict, message: str):
    with pytest.raises(ValueError, match=message):
        run_program(CORRECT, **limits)


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(200, 17, 10) == pytest.approx(1 - math.comb(183, 10) / math.comb(200, 10))
    assert pass_at_k(1, 1, 1) == 1.0


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 8, 5) == 1.0  # n - c < k: every k-subset holds a correct sample
    assert pass_at_k(10, 10, 1) == 1.0
    with pytest.raises(ValueError, match="k=11"):
        pass_at_k(10, 3, 11)
    with pytest.raises(ValueError, match="num_correct=4"):
        pass_at_k(3, 4, 1)


def test_mean_pass_at_k_averages_over_problems():
    scores = mean_pass_at_k([0, 3, 10], 10, ks=(1, 5))
    assert scores["pass@1"] == pytest.approx((0 + 0.3 + 1) / 3)
    assert scores["pass@5"] == pytest.approx((0 + (1 - 21 / 252) + 1) / 3)
    assert mean_pass_at_k([1, 0], [1, 2]) == {"pass@1": 0.5}
    with pytest.raises(ValueError, match="2 sample counts for 3 problems"):
        mean_pass_at_k([1, 0, 1], [1, 2])


def test_isolation_is_validated_and_a_missing_bwrap_is_one_clear_error(monkeypatch):
    import lopa.sandbox as sandbox
    from lopa.errors import ConfigError

    with pytest.raises(ConfigError, match="task.execution.isolation"):
        run_program(CORRECT, isolation="docker")
    monkeypatch.setattr(sandbox, "_bwrap_checked", None)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="task.execution.isolation=none"):
        run_program(CORRECT)
    assert run_program(CORRECT, isolation="none").passed
