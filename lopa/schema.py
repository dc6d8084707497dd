"""One table of allowed config values, checked before any model or data is loaded.

Adding a key is one line in RULES. Keys a config lacks (a method without `rank`) are skipped. A rule may depend on
other keys (a bound that is another key's value, a method's own choices, the fields a task declares): those rules
are resolved against the whole config first. The names the code accepts for enumerated keys live here, and the
modules that use them import them, so they are defined once; this module imports only the standard library,
omegaconf and lopa's light modules, so that run.py refuses bad input before torch and transformers load.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from omegaconf import DictConfig, ListConfig, OmegaConf

from lopa.code_prompts import CODE_TASKS, MBPP_SPLIT_SCHEMES
from lopa.errors import ConfigError

# Enumerated values. Where the code maps a name to an implementation (a dict of classes or functions), the dict's keys
# are tested against these tuples (tests/test_schema.py) because torch-importing modules cannot be imported here.
MODES = ("train", "evaluate")
SCHEDULERS = ("constant_with_warmup", "linear", "constant")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LOGGERS = ("wandb", "none")
WANDB_MODES = ("auto", "online", "offline")
MODEL_KINDS = ("causal", "masked", "seq2seq", "clip")  # lopa.fm_kinds registers one FMKind class for each
DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names
POOLINGS = ("cls", "mean", "pooler")
TASK_KINDS = ("classification", "code_generation", "image_classification")  # lopa.tasks.TASK_KINDS maps them to task classes
METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")  # lopa.metrics.METRICS computes them
STAGES = ("all", "generate")  # code tasks: generate and execute, or generate only
ISOLATIONS = ("bwrap", "none")  # lopa/sandbox.py: the OS sandbox, or the explicit opt-out
PROMPT_INITS = ("uniform", "normal", "embedding_scale", "vocab", "label_words", "text")
FACTOR_INITS = ("uniform", "svd", "zero")  # lowrank_prompt's and rlp's A and B (zero: A = 0)
VISION_PROTOCOLS = ("few_shot", "base_to_new")  # CoOp/RLP: all classes, or train on the base half
COMBINES = ("gate", "add", "max", "concat")  # LoPA's Z_S with the instance part
HEAD_BIAS_INITS = ("zero", "default")  # LoPA heads' hidden bias: zeros, or nn.Linear's own init
ACTIVATIONS = ("tanh", "gelu")  # IDPG's generator
PHM_INITS = ("normal", "xavier")
SANDBOX_MIN_MEMORY_MB = 64  # below this the interpreter itself cannot start under RLIMIT_AS
SANDBOX_MIN_OUTPUT_BYTES = 1024


def template_fields(template: str) -> list[str]:
    """The `{field}` names a template fills in (raises ValueError on unbalanced braces)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


class Rule:
    """What one key allows: accepts(value) and a phrase for the message; resolve() binds it to the rest of the config."""

    def resolve(self, cfg: DictConfig) -> Rule:
        return self

    def accepts(self, value: object) -> bool:
        raise NotImplementedError

    def allowed(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Rule):
    """An int (or float, unless `integer`) in [low, high] (`high_open`: [low, high)), or null when `nullable`.

    high_key names another key whose value is the upper bound (a rank at most the prompt length)."""

    integer: bool = True
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    high_key: str | None = None

    def resolve(self, cfg: DictConfig) -> Number:
        if self.high_key is None:
            return self
        bound = OmegaConf.select(cfg, self.high_key, default=None)
        valid = isinstance(bound, int | float) and not isinstance(bound, bool) and math.isfinite(bound)
        return replace(self, high=bound) if valid else replace(self, high_key=None)  # a bad bound is its own error

    def allowed(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            high = f"{self.high:g}" if self.high_key is None else f"{self.high_key}={self.high:g}"
            kind += f" in {'(' if self.low_open else '['}{self.low:g}, {high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            kind += f" {'>' if self.low_open else '>='} {self.low:g}"
        return f"null or {kind}" if self.nullable else kind

    def accepts(self, value: object) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


@dataclass(frozen=True)
class Choice(Rule):
    """One of a fixed set of names (or null when `nullable`)."""

    names: tuple[str, ...]
    nullable: bool = False

    def accepts(self, value: object) -> bool:
        return (value is None and self.nullable) or (isinstance(value, str) and value in self.names)

    def allowed(self) -> str:
        return f"{'null or ' if self.nullable else ''}one of {', '.join(self.names)}"


@dataclass(frozen=True)
class Boolean(Rule):
    def accepts(self, value: object) -> bool:
        return isinstance(value, bool)

    def allowed(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Matches(Rule):
    """A string matching `pattern` as a whole; `description` says in words what that is."""

    pattern: str
    description: str

    def accepts(self, value: object) -> bool:
        return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None

    def allowed(self) -> str:
        return self.description


@dataclass(frozen=True)
class ListOf(Rule):
    """A non-empty list whose every item `item` allows."""

    item: Rule

    def resolve(self, cfg: DictConfig) -> ListOf:
        return replace(self, item=self.item.resolve(cfg))

    def accepts(self, value: object) -> bool:
        return isinstance(value, ListConfig | list) and len(value) > 0 and all(self.item.accepts(v) for v in value)

    def allowed(self) -> str:
        return f"a non-empty list, each item {self.item.allowed()}"


@dataclass(frozen=True)
class KeyOf(Rule):
    """One of the keys of the mapping at `mapping_key` (eval.split: a split the task defines)."""

    mapping_key: str

    def resolve(self, cfg: DictConfig) -> Rule:
        mapping = OmegaConf.select(cfg, self.mapping_key, default=None)
        return Choice(tuple(str(k) for k in mapping)) if isinstance(mapping, Mapping | DictConfig) else ANYTHING

    def accepts(self, value: object) -> bool:
        raise TypeError("KeyOf is resolved against the config first")


@dataclass(frozen=True)
class Template(Rule):
    """A text whose `{field}` names are all among the fields `fields_key` declares (checked without any data)."""

    fields_key: str
    fields: tuple[str, ...] | None = None

    def resolve(self, cfg: DictConfig) -> Template:
        declared = OmegaConf.select(cfg, self.fields_key, default=None)
        return replace(self, fields=tuple(declared) if isinstance(declared, ListConfig | list) else ())

    def accepts(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        try:
            return set(template_fields(value)) <= set(self.fields or ())
        except ValueError:  # unbalanced braces
            return False

    def allowed(self) -> str:
        if not self.fields:
            return f"a template, once {self.fields_key} declares the row fields it may name"
        return f"a text naming in {{braces}} only the fields {self.fields_key} declares: {', '.join(self.fields)}"


@dataclass(frozen=True)
class DependsOn(Rule):
    """The rule for this key depends on another key's value (method.init means something else for lowrank_prompt)."""

    key: str
    rules: dict[str, Rule] = field(default_factory=dict)
    default: Rule | None = None

    def resolve(self, cfg: DictConfig) -> Rule:
        selected = OmegaConf.select(cfg, self.key, default=None)
        chosen = self.rules.get(selected, self.default) if isinstance(selected, str) else self.default
        return chosen.resolve(cfg) if chosen is not None else ANYTHING


@dataclass(frozen=True)
class Anything(Rule):
    def accepts(self, value: object) -> bool:
        return True

    def allowed(self) -> str:
        return "anything"


ANYTHING = Anything()
BOOLEAN = Boolean()
POSITIVE_INT = Number(low=1)
COUNT_OR_NULL = Number(low=1, nullable=True)
RATE = Number(integer=False, low=0)  # 0 only where nothing trains (zero_shot); training at lr 0 is refused by runner.check_config
POSITIVE_NUMBER = Number(integer=False, low=0, low_open=True)
FRACTION = Number(integer=False, low=0, high=1)
DROPOUT = Number(integer=False, low=0, high=1, high_open=True)
NAME = Matches(r"[A-Za-z_][A-Za-z0-9_]*", "a field name")

RULES: dict[str, Rule] = {
    "seed": Number(),
    "mode": Choice(MODES),
    "device": Matches(r"auto|cpu|cuda(:[0-9]+)?", "auto, cpu, cuda or cuda:N"),
    "skip_completed": BOOLEAN,
    "trainer.batch_size": POSITIVE_INT,
    "trainer.grad_accum_steps": POSITIVE_INT,
    "trainer.epochs": POSITIVE_INT,
    "trainer.max_steps": COUNT_OR_NULL,
    "trainer.stop_at_step": COUNT_OR_NULL,
    "trainer.lr": RATE,
    "trainer.weight_decay": Number(integer=False, low=0),
    "trainer.scheduler": Choice(SCHEDULERS),
    "trainer.warmup_ratio": FRACTION,
    "trainer.warmup_steps": Number(low=0, nullable=True),
    "trainer.max_grad_norm": Number(integer=False, low=0, low_open=True, nullable=True),
    "trainer.mixed_precision": Choice(MIXED_PRECISIONS),
    "trainer.gradient_checkpointing": BOOLEAN,
    "trainer.eval_every": COUNT_OR_NULL,
    "trainer.train_limit": COUNT_OR_NULL,
    "trainer.log_every": POSITIVE_INT,
    "trainer.num_workers": Number(low=0),
    "trainer.save_weights": BOOLEAN,
    "trainer.checkpoint_every": COUNT_OR_NULL,
    "trainer.keep_checkpoints": POSITIVE_INT,
    "trainer.allow_schedule_change": BOOLEAN,
    "eval.split": KeyOf("task.splits"),
    "eval.limit": COUNT_OR_NULL,
    "eval.batch_size": POSITIVE_INT,
    "eval.holdout": COUNT_OR_NULL,
    "eval.score_holdout": BOOLEAN,
    "eval.holdout_min_words": COUNT_OR_NULL,
    "eval.save_predictions": BOOLEAN,
    "logger.name": Choice(LOGGERS),
    "logger.mode": Choice(WANDB_MODES),
    "model.kind": Choice(MODEL_KINDS),
    "model.dtype": Choice(DTYPES),
    "model.hidden_size": POSITIVE_INT,
    "model.trust_remote_code": BOOLEAN,
    "method.lr": RATE,
    "method.prompt_lr": RATE,
    "method.update_lr": RATE,
    "method.weight_decay": Number(integer=False, low=0),
    "method.warmup_ratio": FRACTION,
    "method.warmup_steps": Number(low=0, nullable=True),
    "method.scheduler": Choice(SCHEDULERS),
    "method.prompt_length": POSITIVE_INT,
    "method.rank": DependsOn("method.name", {"lopa": Number(low=1, high_key="method.prompt_length")}, POSITIVE_INT),
    "method.r": POSITIVE_INT,
    "method.alpha": POSITIVE_NUMBER,
    "method.hidden_size": POSITIVE_INT,
    "method.bottleneck": POSITIVE_INT,
    "method.dropout": DROPOUT,
    "method.init": DependsOn("method.name", {"lowrank_prompt": Choice(FACTOR_INITS), "rlp": Choice(FACTOR_INITS)},
                             Choice(PROMPT_INITS)),
    "method.svd_source": Choice(PROMPT_INITS),
    "method.frozen_init": Choice(PROMPT_INITS, nullable=True),
    "method.combine": Choice(COMBINES),
    "method.head_bias_init": Choice(HEAD_BIAS_INITS),
    "method.shared_prompt_lr_scale": POSITIVE_NUMBER,
    "method.head_init_std": POSITIVE_NUMBER,
    "method.activation": Choice(ACTIVATIONS),
    "method.phm": BOOLEAN,
    "method.phm_n": POSITIVE_INT,
    "method.phm_init": Choice(PHM_INITS),
    "method.cache_features": BOOLEAN,
    "method.use_scpp": BOOLEAN,
    "method.use_scap": BOOLEAN,
    "method.subspace_dim": POSITIVE_INT,
    "method.codebook_size": POSITIVE_INT,
    "method.scap_subspace_dim": POSITIVE_INT,
    "method.scap_codebook_size": POSITIVE_INT,
    "method.update_length": POSITIVE_INT,
    "method.update_rank": Number(low=0),  # 0: ACCEPT without any added update
    "method.update_alpha": POSITIVE_NUMBER,
    "encoder.pooling": Choice(POOLINGS),
    "encoder.hidden_size": POSITIVE_INT,
    "encoder.max_length": POSITIVE_INT,
    "encoder.dropout": Number(integer=False, low=0, high=1, high_open=True, nullable=True),
    "encoder.normalize": BOOLEAN,
    "encoder.trainable": BOOLEAN,
    "encoder.include_mask": BOOLEAN,
    "encoder.trust_remote_code": BOOLEAN,
    "task.kind": Choice(TASK_KINDS),
    # Image classification (CLIP).
    "task.protocol": Choice(VISION_PROTOCOLS),
    "task.shots": POSITIVE_INT,
    "task.image_size": POSITIVE_INT,
    "task.max_length": POSITIVE_INT,
    "task.min_text_tokens": POSITIVE_INT,
    "task.max_length_includes_prompt": BOOLEAN,
    "task.metrics": DependsOn("task.kind", {"classification": ListOf(Choice(METRICS))}),
    # Classification: the row fields a task's data has, and the templates that may name only those.
    "task.text_fields": DependsOn("task.kind", {"classification": ListOf(NAME)}),
    "task.template": Template("task.text_fields"),
    "task.causal_template": Template("task.text_fields"),
    "task.seq2seq_template": Template("task.text_fields"),
    # Code generation.
    "task.format": Choice(CODE_TASKS),
    "task.split_scheme": DependsOn("task.format", {"mbpp": Choice(MBPP_SPLIT_SCHEMES)}),
    "task.stage": Choice(STAGES),
    "task.max_prompt_length": POSITIVE_INT,
    "task.new_tokens_include_prompt": BOOLEAN,
    "task.generation.max_new_tokens": POSITIVE_INT,
    "task.generation.num_samples": POSITIVE_INT,
    "task.generation.do_sample": BOOLEAN,
    "task.generation.temperature": POSITIVE_NUMBER,
    "task.generation.top_p": Number(integer=False, low=0, high=1, low_open=True),
    "task.pass_at_k": ListOf(Number(low=1, high_key="task.generation.num_samples")),
    "task.execution.timeout_s": POSITIVE_NUMBER,
    "task.execution.memory_mb": Number(low=SANDBOX_MIN_MEMORY_MB),
    "task.execution.max_output_bytes": Number(low=SANDBOX_MIN_OUTPUT_BYTES),
    "task.execution.workers": POSITIVE_INT,
    "task.execution.isolation": Choice(ISOLATIONS),
}

_ABSENT = object()


def missing_keys(node: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ??? (without resolving interpolations that point at them).

    Not `OmegaConf.missing_keys`: it resolves every value, so a ??? that an interpolation points at (method.lr=???
    under trainer.lr: ${method.lr}) raises InterpolationToMissingValueError instead of being named."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    missing = []
    for key in keys:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            missing.append(path)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig) and not OmegaConf.is_interpolation(node, key):
            missing += missing_keys(child, f"{path}.")
    return missing


def validate(cfg: DictConfig, rules: Mapping[str, Rule] = RULES) -> None:
    """Raise one ConfigError naming the required values left as ???, or else the first key whose value its rule
    does not allow."""
    missing = sorted(missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required config values: {', '.join(missing)} (set them on the command line)")
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        rule = rule.resolve(cfg)
        if not rule.accepts(value):
            shown = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
            raise ConfigError(f"{key}={shown!r} is not allowed (allowed: {rule.allowed()})")

