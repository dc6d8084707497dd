"""User-facing errors: run.py prints them as one line and exits non-zero."""


class ConfigError(ValueError):
    """A bad config value or input; the message names the value and what is allowed."""


def check_choice(what: str, value: object, allowed: list | tuple | set | dict) -> None:
    """Raise a ConfigError unless `value` is one of `allowed`."""
    if value not in allowed:
        known = ", ".join(str(a) for a in sorted(allowed, key=str))
        raise ConfigError(f"unknown {what} {value!r} (known: {known})")
