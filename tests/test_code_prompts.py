"""Code-task prompts and check programs: reference answers pass in the sandbox, wrong ones fail."""

from __future__ import annotations

import ast
import gzip
import json
import os
from pathlib import Path

import pytest

from lopa.code_prompts import (
    CODE_TASKS,
    HUMANEVAL_STOPS,
    cruxeval_check_program,
    cruxeval_prompt,
    cruxeval_reference_answer,
    cruxeval_split,
    extract_cruxeval_prediction,
    humaneval_check_program,
    humaneval_prompt,
    humaneval_reference_completion,
    mbpp_check_program,
    mbpp_prompt,
    mbpp_reference_completion,
    mbpp_split,
    reference_check_programs,
    truncate_at_stops,
)
from lopa.sandbox import run_programs

DATA_DIR = Path(os.environ.get("LOPA_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
FULL_CHECK = os.environ.get("LOPA_FULL_REFERENCE_CHECK") == "1"
SAMPLE_SIZE = 40
TASK_FILES = {
    "cruxeval_i": "cruxeval/cruxeval.jsonl",
    "cruxeval_o": "cruxeval/cruxeval.jsonl",
    "mbpp": "mbpp/mbpp.jsonl",
    "humaneval": "humaneval/HumanEval.jsonl.gz",
}
CRUX_ROW = {"code": "def f(a, b):\n    return a * b", "input": "3, 4", "output": "12", "id": "sample_x"}


def load_rows(task: str) -> list[dict]:
    path = DATA_DIR / TASK_FILES[task]
    if not path.exists():
        pytest.skip(f"benchmark data not found at {path} (set LOPA_DATA_DIR to the shared data folder)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def sample(rows: list[dict]) -> list[dict]:
    """Rows spread evenly over the file, or all of them when LOPA_FULL_REFERENCE_CHECK=1."""
    if FULL_CHECK or len(rows) <= SAMPLE_SIZE:
        return rows
    step = len(rows) / SAMPLE_SIZE
    return [rows[int(i * step)] for i in range(SAMPLE_SIZE)]


def passed(programs: list[str]) -> list[bool]:
    return [result.passed for result in run_programs(programs, workers=4)]


def mbpp_row(code: str, tests: list[str], task_id: int = 1000, setup: str = "") -> dict:
    return {
        "task_id": task_id,
        "text": "Do the thing.",
        "code": code,
        "test_list": tests,
        "test_setup_code": setup,
    }


def test_truncate_at_stops_cuts_at_the_earliest_stop():
    completion = "    return x\n\ndef other():\n    pass\n#"
    assert truncate_at_stops(completion, HUMANEVAL_STOPS) == "    return x\n"
    assert truncate_at_stops("assert f(1) == 2\n[/ANSWER]\nmore", ["[/ANSWER]"]) == "assert f(1) == 2\n"
    assert truncate_at_stops("no stop here", ["\ndef "]) == "no stop here"
    with pytest.raises(ValueError, match="non-empty"):
        truncate_at_stops("text", [""])


@pytest.mark.parametrize("function", [cruxeval_prompt, cruxeval_reference_answer])
def test_unknown_cruxeval_mode_is_named(function):
    with pytest.raises(ValueError, match="'inputs'.*input, output"):
        function(CRUX_ROW, "inputs")


def test_cruxeval_prompts_follow_the_direct_format():
    output_prompt = cruxeval_prompt(CRUX_ROW, "output")
    input_prompt = cruxeval_prompt(CRUX_ROW, "input")
    assert output_prompt.endswith(
        "[PYTHON]\ndef f(a, b):\n    return a * b\nassert f(3, 4) == ??\n[/PYTHON]\n[ANSWER]\n"
    )
    assert input_prompt.endswith(
        "[PYTHON]\ndef f(a, b):\n    return a * b\nassert f(??) == 12\n[/PYTHON]\n[ANSWER]\n"
    )
    for prompt in (output_prompt, input_prompt):
        assert prompt.count("\n[/ANSWER]\n") == 2  # the two worked examples
        assert prompt.count("[PYTHON]") == 3
    assert 'assert f("x9j") == "x9ja"\n[/ANSWER]' in output_prompt
    assert 'assert f("ba", "nana") == "banana"\n[/ANSWER]' in input_prompt
    assert cruxeval_reference_answer(CRUX_ROW, "input") == "assert f(3, 4) == 12\n"


@pytest.mark.parametrize(
    ("answer", "mode", "prediction"),
    [
        ("assert f(3, 4) == 12\n[/ANSWER]\n\n[PYTHON]", "output", "12"),
        ("assert f(3, 4) == 12\n[/ANSWER]", "input", "f(3, 4)"),
        ("assert f(3, 4) == 12  # because 3 * 4\nand then some prose", "output", "12"),
        ("assert f('a==b', 1) == 'x == y'\n", "output", "'x == y'"),
        ("assert f('a==b', 1) == 'x == y'\n", "input", "f('a==b', 1)"),
        ("assert f(\n    [1,\n     2]) == [\n  3]\n", "output", "[\n  3]"),
        ("12", "output", "12"),
        ("f(3, 4) == 12", "output", "12"),
        ("f(3, 4)", "input", "f(3, 4)"),
    ],
)
def test_extract_cruxeval_prediction(answer: str, mode: str, prediction: str):
    assert extract_cruxeval_prediction(answer, mode) == prediction


def test_cruxeval_check_programs_score_answers():
    answers = [
        ("output", "assert f(3, 4) == 12\n[/ANSWER]", True),
        ("output", "assert f(3, 4) == 13\n", False),
        ("output", "assert f(3, 4) == f(3, 4)\n", False),  # copying the call is not predicting its value
        ("output", "assert f(3, 4) == globals()['f'](3, 4)\n", False),
        ("output", "assert f(3, 4) == 1) or (True\n", False),  # no code injection around the comparison
        ("input", "assert f(2, 6) == 12\n", True),
        ("input", "assert f(2, 5) == 12\n", False),
        ("input", "assert g(2, 6) == 12\n", False),
        ("input", "assert f(2, 6) or True\n", False),
        ("input", "this is not code", False),
    ]
    programs = [cruxeval_check_program(CRUX_ROW, mode, answer) for mode, answer, _ in answers]
    assert passed(programs) == [expected for _, _, expected in answers]


def test_cruxeval_split_is_first_and_last_400():
    rows = [{"id": f"sample_{i}"} for i in range(800)]
    split = cruxeval_split(rows)
    assert split["train"] == rows[:400] and split["test"] == rows[400:]


def test_mbpp_split_schemes_partition_by_task_id():
    rows = [{"task_id": task_id} for task_id in range(1, 975)]
    paper = mbpp_split(rows, "paper")
    assert [len(paper[name]) for name in ("train", "test")] == [487, 487]
    assert paper["test"][0]["task_id"] == 488
    standard = mbpp_split(rows, "standard")
    assert {name: len(split) for name, split in standard.items()} == {
        "prompt": 10,
        "test": 500,
        "validation": 90,
        "train": 374,
    }
    with pytest.raises(ValueError, match="'hf'.*paper, standard"):
        mbpp_split(rows, "hf")
    with pytest.raises(ValueError, match="975"):
        mbpp_split([{"task_id": 975}], "paper")


def test_mbpp_prompt_is_humaneval_style():
    row = mbpp_row(
        "import math\r\nR = 3\r\ndef area(r): \r\n\treturn round(math.pi * r * r, 2)\r\n",
        ["assert area(1) == 3.14", "assert math.isclose(area(2), 12.57)"],
    )
    prompt, completion = mbpp_prompt(row), mbpp_reference_completion(row)
    assert prompt == (
        "import math\nR = 3\n\n\ndef area(r):\n"
        '    """\n    Do the thing.\n    >>> area(1)\n    3.14\n    >>> math.isclose(area(2), 12.57)\n    True\n    """\n'
    )
    assert completion == "    return round(math.pi * r * r, 2)\n"
    assert "\r" not in prompt + completion and "\t" not in prompt + completion


def test_mbpp_layouts_are_rebuilt_into_working_programs():
    rows = [
        # a helper defined after the function the tests call moves into the prompt
        mbpp_row(
            "def outer(x):\n\treturn helper(x) + 1\ndef helper(x):\n\treturn 2 * x", ["assert outer(2) == 5"]
        ),
        mbpp_row("def one_line(x): return x * 3", ["assert one_line(2) == 6"]),
        mbpp_row(
            "import functools\n@functools.lru_cache(maxsize=None)\ndef fib(n):\n  if n < 2:\n    return n\n"
            "  return fib(n - 1) + fib(n - 2)",
            ["assert fib(30) == 832040"],
        ),
        # multi-line strings keep their tabs and indentation
        mbpp_row('def text():\n\ts = """a\n\tb"""\n\treturn s', ['assert text() == "a\\n\\tb"']),
        mbpp_row(
            "class Node:\n  def __init__(self, v):\n    self.v = v\ndef value(node):\n  return node.v",
            ["assert value(root) == 7"],
            setup="root = Node(7)",
        ),
        mbpp_row('def quote():\n    return "\\\\ and \\"\\"\\""', ['assert quote() == \'\\\\ and """\'']),
    ]
    programs = [mbpp_check_program(row, mbpp_reference_completion(row)) for row in rows]
    for program in programs:
        ast.parse(program)
    assert passed(programs) == [True] * len(rows)
    wrong = [mbpp_check_program(row, "    return None\n") for row in rows]
    assert passed(wrong) == [False] * len(rows)


def test_humaneval_programs_put_the_check_last():
    row = {
        "task_id": "HumanEval/x",
        "prompt": 'def inc(x):\n    """Add one."""\n',
        "canonical_solution": "    return x + 1\n",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n",
        "entry_point": "inc",
    }
    assert humaneval_prompt(row) == row["prompt"]
    program = humaneval_check_program(row, humaneval_reference_completion(row))
    assert program.endswith("check(inc)\n")
    assert passed([program, humaneval_check_program(row, "    return x\n")]) == [True, False]


def test_unknown_code_task_is_named():
    with pytest.raises(ValueError, match="'mbxp'"):
        reference_check_programs("mbxp", [])


@pytest.mark.parametrize("task", CODE_TASKS)
def test_reference_answers_all_pass(task: str):
    rows = sample(load_rows(task))
    results = run_programs(reference_check_programs(task, rows), workers=4)
    failures = [
        (row.get("id", row.get("task_id")), result.status, result.stderr_tail[-300:])
        for row, result in zip(rows, results, strict=True)
        if not result.passed
    ]
    assert failures == []


@pytest.mark.parametrize("task", CODE_TASKS)
def test_wrong_answers_mostly_fail(task: str):
    rows = sample(load_rows(task))
    if task.startswith("cruxeval"):
        mode = "input" if task == "cruxeval_i" else "output"
        wrong = (
            "assert f('__not_an_input__') == 0" if mode == "input" else "assert f(1) == '__not_the_output__'"
        )
        programs = [cruxeval_check_program(row, mode, wrong) for row in rows]
    elif task == "mbpp":
        programs = [mbpp_check_program(row, "    return None\n") for row in rows]
    else:
        programs = [humaneval_check_program(row, "    return None\n") for row in rows]
    assert sum(passed(programs)) <= len(rows) // 10
