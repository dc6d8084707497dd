"""Prompts, reference answers and check programs for the code tasks (CruxEval-I/O, MBPP, HumanEval).

A check program is a complete Python program that runs to its end iff the answer is correct; it is
executed only through lopa.sandbox. All functions here are pure: rows in, strings out.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Sequence
from typing import NamedTuple

from lopa.errors import check_choice

CODE_TASKS = ("cruxeval_i", "cruxeval_o", "mbpp", "humaneval")
CRUXEVAL_MODES = ("input", "output")
CRUXEVAL_STOPS = ("[/ANSWER]",)
# Where a HumanEval-style completion of one function body ends.
HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
MBPP_SPLIT_SCHEMES = ("paper", "standard")
INDENT = "    "


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop sequence."""
    if any(not stop for stop in stops):
        raise ValueError(f"stop sequences must be non-empty, got {list(stops)!r}")
    cut = min((index for stop in stops if (index := text.find(stop)) != -1), default=len(text))
    return text[:cut]


# --- CruxEval -----------------------------------------------------------------------------------------
# The direct (non-CoT) prompts of the CRUXEval paper: an instruction, two worked examples, then the task.

_CRUXEVAL_OUTPUT_INSTRUCTION = (
    "You are given a Python function and an assertion containing an input to the function. Complete the "
    "assertion with a literal (no unsimplified expressions, no function calls) containing the output when "
    "executing the provided code on the given input, even if the function is incorrect or incomplete. Do NOT "
    "output any extra information. Provide the full assertion with the correct output in [ANSWER] and "
    "[/ANSWER] tags, following the examples."
)
_CRUXEVAL_OUTPUT_EXAMPLES = (
    ("def f(n):\n    return n", "17", "17"),
    ('def f(s):\n    return s + "a"', '"x9j"', '"x9ja"'),
)
_CRUXEVAL_INPUT_INSTRUCTION = (
    "You will be given a function f and an output in the form f(??) == output. Find any input such that "
    "executing f on the input leads to the given output. There may be multiple answers, but you should only "
    "output one. In [ANSWER] and [/ANSWER] tags, complete the assertion with one such input that will produce "
    "the output when executing the function."
)
_CRUXEVAL_INPUT_EXAMPLES = (
    (
        "def f(my_list):\n    count = 0\n    for i in my_list:\n        if len(i) % 2 == 0:\n"
        "            count += 1\n    return count",
        '["mq", "px", "zy"]',
        "3",
    ),
    ("def f(s1, s2):\n    return s1 + s2", '"ba", "nana"', '"banana"'),
)


def _cruxeval_block(code: str, question: str, answer: str | None) -> str:
    block = f"[PYTHON]\n{code}\n{question}\n[/PYTHON]\n[ANSWER]\n"
    return block + (f"{answer}\n[/ANSWER]\n" if answer is not None else "")


def cruxeval_prompt(row: dict, mode: str) -> str:
    """The direct CRUXEval prompt for row; mode "output" asks for f(input), "input" for an input."""
    check_choice("CruxEval mode", mode, CRUXEVAL_MODES)
    if mode == "output":
        instruction, examples = _CRUXEVAL_OUTPUT_INSTRUCTION, _CRUXEVAL_OUTPUT_EXAMPLES
        question = f"assert f({row['input']}) == ??"
    else:
        instruction, examples = _CRUXEVAL_INPUT_INSTRUCTION, _CRUXEVAL_INPUT_EXAMPLES
        question = f"assert f(??) == {row['output']}"
    shots = []
    for code, example_input, example_output in examples:
        asked = (
            f"assert f({example_input}) == ??" if mode == "output" else f"assert f(??) == {example_output}"
        )
        shots.append(_cruxeval_block(code, asked, f"assert f({example_input}) == {example_output}"))
    return "\n".join([instruction + "\n", *shots, _cruxeval_block(row["code"], question, None)])


def cruxeval_reference_answer(row: dict, mode: str) -> str:
    """What the model should generate after the prompt, up to the [/ANSWER] stop (the same in both modes)."""
    check_choice("CruxEval mode", mode, CRUXEVAL_MODES)
    return f"assert f({row['input']}) == {row['output']}\n"


def _is_call_to_f(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "f"


def extract_cruxeval_prediction(answer_text: str, mode: str) -> str:
    """The predicted expression in a generated answer: the call `f(...)` (input) or the output value."""
    check_choice("CruxEval mode", mode, CRUXEVAL_MODES)
    text = truncate_at_stops(answer_text, CRUXEVAL_STOPS).strip()
    lines = text.split("\n")
    # The longest prefix that parses: models sometimes ramble on after the assertion.
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        try:
            statements = ast.parse(candidate).body
        except SyntaxError:
            continue
        for statement in statements:  # `assert f(x) == y`, or the comparison without the assert
            test = statement.test if isinstance(statement, ast.Assert) else getattr(statement, "value", None)
            if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
                side = test.left if mode == "input" else test.comparators[0]
                return ast.get_source_segment(candidate, side) or ast.unparse(side)
        if len(statements) == 1 and isinstance(statements[0], ast.Expr):  # a bare value or call
            return ast.get_source_segment(candidate, statements[0].value) or ast.unparse(statements[0].value)
    # Nothing parses: the official CRUXEval string heuristics; the check program then fails to compile.
    if mode == "input":
        head = text.split("==")[0]
        return (head.split("assert", 1)[1] if "assert" in head else head).strip()
    return text.split("==", 1)[1].strip() if "==" in text else text


def _mentions_f(expression: str) -> bool:
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return False
    return any(isinstance(node, ast.Name) and node.id == "f" for node in ast.walk(tree))


def cruxeval_check_program(row: dict, mode: str, answer_text: str) -> str:
    """A program that runs to its end iff the generated answer is correct for row."""
    prediction = extract_cruxeval_prediction(answer_text, mode)
    if mode == "input":
        try:
            is_call = _is_call_to_f(ast.parse(prediction, mode="eval").body)
        except SyntaxError:
            is_call = True  # let the program fail on the syntax error itself, with its message
        if not is_call:
            return (
                f"{row['code']}\n\nraise AssertionError({f'answer is not a call f(...): {prediction}'!r})\n"
            )
        # eval() of the quoted text: the answer can only ever be one expression, never extra statements.
        return f"{row['code']}\n\nassert eval({prediction!r}) == {row['output']}\n"
    if _mentions_f(prediction):  # copying the call instead of predicting its value
        return f"{row['code']}\n\nraise AssertionError({f'answer calls f: {prediction}'!r})\n"
    # Evaluated in an empty namespace so the prediction cannot reach f or the program's globals.
    return f"{row['code']}\n\nassert eval({prediction!r}, {{}}) == f({row['input']})\n"


def cruxeval_split(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """The paper's split: the first 400 problems train, the rest (the last 400 of 800) test."""
    return {"train": list(rows[:400]), "test": list(rows[400:])}


# --- MBPP, in HumanEval style (as MBXP) ---------------------------------------------------------------


class _MbppParts(NamedTuple):
    context: str  # imports and the reference's other top-level code (helpers, classes, constants)
    header: str  # decorators and the def line of the function the tests call
    body: str  # that function's body, indented by INDENT
    tail: str  # top-level statements after the function that must stay after it (rare)


def _multiline_string_lines(source: str) -> tuple[set[int], set[int]]:
    """1-based lines inside multi-line string tokens: (continuation lines, opening lines)."""
    inside, opening = set(), set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING and token.end[0] > token.start[0]:
            opening.add(token.start[0])
            inside.update(range(token.start[0] + 1, token.end[0] + 1))
    return inside, opening


def _normalise_layout(source: str, tabsize: int) -> str:
    """Leading tabs expanded and trailing blanks dropped, except where that would change a string."""
    inside, opening = _multiline_string_lines(source)
    lines = []
    for number, line in enumerate(source.split("\n"), start=1):
        if number in inside:
            lines.append(line)
            continue
        stripped = line.lstrip(" \t")
        indent = line[: len(line) - len(stripped)].expandtabs(tabsize)
        lines.append(indent + (stripped if number in opening else stripped.rstrip()))
    return "\n".join(lines)


def _same_code(first: str, second: str) -> bool:
    try:
        return ast.dump(ast.parse(first)) == ast.dump(ast.parse(second))
    except SyntaxError:
        return False


def _mbpp_source(row: dict) -> str:
    """The reference code with LF line ends and space indentation (4 per tab where that is equivalent)."""
    source = row["code"].replace("\r\n", "\n").replace("\r", "\n")
    for tabsize in (4, 8):
        normalised = _normalise_layout(source, tabsize)
        if _same_code(normalised, source):
            return normalised
    return source


def _called_names(tests: Sequence[str]) -> set[str]:
    names = set()
    for test in tests:
        for node in ast.walk(ast.parse(test.strip())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names.add(node.func.id)
    return names


def _mbpp_target(module: ast.Module, row: dict) -> int:
    """Index in module.body of the function the tests call."""
    called = _called_names(row["test_list"])
    functions = [
        i
        for i, node in enumerate(module.body)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in called
    ]
    if not functions:
        raise ValueError(
            f"MBPP task {row['task_id']}: no top-level function of the code is called by its tests"
        )
    return functions[-1]


def _statement_lines(node: ast.stmt) -> tuple[int, int]:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)]), node.end_lineno


def _reindent_body(lines: list[str], function: ast.FunctionDef, source: str) -> str:
    """The function body re-indented so its statements start at INDENT."""
    inside, _ = _multiline_string_lines(source)
    first = function.body[0]
    start_line = lines[first.lineno - 1].encode()  # col_offset counts UTF-8 bytes
    prefix = start_line[: first.col_offset].decode()
    if prefix.strip():  # `def f(x): return x`: the body shares the def line
        body = [INDENT + start_line[first.col_offset :].decode()]
        rest, base = range(first.lineno + 1, function.end_lineno + 1), 0
    else:
        body, rest, base = [], range(first.lineno, function.end_lineno + 1), len(prefix)
    for number in rest:
        line = lines[number - 1]
        if number in inside:
            body.append(line)
        elif not line.strip():
            body.append("")
        elif base and not line[:base].strip():
            body.append(INDENT + line[base:])
        else:  # continuation or comment lines indented less than the body: their indent carries no meaning
            body.append(INDENT + line.lstrip())
    return "\n".join(body) + "\n"


def _statements_text(lines: list[str], nodes: list[ast.stmt]) -> str:
    """The source lines of top-level statements, once each even where several share a line."""
    blocks: list[tuple[int, int, bool]] = []  # first line, last line, whether it is a def or class
    for node in nodes:
        start, end = _statement_lines(node)
        compound = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        if blocks and blocks[-1][1] >= start:
            blocks[-1] = (blocks[-1][0], max(end, blocks[-1][1]), blocks[-1][2] or compound)
        else:
            blocks.append((start, end, compound))
    text = ""
    for i, (start, end, compound) in enumerate(blocks):
        if i:  # two blank lines around definitions, as PEP 8 lays out a module
            text += "\n\n\n" if compound or blocks[i - 1][2] else "\n"
        text += "\n".join(lines[start - 1 : end])
    return text


def _mbpp_parts(row: dict) -> _MbppParts:
    source = _mbpp_source(row)
    module = ast.parse(source)
    target_index = _mbpp_target(module, row)
    function = module.body[target_index]
    lines = source.split("\n")
    # Everything but the target goes before it, in order; only statements after it that are not
    # definitions (they might use it) stay after it.
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
    context_nodes = [
        n
        for i, n in enumerate(module.body)
        if i < target_index or (i > target_index and isinstance(n, definitions))
    ]
    tail_nodes = [n for i, n in enumerate(module.body) if i > target_index and not isinstance(n, definitions)]

    decorators = [f"@{ast.unparse(decorator)}" for decorator in function.decorator_list]
    returns = f" -> {ast.unparse(function.returns)}" if function.returns else ""
    keyword = "async def" if isinstance(function, ast.AsyncFunctionDef) else "def"
    header = "\n".join([*decorators, f"{keyword} {function.name}({ast.unparse(function.args)}){returns}:"])
    parts = _MbppParts(
        context=_statements_text(lines, context_nodes),
        header=header,
        body=_reindent_body(lines, function, source),
        tail=_statements_text(lines, tail_nodes),
    )
    expected = ast.dump(ast.Module(body=[*context_nodes, function, *tail_nodes], type_ignores=[]))
    if not _rebuilds(parts, expected):
        # A layout we could not carry over textually: the unparsed body is the same code in a new layout.
        body = "\n".join(INDENT + line if line else line for line in ast.unparse(function.body).split("\n"))
        parts = parts._replace(body=body + "\n")
        if not _rebuilds(parts, expected):
            raise ValueError(f"MBPP task {row['task_id']}: could not rebuild its reference code")
    return parts


def _assemble(parts: _MbppParts, docstring: str) -> str:
    context = parts.context.strip("\n")
    return (context + "\n\n\n" if context.strip() else "") + parts.header + "\n" + docstring


def _rebuilds(parts: _MbppParts, expected_dump: str) -> bool:
    """Whether prompt (without docstring) + body + tail parses to the expected statements."""
    rebuilt = _assemble(parts, "") + parts.body + ("\n" + parts.tail if parts.tail.strip() else "")
    try:
        return ast.dump(ast.parse(rebuilt)) == expected_dump
    except SyntaxError:
        return False


def _doctest_lines(test: str) -> list[str]:
    """An assert as a doctest example: `>>> call` then the expected value (or True)."""
    source = test.strip()
    try:
        statement = ast.parse(source).body[0]
    except (SyntaxError, IndexError):
        return [source]
    if not isinstance(statement, ast.Assert):
        return [f">>> {source}"]

    def text(node: ast.AST) -> str:
        segment = ast.get_source_segment(source, node)
        return segment if segment and "\n" not in segment else ast.unparse(node)

    check = statement.test
    if isinstance(check, ast.Compare) and len(check.ops) == 1 and isinstance(check.ops[0], ast.Eq):
        return [f">>> {text(check.left)}", text(check.comparators[0])]
    return [f">>> {text(check)}", "True"]


def _mbpp_docstring(row: dict) -> str:
    lines = [line.rstrip() for line in row["text"].strip().splitlines()]
    for test in row["test_list"]:
        lines.extend(_doctest_lines(test.replace("\r\n", "\n")))
    content = "\n".join(INDENT + line if line else "" for line in lines)
    quote = "'''" if '"""' in content else '"""'
    if quote in content:  # both quote styles in the text: escape instead of using a raw string
        content, prefix = content.replace("\\", "\\\\").replace('"""', '\\"""'), ""
        quote = '"""'
    else:
        prefix = "r" if "\\" in content else ""  # the examples are shown exactly as written
    return f"{INDENT}{prefix}{quote}\n{content}\n{INDENT}{quote}\n"


def mbpp_prompt(row: dict) -> str:
    """HumanEval-style prompt: the reference's imports and helpers, the signature, a docstring with examples."""
    return _assemble(_mbpp_parts(row), _mbpp_docstring(row))


def mbpp_reference_completion(row: dict) -> str:
    """The reference body that completes mbpp_prompt(row) into a working program."""
    parts = _mbpp_parts(row)
    return parts.body + ("\n\n" + parts.tail.strip("\n") + "\n" if parts.tail.strip() else "")


def mbpp_check_program(row: dict, completion: str) -> str:
    """prompt + completion, then the task's setup code and its asserts."""
    setup = row.get("test_setup_code", "").replace("\r\n", "\n").strip()
    tests = "\n".join(test.replace("\r\n", "\n").strip() for test in row["test_list"])
    program = mbpp_prompt(row) + completion.rstrip() + "\n\n\n"
    return program + (setup + "\n\n" if setup else "") + tests + "\n"


def mbpp_split(rows: Sequence[dict], scheme: str) -> dict[str, list[dict]]:
    """MBPP splits by task id: "paper" (1-487 train, 488-974 test) or "standard" (the HF mbpp splits)."""
    check_choice("MBPP split scheme", scheme, MBPP_SPLIT_SCHEMES)
    ranges = {
        "paper": {"train": (1, 487), "test": (488, 974)},
        "standard": {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)},
    }[scheme]
    splits: dict[str, list[dict]] = {name: [] for name in ranges}
    for row in rows:
        name = next((n for n, (low, high) in ranges.items() if low <= row["task_id"] <= high), None)
        if name is None:
            raise ValueError(f"MBPP task_id {row['task_id']!r} is outside 1-974")
        splits[name].append(row)
    return splits


# --- HumanEval ----------------------------------------------------------------------------------------


def humaneval_prompt(row: dict) -> str:
    """The HumanEval prompt as published: imports, signature and docstring."""
    return row["prompt"]


def humaneval_reference_completion(row: dict) -> str:
    """The canonical solution, which completes the prompt."""
    return row["canonical_solution"]


def humaneval_check_program(row: dict, completion: str) -> str:
    """prompt + completion + the task's check function, called on the entry point."""
    return f"{row['prompt']}{completion}\n\n{row['test']}\n\ncheck({row['entry_point']})\n"


# --- All tasks ----------------------------------------------------------------------------------------


def reference_check_programs(task: str, rows: Sequence[dict]) -> list[str]:
    """Check programs of every row's reference answer for task (one of CODE_TASKS); all should pass."""
    check_choice("code task", task, CODE_TASKS)
    if task in ("cruxeval_i", "cruxeval_o"):
        mode = "input" if task == "cruxeval_i" else "output"
        return [cruxeval_check_program(row, mode, cruxeval_reference_answer(row, mode)) for row in rows]
    if task == "mbpp":
        return [mbpp_check_program(row, mbpp_reference_completion(row)) for row in rows]
    return [humaneval_check_program(row, humaneval_reference_completion(row)) for row in rows]
