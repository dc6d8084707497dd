"""lopa/schema.py: the value table accepts every shipped config and names the bad key, value and what is allowed."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from lopa import schema
from lopa.errors import ConfigError
from lopa.schema import RULES, Number, Rule, validate
from tests.conftest import CONFIG_DIR, compose_config

TASKS = sorted(str(p.relative_to(CONFIG_DIR / "task").with_suffix("")) for p in (CONFIG_DIR / "task").rglob("*.yaml"))
GROUPS = ("method", "task", "model", "encoder")


@lru_cache
def composed(groups: tuple[str, ...]) -> DictConfig:
    return compose_config(*groups)


def config_with(overrides: str) -> DictConfig:
    """The config of space-separated command-line `overrides`. Composing costs about a second, so it happens once per
    choice of groups; each value, parsed by Hydra's own override grammar, is then set on a copy."""
    parts = overrides.split(" ")
    groups = tuple(part for part in parts if part.partition("=")[0] in GROUPS)
    cfg = copy.deepcopy(composed(groups))
    for part in parts:
        if part not in groups:
            override = OverridesParser.create().parse_override(part)
            OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False)
    return cfg


@pytest.mark.parametrize("method", ["prompt_tuning", "lopa", "idpg", "lora", "full_ft", "zero_shot", "accept",
                                    "dept", "lowrank_prompt", "residual_prompt"])
def test_every_method_default_passes(method):
    validate(compose_config(f"method={method}"))


@pytest.mark.parametrize("experiment", ["glue_table", "code_table", "offline_repro", "smoke"])
def test_experiment_configs_pass(experiment):
    validate(compose_config(f"experiment={experiment}"))


@pytest.mark.parametrize("task", TASKS)
def test_every_task_passes_and_classification_tasks_declare_their_fields(task):
    cfg = compose_config(f"task={task}")
    validate(cfg)
    if cfg.task.kind == "classification":
        assert cfg.task.text_fields, f"{task} declares no task.text_fields"


@pytest.mark.parametrize("override, message", [
    ("trainer.lr=inf", "trainer.lr=inf is not allowed (allowed: a finite number >= 0)"),
    ("trainer.max_grad_norm=0", "trainer.max_grad_norm=0 is not allowed (allowed: null or a finite number > 0)"),
    ("trainer.batch_size=2.5", "trainer.batch_size=2.5 is not allowed (allowed: an integer >= 1)"),
    ("trainer.batch_size=true", "trainer.batch_size=True is not allowed"),
    ("eval.limit=0", "eval.limit=0 is not allowed (allowed: null or an integer >= 1)"),
    ("method.prompt_length=0", "method.prompt_length=0 is not allowed"),
    ("trainer.warmup_ratio=-0.1", "trainer.warmup_ratio=-0.1 is not allowed (allowed: a finite number in [0, 1])"),
    # choices, booleans, bounds that are other keys, per-method and per-task rules, templates
    ("trainer.mixed_precision=fp8", "trainer.mixed_precision='fp8' is not allowed (allowed: one of no, fp16, bf16)"),
    ("model.dtype=half", "model.dtype='half' is not allowed (allowed: one of float32, bfloat16, float16)"),
    ("model.kind=encoder", "model.kind='encoder' is not allowed (allowed: one of causal, masked, seq2seq, clip)"),
    ("device=gpu", "device='gpu' is not allowed (allowed: auto, cpu, cuda or cuda:N)"),
    ("trainer.save_weights=yes", "trainer.save_weights='yes' is not allowed (allowed: true or false)"),
    ("eval.split=dev", "eval.split='dev' is not allowed (allowed: one of train, eval)"),
    ("task.metrics=[acc]", "task.metrics=['acc'] is not allowed (allowed: a non-empty list, each item one of accuracy,"),
    ("method=lopa method.rank=11", "method.rank=11 is not allowed (allowed: an integer in [1, method.prompt_length=10])"),
    ("method=lopa method.combine=mul", "method.combine='mul' is not allowed (allowed: one of gate, add, max, concat)"),
    ("method=lowrank_prompt method.init=normal", "method.init='normal' is not allowed (allowed: one of uniform, svd, zero)"),
    ("method=prompt_tuning method.init=svd", "method.init='svd' is not allowed (allowed: one of uniform, normal,"),
    ("method=idpg method.activation=relu", "method.activation='relu' is not allowed (allowed: one of tanh, gelu)"),
    ("encoder.pooling=max", "encoder.pooling='max' is not allowed (allowed: one of cls, mean, pooler)"),
    ("task=code/mbpp task.stage=run", "task.stage='run' is not allowed (allowed: one of all, generate)"),
    ("task=code/mbpp task.split_scheme=random", "task.split_scheme='random' is not allowed (allowed: one of paper, standard)"),
    ("task=code/mbpp task.execution.timeout_s=0", "task.execution.timeout_s=0 is not allowed (allowed: a finite number > 0)"),
    ("task=code/mbpp task.execution.memory_mb=32", "task.execution.memory_mb=32 is not allowed (allowed: an integer >= 64)"),
    ("task=code/mbpp task.pass_at_k=[1,5]", "task.pass_at_k=[1, 5] is not allowed (allowed: a non-empty list, each item an "
                                           "integer in [1, task.generation.num_samples=1])"),
    ("task.template='{sentence1}<mask>{hypothesis}'", "task.template='{sentence1}<mask>{hypothesis}' is not allowed "
     "(allowed: a text naming in {braces} only the fields task.text_fields declares: sentence1, sentence2)"),
    ("task.causal_template='{sentence1'", "task.causal_template='{sentence1' is not allowed"),
])
def test_bad_values_name_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as error:
        validate(config_with(override))
    assert str(error.value) == message or str(error.value).startswith(message)


def test_limits_accept_null_and_edges():
    validate(config_with("eval.limit=null trainer.max_steps=1 trainer.warmup_ratio=1 trainer.max_grad_norm=null"))


def test_open_bounds():
    dropout = Number(integer=False, low=0, high=1, high_open=True)
    assert dropout.accepts(0.0) and dropout.accepts(0.99) and not dropout.accepts(1.0)
    assert dropout.allowed() == "a finite number in [0, 1)"
    assert all(isinstance(rule, Rule) for rule in RULES.values())


def test_a_required_value_left_missing_is_named():
    with pytest.raises(ConfigError, match=r"missing required config values: task.name \(set them on the command line\)"):
        validate(compose_config("task.name=???"))


def test_enumerated_names_are_those_the_code_implements():
    """Where the code maps names to classes or functions it keeps its own dict; its keys must be the table's names."""
    from baselines.idpg import ACTIVATIONS
    from lopa.fm_kinds import FM_KINDS, LAZY_FM_KINDS
    from lopa.metrics import METRICS
    from lopa.models import DTYPES
    from lopa.tasks import TASK_KINDS
    from lopa.tasks.code import FORMATS
    from lopa.tasks.vision import ImageClassificationTask  # noqa: F401  (registers its kind, as build_task does)

    assert {*FM_KINDS, *LAZY_FM_KINDS} == set(schema.MODEL_KINDS) and set(DTYPES) == set(schema.DTYPES)
    assert set(TASK_KINDS) == set(schema.TASK_KINDS) and set(FORMATS) == set(schema.CODE_TASKS)
    assert set(METRICS) == set(schema.METRICS) and set(ACTIVATIONS) == set(schema.ACTIVATIONS)


def test_training_at_lr_zero_is_refused():
    from lopa.runner import check_config

    with pytest.raises(ConfigError, match=r"trainer.lr=0 is not allowed when training \(allowed: a finite number > 0\)"):
        check_config(compose_config("trainer.lr=0"))


@pytest.mark.parametrize("method, override, message", [
    ("idpg", "method.hidden_size=0", "method.hidden_size=0 is not allowed (allowed: an integer >= 1)"),
    ("residual_prompt", "method.bottleneck=-1", "method.bottleneck=-1 is not allowed"),
    ("accept", "method.update_rank=-1", "method.update_rank=-1 is not allowed (allowed: an integer >= 0)"),
    ("accept", "method.codebook_size=2.5", "method.codebook_size=2.5 is not allowed"),
    ("lora", "method.r=0", "method.r=0 is not allowed (allowed: an integer >= 1)"),
    ("dept", "method.update_lr=-1e-4", "method.update_lr=-0.0001 is not allowed"),
])
def test_method_sizes_are_refused_before_anything_loads(method, override, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(f"method={method}", override))
    assert str(error.value).startswith(message)


def test_shared_method_checks_live_outside_any_method():
    from omegaconf import OmegaConf

    from lopa.method_config import non_negative_int, positive_int

    cfg = OmegaConf.create({"name": "m", "rank": 5, "update_rank": 0, "flag": True})
    assert positive_int(cfg, "rank", maximum=5) == 5 and non_negative_int(cfg, "update_rank") == 0
    for check, key in ((positive_int, "flag"), (non_negative_int, "flag")):  # a bool is no integer here
        with pytest.raises(ConfigError, match="method.flag=True is not allowed for m"):
            check(cfg, key)
