"""Checks of method config values that methods share (any method module may import these, none owns them).

Ranges that do not depend on anything else live in lopa/schema.py's RULES (method.* rows), checked once before any
model loads; what is left here are the bounds a method knows only once it is built (rank <= min(m, d)) and the
same checks for methods built directly, without a run's config check.
"""

from __future__ import annotations

from omegaconf import DictConfig

from lopa.errors import ConfigError


def positive_int(cfg: DictConfig, key: str, maximum: int | None = None) -> int:
    """cfg[key] as a positive integer, at most `maximum`, or a one-line ConfigError."""
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or (maximum is not None and value > maximum):
        allowed = f"1..{maximum}" if maximum is not None else "a positive integer"
        raise ConfigError(f"method.{key}={value!r} is not allowed for {cfg.name} (allowed: {allowed})")
    return value


def non_negative_int(cfg: DictConfig, key: str) -> int:
    """cfg[key] as an integer >= 0, or a one-line ConfigError."""
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"method.{key}={value!r} is not allowed for {cfg.name} (allowed: a non-negative integer)")
    return value
