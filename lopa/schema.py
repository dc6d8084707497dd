"""One table of allowed values for the numeric config keys, checked before any model or data is loaded.

Adding a key is one line in RULES. Keys a config lacks (a method without `rank`) are skipped; choices of names
(methods, schedulers, precision) are checked where those names are looked up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from lopa.errors import ConfigError


@dataclass(frozen=True)
class Number:
    """An int (or float, unless `integer`) in [low, high] (`high_open`: [low, high)), or null when `nullable`."""

    integer: bool = True
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False

    def allowed(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            kind += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
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


POSITIVE_INT = Number(low=1)
COUNT_OR_NULL = Number(low=1, nullable=True)
RATE = Number(integer=False, low=0)  # 0 only where nothing trains (zero_shot); training at lr 0 is refused by runner.check_config

RULES: dict[str, Number] = {
    "seed": Number(),
    "trainer.batch_size": POSITIVE_INT,
    "trainer.grad_accum_steps": POSITIVE_INT,
    "trainer.epochs": POSITIVE_INT,
    "trainer.max_steps": COUNT_OR_NULL,
    "trainer.lr": RATE,
    "trainer.weight_decay": Number(integer=False, low=0),
    "trainer.warmup_ratio": Number(integer=False, low=0, high=1),
    "trainer.warmup_steps": Number(low=0, nullable=True),
    "trainer.max_grad_norm": Number(integer=False, low=0, low_open=True, nullable=True),
    "trainer.eval_every": COUNT_OR_NULL,
    "trainer.train_limit": COUNT_OR_NULL,
    "trainer.log_every": POSITIVE_INT,
    "trainer.num_workers": Number(low=0),
    "trainer.checkpoint_every": COUNT_OR_NULL,
    "trainer.keep_checkpoints": POSITIVE_INT,
    "eval.limit": COUNT_OR_NULL,
    "eval.batch_size": POSITIVE_INT,
    "eval.holdout": COUNT_OR_NULL,
    "method.lr": RATE,
    "method.weight_decay": Number(integer=False, low=0),
    "method.prompt_length": POSITIVE_INT,
    "method.dropout": Number(integer=False, low=0, high=1, high_open=True),
    "encoder.max_length": POSITIVE_INT,
    "encoder.dropout": Number(integer=False, low=0, high=1, high_open=True, nullable=True),
    "task.max_length": POSITIVE_INT,
    # Method sizes that depend on nothing else (bounds that do, like rank <= min(m, d), are checked by the method).
    "method.hidden_size": POSITIVE_INT,
    "method.bottleneck": POSITIVE_INT,
    "method.update_length": POSITIVE_INT,
    "method.subspace_dim": POSITIVE_INT,
    "method.codebook_size": POSITIVE_INT,
    "method.scap_subspace_dim": POSITIVE_INT,
    "method.scap_codebook_size": POSITIVE_INT,
    "method.update_rank": Number(low=0),
    "method.r": POSITIVE_INT,
    "method.prompt_lr": RATE,
    "method.update_lr": RATE,
}


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError naming the first key whose value RULES does not allow."""
    for key, rule in RULES.items():
        value = OmegaConf.select(cfg, key, default="<absent>")
        if value == "<absent>":
            continue
        if not rule.accepts(value):
            raise ConfigError(f"{key}={value!r} is not allowed (allowed: {rule.allowed()})")
