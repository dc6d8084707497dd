"""Code generation tasks (CruxEval-I/O, MBPP, HumanEval): train on answer tokens, generate, execute in the sandbox."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from accelerate.utils import broadcast_object_list
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lopa import code_prompts as cp
from lopa.data import load_rows, read_jsonl
from lopa.errors import ConfigError, check_choice
from lopa.progress import progress_bar
from lopa.records import atomic_write
from lopa.sandbox import check_isolation, mean_pass_at_k, run_programs
from lopa.schema import ISOLATIONS, STAGES
from lopa.tasks import TASK_KINDS
from lopa.tasks.base import Task

log = logging.getLogger(__name__)

GENERATIONS_FILE = "generations.jsonl"
EXECUTIONS_FILE = "executions.jsonl"


@dataclass(frozen=True)
class CodeFormat:
    """How one benchmark turns a row into a prompt, a reference answer, a check program and splits."""

    prompt: Callable[[dict], str]
    answer: Callable[[dict], str]  # what training teaches the FM to generate after the prompt
    check_program: Callable[[dict, str], str]  # row, generated text -> program that passes iff correct
    instance_text: Callable[[dict], str]  # the instance-specific text the instance encoder reads
    split: Callable[[list[dict], str], dict[str, list[dict]]]  # rows, scheme -> {split name: rows}
    row_id: str  # field that identifies a problem


def _cruxeval(mode: str) -> CodeFormat:
    question = (lambda row: f"assert f({row['input']}) == ??") if mode == "output" else (lambda row: f"assert f(??) == {row['output']}")
    return CodeFormat(
        prompt=partial(cp.cruxeval_prompt, mode=mode),
        answer=lambda row: cp.cruxeval_reference_answer(row, mode) + cp.CRUXEVAL_STOPS[0],
        check_program=lambda row, text: cp.cruxeval_check_program(row, mode, text),
        instance_text=lambda row: f"{row['code']}\n{question(row)}",
        split=lambda rows, scheme: cp.cruxeval_split(rows),
        row_id="id",
    )


FORMATS = {
    "cruxeval_i": _cruxeval("input"),
    "cruxeval_o": _cruxeval("output"),
    "mbpp": CodeFormat(
        prompt=cp.mbpp_prompt,
        answer=cp.mbpp_reference_completion,
        check_program=cp.mbpp_check_program,
        instance_text=cp.mbpp_prompt,  # the FM's own text (no shared few-shot part to leave out, unlike CruxEval)
        split=cp.mbpp_split,
        row_id="task_id",
    ),
    "humaneval": CodeFormat(
        prompt=cp.humaneval_prompt,
        answer=cp.humaneval_reference_completion,
        check_program=cp.humaneval_check_program,
        instance_text=cp.humaneval_prompt,
        split=lambda rows, scheme: {"test": list(rows)},
        row_id="task_id",
    ),
}


class CodeGenerationTask(Task):
    def __init__(self, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, fm_kind: str, data_dir: str | None):
        super().__init__(cfg, tokenizer, fm_kind, data_dir)
        check_choice("code task format", cfg.format, FORMATS)
        check_choice("eval stage", cfg.stage, STAGES)
        # Before any work: a bad value, or bwrap missing where it will run programs, is one ConfigError line.
        isolation = cfg.execution.get("isolation", "bwrap")
        check_choice("task.execution.isolation", isolation, ISOLATIONS)
        if cfg.stage == "all":
            check_isolation(isolation)
        if fm_kind != "causal":
            raise ConfigError(f"code task {cfg.name!r} needs a causal FM, got a {fm_kind} one")
        self.format = FORMATS[cfg.format]
        self._splits: dict[str, list[dict]] | None = None
        self.rows_by_key: dict[str, dict] = {}  # every encoded example's row, for executing its generations

    @property
    def primary_metric(self) -> str:
        # Generate-only runs have no score yet: they report how many problems they generated for.
        return "num_problems" if self.cfg.stage == "generate" else f"pass@{min(self.cfg.pass_at_k)}"

    def load(self, split_key: str, limit: int | None = None) -> list[dict]:
        """All rows of the benchmark come in one file/Hub split; the task's split scheme divides them."""
        name = self.split_name(split_key)
        if self._splits is None:
            source = self.cfg.source
            if self.data_dir is not None:
                rows = load_rows(source, "all", self.data_dir)
            else:
                rows = [row for split in source.hub_splits for row in load_rows(source, split, None)]
            self._splits = self.format.split(rows, self.cfg.split_scheme)
        if name not in self._splits:
            raise ConfigError(f"task {self.name!r} has no {name!r} rows (it has: {', '.join(self._splits)})")
        rows = self._splits[name]
        if not rows:
            raise ConfigError(f"split {name!r} of task {self.name!r} is empty")
        return rows[:limit] if limit is not None else rows

    def text(self, row: dict) -> str:
        return self.format.instance_text(row)

    def example_key(self, row: dict, split_key: str) -> str:
        return f"{self.name}/{split_key}/{row[self.format.row_id]}"

    def _prompt_ids(self, prompt: str, budget: int) -> list[int]:
        """Prompt ids cut from the left when too long: the end of the prompt is where the answer starts."""
        ids = self.tokenizer(prompt).input_ids
        return ids[-budget:] if len(ids) > budget else ids

    def prompt_example(self, prompt: str, key: str, encoder_text: str) -> dict:
        """An example to generate for: the prompt text as it is (an evaluation row's, or one given by hand)."""
        ids = self._prompt_ids(prompt, min(self.text_budget(), self.cfg.max_prompt_length))
        return {"input_ids": ids, "target_ids": [-100] * len(ids), "example_key": key, "encoder_text": encoder_text}

    def encode(self, row: dict, index: int, split_key: str) -> dict:
        """Training examples: prompt + answer + EOS with targets on the answer and EOS only; eval: the prompt."""
        key = self.example_key(row, split_key)
        self.rows_by_key[key] = row
        if split_key != "train":
            return self.prompt_example(self.format.prompt(row), key, self.text(row))
        budget = self.text_budget()
        answer = self.tokenizer.encode(self.format.answer(row), add_special_tokens=False) + [self.tokenizer.eos_token_id]
        answer = answer[: budget - 1]
        prompt = self._prompt_ids(self.format.prompt(row), budget - len(answer))
        ids = prompt + answer
        # target_ids[t] is what position t predicts: the next token, on the answer (and EOS) only.
        targets = [-100] * (len(prompt) - 1) + answer + [-100]
        return {"input_ids": ids, "target_ids": targets, "example_key": key, "encoder_text": self.text(row)}

    def generate(self, model, loader: DataLoader, accelerator) -> list[dict]:
        """`num_samples` generations per problem, cut at the task's stop sequences, gathered over processes."""
        settings = OmegaConf.to_container(self.cfg.generation, resolve=True)
        stops = settings.pop("stop")
        num_samples = settings.pop("num_samples")
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        max_new_tokens = settings.pop("max_new_tokens") - (unwrapped.num_virtual_tokens if self.cfg.new_tokens_include_prompt else 0)
        records = []
        for batch in progress_bar(loader, desc="generate", accelerator=accelerator, nested=True):
            with accelerator.autocast():  # the run's precision (trainer.mixed_precision), as in training and scoring
                output = unwrapped.generate(
                    batch,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=num_samples,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    stop_strings=list(stops) or None,
                    tokenizer=self.tokenizer,
                    **settings,
                )
            texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
            batch_records = [
                {"example_key": key, "samples": [cp.truncate_at_stops(t, stops) for t in texts[i * num_samples:(i + 1) * num_samples]]}
                for i, key in enumerate(batch["example_keys"])
            ]
            records += accelerator.gather_for_metrics(batch_records, use_gather_object=True)
        return records

    def execute(self, generations: list[dict], rows_by_key: dict[str, dict]) -> tuple[dict, list[dict]]:
        """Run every sample's check program in the sandbox; pass@k over problems and a record per sample."""
        programs, owners = [], []
        for record in generations:
            row = rows_by_key[record["example_key"]]
            for sample in record["samples"]:
                programs.append(self.format.check_program(row, sample))
                owners.append(record["example_key"])
        limits = OmegaConf.to_container(self.cfg.execution, resolve=True)
        results = run_programs(programs, workers=limits.pop("workers"), progress=True, **limits)
        correct = {record["example_key"]: 0 for record in generations}
        executions = []
        for owner, result in zip(owners, results):
            correct[owner] += result.passed
            executions.append({"example_key": owner, "status": result.status, "passed": result.passed,
                               "stderr_tail": result.stderr_tail[-500:]})
        counts = [len(record["samples"]) for record in generations]
        ks = [k for k in self.cfg.pass_at_k if k <= min(counts)]
        return mean_pass_at_k([correct[r["example_key"]] for r in generations], counts, ks), executions

    def evaluate(self, model, loader: DataLoader, accelerator, predictions: bool = False) -> dict:
        """Generate, save the generations, and (stage=all) execute them; metrics are broadcast from the main process.

        Per-example results are always written beside the record (generations, executions): `predictions` adds none."""
        generations = self.generate(model, loader, accelerator)
        metrics: dict = {"num_problems": len(generations)}
        if accelerator.is_main_process:
            if self.output_dir is not None:
                write_jsonl(self.output_dir / GENERATIONS_FILE, generations)
            if self.cfg.stage == "all":
                scores, executions = self.execute(generations, self.rows_by_key)
                metrics.update(scores)
                if self.output_dir is not None:
                    write_jsonl(self.output_dir / EXECUTIONS_FILE, executions)
        return broadcast_object_list([metrics])[0]


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in records)))


def read_generations(path: Path) -> list[dict]:
    return read_jsonl(Path(path))


TASK_KINDS["code_generation"] = CodeGenerationTask
