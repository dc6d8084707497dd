"""Bad input: exactly one `error:` line on stderr naming the bad value, no traceback, a non-zero exit, and nothing
half-written in the run directory (at most a results.json marked failed).

Starting Python with torch and transformers costs seconds, so the cases run in one driver process
(`python -m tests.test_errors`) that imports everything once and forks a child per case; each child runs run.py
exactly as the command line does, with its own stdout and stderr. One case also runs as a plain subprocess, which
shows that nothing printed at import time reaches stderr either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, write_glue_fixture

BASE = ["model=tiny-llama", "encoder=tiny-bert", "method=prompt_tuning", "logger=none",
        "device=cpu", "trainer.max_steps=2", "trainer.batch_size=4", "eval.batch_size=8"]


def custom_code_model(directory: Path) -> Path:
    """A local checkpoint whose config maps to custom modelling code, so loading it needs trust_remote_code."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({
        "model_type": "lopa-test-custom",
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomModel"},
    }))
    (directory / "configuration_custom.py").write_text(
        "from transformers import PretrainedConfig\n\nclass CustomConfig(PretrainedConfig):\n"
        "    model_type = 'lopa-test-custom'\n")
    return directory


def prompt_weights(directory: Path, prompt_length: int, truncate: bool = False) -> Path:
    """A weights directory for BASE's prompt tuning on tiny-llama (d=32) with a prompt of `prompt_length` rows, its
    safetensors file optionally cut short (a copy that did not finish)."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    path = directory / "trained.safetensors"
    save_file({"method.prompt_table": torch.zeros(prompt_length, 32)}, path)
    if truncate:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return directory


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def make_cases(root: Path) -> dict[str, tuple[list[str], list[str], str]]:
    """name -> (overrides, what stderr's line must contain, modules to make unimportable)."""
    data = write_glue_fixture(root / "data", "rte", train_rows=8, eval_rows=4)
    no_eval = write_glue_fixture(root / "no_eval", "rte", train_rows=8, eval_rows=4)
    (no_eval / "rte" / "validation.jsonl").unlink()
    broken = write_glue_fixture(root / "broken", "rte", train_rows=8, eval_rows=4)
    lines = (broken / "rte" / "train.jsonl").read_text().splitlines()
    write_lines(broken / "rte" / "train.jsonl", lines[:2] + ['{"sentence1": "A cat", "label": 0'] + lines[3:])
    bad_label = write_glue_fixture(root / "bad_label", "rte", train_rows=8, eval_rows=4)
    rows = [json.loads(line) for line in (bad_label / "rte" / "train.jsonl").read_text().splitlines()]
    rows[5]["label"] = 7
    write_lines(bad_label / "rte" / "train.jsonl", [json.dumps(row) for row in rows])
    empty = write_glue_fixture(root / "empty", "rte", train_rows=8, eval_rows=4)
    (empty / "rte" / "validation.jsonl").write_text("\n")
    no_field = write_glue_fixture(root / "no_field", "rte", train_rows=8, eval_rows=4)
    rows = [json.loads(line) for line in (no_field / "rte" / "train.jsonl").read_text().splitlines()]
    del rows[2]["sentence2"]
    write_lines(no_field / "rte" / "train.jsonl", [json.dumps(row) for row in rows])
    custom = custom_code_model(root / "custom_model")
    corrupt = prompt_weights(root / "corrupt_weights", 10, truncate=True)
    other_shape = prompt_weights(root / "other_shape_weights", 3)
    d = f"data_dir={data}"
    cases = {
        "unknown method": (["method=lopaa"], "unknown method 'lopaa' (known: ", []),
        "unknown task": (["task=glue/rtee"], "unknown task 'glue/rtee' (known: ", []),
        "unknown model": (["model=gpt5"], "unknown model 'gpt5' (known: ", []),
        "unknown config key": ([d, "method=lopa", "method.rnak=2"], "unknown config key 'method.rnak' (method has name, prompt_length, rank,", []),
        "training what cannot train": ([d, "method=zero_shot", "mode=train"], "method=zero_shot has nothing to train: run it with mode=evaluate", []),
        "prompt length 0": ([d, "method.prompt_length=0"], "method.prompt_length", []),
        "lopa prompt length negative": ([d, "method=lopa", "method.prompt_length=-2"], "method.prompt_length=-2", []),
        "rank 0": ([d, "method=lopa", "method.rank=0"], "method.rank=0", []),
        "lora rank 0": ([d, "method=lora", "method.r=0"], "method.r", []),
        "data_dir missing": ([f"data_dir={root / 'nowhere'}"], "does not exist", []),
        "split file missing": ([f"data_dir={no_eval}"], "no file for split 'validation'", []),
        "malformed json": ([f"data_dir={broken}"], f"malformed JSON in {broken / 'rte' / 'train.jsonl'} line 3", []),
        "label without label word": ([f"data_dir={bad_label}"], "label 7 of row 5 has no label word", []),
        "mlm template without mask": ([d, "model=tiny-roberta", "task.template='{sentence1} ? , {sentence2}'"],
                                      "must contain <mask>", []),
        "empty split": ([f"data_dir={empty}"], f"split 'validation' is empty: {empty / 'rte' / 'validation.jsonl'} holds no rows", []),
        "lopa without encoder": ([d, "method=lopa", "encoder=null"], "method 'lopa' needs an instance encoder", []),
        "idpg without encoder": ([d, "method=idpg", "encoder=null"], "method 'idpg' needs an instance encoder", []),
        "max length below the prompt": ([d, "method.prompt_length=4", "task.max_length=12"],
                                        "task.max_length=12 is too small for a 4-token prompt", []),
        "checkpoint missing": ([d, f"checkpoint={root / 'no_weights'}"], "does not exist", []),
        "evaluate corrupt weights": ([d, "mode=evaluate", f"checkpoint={corrupt}"],
                                     "trained.safetensors is not a readable safetensors file", []),
        "evaluate weights of another shape": ([d, "mode=evaluate", f"checkpoint={other_shape}"],
                                              "saved vs expected shapes: method.prompt_table (3, 32) vs (10, 32)", []),
        "evaluate a missing checkpoint": ([d, "mode=evaluate", f"checkpoint={root / 'no_weights'}"], "does not exist", []),
        "resume from a missing checkpoint": ([d, f"trainer.resume={root / 'no_ckpt'}"], "not a checkpoint directory", []),
        "resume=true without a checkpoint": ([d, "trainer.resume=true"], "trainer.resume=true but", []),
        "wandb not installed": ([d, "logger=wandb"], "logger=wandb needs the wandb package", ["wandb"]),
        "gpu requested": ([d, "device=cuda"], "device='cuda' requested but no GPU is available", []),
        "trust_remote_code needed": ([d, f"model.pretrained={custom}", "model.architecture=null"],
                                     "allow it with model.trust_remote_code=true", []),
        "input longer than dept's fixed padding": ([d, "method=dept", "method.update_length=4", "method.rank=2"],
                                                   "tokens but the position-wise update has s=4 rows", []),
        # lopa/schema.py refuses bad values before anything loads: the list is test_bad_values_fail_fast below
        "lopa rank above the prompt length": ([d, "method=lopa", "method.prompt_length=4", "method.rank=9"],
                                              "method.rank=9 is not allowed (allowed: an integer in [1, method.prompt_length=4])", []),
        "row lacks a declared field": ([f"data_dir={no_field}"], "task 'rte': row 2 of split 'train' lacks field(s) sentence2", []),
        "float seed": ([d, "seed=1.5"], "seed=1.5 is not allowed (allowed: an integer)", []),
    }
    return cases


def run_cases(cases: dict, root: Path) -> dict:
    spec = root / "cases.json"
    spec.write_text(json.dumps({"root": str(root), "cases": {name: [args, block] for name, (args, _, block) in cases.items()}}))
    subprocess.run([sys.executable, "-m", "tests.test_errors", str(spec)], cwd=REPO, check=True, timeout=600,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    return json.loads((root / "outcomes.json").read_text())


def leftovers(run_dir: Path) -> list[str]:
    """Files in a failed run's directory other than Hydra's own, the resolved config, the log, the failed record and
    the lock file the run held the directory with."""
    allowed = {".hydra", "config.yaml", "run.log", "results.json", ".lock"}
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.relative_to(run_dir).parts[0] not in allowed)


def test_every_bad_input_gives_one_line_and_a_failed_record(tmp_path):
    cases = make_cases(tmp_path)
    outcomes = run_cases(cases, tmp_path)
    problems = []
    for name, (_, expected, _) in cases.items():
        outcome = outcomes[name]
        lines = outcome["stderr"].splitlines()
        run_dir = Path(outcome["run_dir"])
        if outcome["code"] != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or expected not in lines[0]:
            problems.append(f"{name}: exit {outcome['code']}, stderr {outcome['stderr']!r}")
            continue
        if name.startswith("unknown"):  # refused before Hydra starts: no run directory at all
            if run_dir.exists():
                problems.append(f"{name}: made {run_dir}")
            continue
        record = json.loads((run_dir / "results.json").read_text())
        if record["status"] != "failed" or expected not in record["error"] or leftovers(run_dir):
            problems.append(f"{name}: record {record['status']} {record['error']!r}, leftovers {leftovers(run_dir)}")
    assert not problems, "\n".join(problems)


def test_bad_input_from_a_fresh_interpreter_is_one_line(tmp_path):
    data = write_glue_fixture(tmp_path / "data", "rte", train_rows=8, eval_rows=4)
    out = subprocess.run([sys.executable, "run.py", *BASE, f"data_dir={data}", "method=lopa", "method.rank=0",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    assert out.stderr == "error: method.rank=0 is not allowed (allowed: an integer in [1, method.prompt_length=10])\n"


def _drive(spec_path: str) -> None:
    """Driver: import once, then fork one child per case that runs run.py with that case's arguments."""
    import runpy
    import traceback

    import lopa.runner  # noqa: F401  (the heavy imports, shared by every child)
    from lopa.registry import known_methods

    known_methods()
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"])
    outcomes = {}
    for number, (name, (args, block)) in enumerate(spec["cases"].items()):
        run_dir = root / "runs" / str(number)
        out, err = root / f"{number}.out", root / f"{number}.err"
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
                os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
                for module in block:
                    sys.modules[module] = None  # `import wandb` now raises ImportError, as if not installed
                sys.argv = ["run.py", *BASE, *args, f"hydra.run.dir={run_dir}"]
                try:
                    runpy.run_path(str(REPO / "run.py"), run_name="__main__")
                    code = 0
                except SystemExit as error:
                    code = error.code if isinstance(error.code, int) else int(error.code is not None)
                except BaseException:
                    traceback.print_exc()  # what the interpreter would print for an uncaught exception
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        outcomes[name] = {"code": os.waitstatus_to_exitcode(status), "stderr": err.read_text(),
                          "stdout": out.read_text(), "run_dir": str(run_dir)}
    (root / "outcomes.json").write_text(json.dumps(outcomes, indent=1))


if __name__ == "__main__":
    _drive(sys.argv[1])


# The bad inputs: each is refused by lopa/schema.py before torch and transformers load, so a fresh run.py
# fails in about two seconds with exit 2, one `error:` line naming the key, no traceback and only the failed record.
BAD_VALUES = [
    (["trainer.lr=NaN"], "trainer.lr=nan is not allowed (allowed: a finite number >= 0)"),
    (["trainer.lr=-1"], "trainer.lr=-1 is not allowed (allowed: a finite number >= 0)"),
    (["trainer.max_steps=-1"], "trainer.max_steps=-1 is not allowed (allowed: null or an integer >= 1)"),
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed (allowed: an integer >= 1)"),
    (["trainer.grad_accum_steps=0"], "trainer.grad_accum_steps=0 is not allowed (allowed: an integer >= 1)"),
    (["trainer.warmup_ratio=1.5"], "trainer.warmup_ratio=1.5 is not allowed (allowed: a finite number in [0, 1])"),
    (["eval.limit=-3"], "eval.limit=-3 is not allowed (allowed: null or an integer >= 1)"),
    (["trainer.train_limit=-3"], "trainer.train_limit=-3 is not allowed (allowed: null or an integer >= 1)"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 is not allowed (allowed: an integer >= 1)"),
    (["seed=abc"], "seed='abc' is not allowed (allowed: an integer)"),
    (["task=code/mbpp", "model=tiny-codegen", "task.execution.isolation=docker"],
     "task.execution.isolation='docker' is not allowed (allowed: one of bwrap, none)"),
    (["task.causal_template='{sentence1} {premise}'"], "task.causal_template='{sentence1} {premise}' is not allowed "
     "(allowed: a text naming in {braces} only the fields task.text_fields declares: sentence1, sentence2)"),
    (["method=lopa", "method.shared_prompt_lr_scale=0"],
     "method.shared_prompt_lr_scale=0 is not allowed (allowed: a finite number > 0)"),
    (["trainer.scheduler=cosine"],
     "trainer.scheduler='cosine' is not allowed (allowed: one of constant_with_warmup, linear, constant)"),
]


@pytest.fixture(scope="module")
def bad_value_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every BAD_VALUES case as its own fresh `python run.py`, all started at once (each is mostly interpreter and
    Hydra start-up, so on several cores they take about as long as one); keyed by the test id."""
    root = tmp_path_factory.mktemp("bad_values")
    started = {}
    for number, (overrides, _) in enumerate(BAD_VALUES):
        run_dir = root / str(number)
        command = [sys.executable, "-X", "importtime", "run.py", *overrides, "logger=none", f"hydra.run.dir={run_dir}"]
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
        started[" ".join(overrides)] = (process, command, run_dir)
    runs = {}
    for name, (process, command, run_dir) in started.items():
        stdout, stderr = process.communicate(timeout=300)
        runs[name] = (subprocess.CompletedProcess(command, process.returncode, stdout, stderr), run_dir)
    return runs


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_values_fail_fast(bad_value_runs, overrides, message):
    out, run_dir = bad_value_runs[" ".join(overrides)]
    lines = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert (out.returncode, lines) == (2, [f"error: {message}"])
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {"torch", "transformers"} & imported
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed" and message in record["error"] and not leftovers(run_dir)
