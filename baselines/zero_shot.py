"""Zero-shot: the frozen FM as it is, nothing trains (evaluate with mode=evaluate)."""

from lopa.registry import register_method
from lopa.soft_prompt import Method


@register_method("zero_shot")
class ZeroShot(Method):
    """The base Method already freezes the FM and adds no prompt."""

    trains = False
