"""lopa/schema.py: the value table accepts every shipped config and names the bad key, value and range."""

from __future__ import annotations

import pytest

from lopa.errors import ConfigError
from lopa.schema import RULES, Number, validate
from tests.conftest import compose_config


@pytest.mark.parametrize("method", ["prompt_tuning", "lopa", "idpg", "lora", "full_ft", "zero_shot", "accept",
                                    "dept", "lowrank_prompt", "residual_prompt"])
def test_every_method_default_passes(method):
    validate(compose_config(f"method={method}"))


@pytest.mark.parametrize("experiment", ["glue_table", "code_table", "offline_repro", "smoke"])
def test_experiment_configs_pass(experiment):
    validate(compose_config(f"experiment={experiment}"))


@pytest.mark.parametrize("override, message", [
    ("trainer.lr=inf", "trainer.lr=inf is not allowed (allowed: a finite number >= 0)"),
    ("trainer.max_grad_norm=0", "trainer.max_grad_norm=0 is not allowed (allowed: null or a finite number > 0)"),
    ("trainer.batch_size=2.5", "trainer.batch_size=2.5 is not allowed (allowed: an integer >= 1)"),
    ("trainer.batch_size=true", "trainer.batch_size=True is not allowed"),
    ("eval.limit=0", "eval.limit=0 is not allowed (allowed: null or an integer >= 1)"),
    ("method.prompt_length=0", "method.prompt_length=0 is not allowed"),
    ("trainer.warmup_ratio=-0.1", "trainer.warmup_ratio=-0.1 is not allowed (allowed: a finite number in [0, 1])"),
])
def test_bad_values_name_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(override))
    assert str(error.value) == message or str(error.value).startswith(message)


def test_limits_accept_null_and_edges():
    validate(compose_config("eval.limit=null", "trainer.max_steps=1", "trainer.warmup_ratio=1", "trainer.max_grad_norm=null"))


def test_open_bounds():
    dropout = Number(integer=False, low=0, high=1, high_open=True)
    assert dropout.accepts(0.0) and dropout.accepts(0.99) and not dropout.accepts(1.0)
    assert dropout.allowed() == "a finite number in [0, 1)"
    assert all(isinstance(rule, Number) for rule in RULES.values())


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
