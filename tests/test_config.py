"""Config composition: every model × task × method composes and resolves; bad choices fail in one line."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lopa.cli import group_options
from lopa.errors import ConfigError
from lopa.registry import known_methods
from lopa.runner import check_config
from tests.conftest import CONFIG_DIR, REPO, compose_config

MODELS = group_options(CONFIG_DIR, "model")
TASKS = group_options(CONFIG_DIR, "task")
METHODS = group_options(CONFIG_DIR, "method")


CLIP_METHODS = ("zero_shot", "coop", "rlp")  # the methods of RLP's tables


@functools.cache
def reads_images(group: str, name: str) -> bool:
    cfg = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")
    return cfg.get("kind") in ("clip", "image_classification")


def combinations() -> list[tuple[str, str, str]]:
    """Every pair of a model, a task and a method that can run together, each pair at least once (all-pairs
    coverage: a config clash is between two groups' values); composing the whole product took four minutes.
    CLIP goes with image tasks and RLP's methods only; coop and rlp are thin configs over prompt_tuning and
    lowrank_prompt, which text models exercise."""
    def runs_with(model: str, task: str) -> bool:
        return reads_images("model", model) == reads_images("task", task)

    def methods_for(task: str) -> list[str]:
        return list(CLIP_METHODS) if reads_images("task", task) else [m for m in METHODS if m not in ("coop", "rlp")]

    combos: set[tuple[str, str, str]] = set()
    for i, (model, task) in enumerate((m, t) for m in MODELS for t in TASKS if runs_with(m, t)):
        methods = methods_for(task)
        combos.add((model, task, methods[i % len(methods)]))
    for task in TASKS:
        models = [m for m in MODELS if runs_with(m, task)]
        for i, method in enumerate(methods_for(task)):
            combos.add((models[i % len(models)], task, method))
    for model in MODELS:
        tasks = [t for t in TASKS if runs_with(model, t)]
        for method in {m for t in tasks for m in methods_for(t)}:
            task = next(t for t in tasks[METHODS.index(method) % len(tasks):] + tasks if method in methods_for(t))
            combos.add((model, task, method))
    return sorted(combos)


def test_combinations_cover_every_pair():
    combos = combinations()
    for a, b in ((0, 1), (1, 2), (0, 2)):
        pairs = {(c[a], c[b]) for c in combos}
        every = {(x[a], x[b]) for x in ((m, t, k) for m in MODELS for t in TASKS for k in METHODS)
                 if reads_images("model", x[0]) == reads_images("task", x[1])
                 and (x[2] in CLIP_METHODS if reads_images("task", x[1]) else x[2] not in ("coop", "rlp"))}
        assert every <= pairs


def test_every_model_task_method_composes_and_resolves():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for model, task, method in combinations():
            cfg = compose(config_name="config", overrides=[f"model={model}", f"task={task}", f"method={method}"])
            resolved = OmegaConf.to_container(cfg, resolve=True)
            assert resolved["model"]["name"] == model
            assert resolved["task"]["name"] == task.split("/")[-1]
            assert resolved["method"]["name"] == method
            check_config(cfg)
    assert {"glue/rte", "glue/sst2", "glue/mnli", "glue/mrpc", "glue/qnli", "glue/qqp"} <= set(TASKS)


def test_every_method_config_has_a_registered_class_and_back():
    assert set(METHODS) == set(known_methods())


def test_paper_models_have_configs():
    paper = {"roberta-large", "codegen-350m", "deepseek-coder-1.3b", "phi-2", "phi-3-mini", "deepseek-coder-7b",
             "llama-3-8b", "t5-base", "smollm2-135m", "tiny-llama", "tiny-codegen", "tiny-roberta"}
    assert paper <= set(MODELS)


def test_missing_required_value_is_reported_by_name():
    cfg = compose_config()
    OmegaConf.update(cfg, "task.name", "???")
    with pytest.raises(ConfigError, match="task.name"):
        check_config(cfg)


def test_a_missing_value_an_interpolation_points_at_is_reported_by_name():
    cfg = compose_config()
    OmegaConf.update(cfg, "method.lr", "???")  # trainer.lr is ${method.lr}: OmegaConf.missing_keys would raise here
    with pytest.raises(ConfigError, match=r"missing required config values: method\.lr \("):
        check_config(cfg)


def test_root_config_keys_each_carry_a_comment():
    for line in (CONFIG_DIR / "config.yaml").read_text().splitlines():
        if line and not line.startswith((" ", "#", "defaults:", "hydra:", "eval:")) and ":" in line:
            assert "#" in line, f"root config key without a comment: {line}"


def test_cfg_job_composes_for_a_hub_model():
    out = subprocess.run([sys.executable, "run.py", "--cfg", "job", "method=prompt_tuning", "task=glue/rte",
                          "model=codegen-350m"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Salesforce/codegen-350M-mono" in out.stdout


@pytest.mark.parametrize("override, known", [("method=lopaa", "prompt_tuning"), ("task=glue/rtee", "glue/rte"),
                                             ("model=gpt5", "smollm2-135m")])
def test_unknown_choice_is_one_line_naming_the_known_ones(override, known):
    out = subprocess.run([sys.executable, "run.py", override], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and known in lines[0] and "Traceback" not in out.stderr


@pytest.mark.parametrize("method, scheduler", [("accept", "linear"), ("prompt_tuning", "constant_with_warmup")])
def test_a_method_config_sets_the_default_schedule(method, scheduler):
    assert compose_config(f"method={method}").trainer.scheduler == scheduler
    assert compose_config(f"method={method}", "trainer.scheduler=constant").trainer.scheduler == "constant"


def test_code_table_warm_up_is_the_papers_except_full_ft():
    assert compose_config("experiment=code_table", "method=lora").trainer.warmup_steps == 500
    full_ft = compose_config("experiment=code_table", "method=full_ft").trainer
    assert full_ft.warmup_steps is None and full_ft.warmup_ratio == 0.1
