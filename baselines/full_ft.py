"""Full fine-tuning: every FM weight trains, no prompt."""

from torch import nn

from lopa.registry import register_method
from lopa.soft_prompt import Method


@register_method("full_ft")
class FullFineTuning(Method):
    def prepare_fm(self, fm: nn.Module) -> None:
        fm.requires_grad_(True)
        self.fm_parameters = list(fm.parameters())  # a plain list: not registered, so not saved twice

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        # The usual practice: no weight decay on biases and normalisation weights.
        decayed = [p for p in self.fm_parameters if p.ndim >= 2]
        undecayed = [p for p in self.fm_parameters if p.ndim < 2]
        return [
            {"params": decayed, "lr": lr, "weight_decay": weight_decay},
            {"params": undecayed, "lr": lr, "weight_decay": 0.0},
        ]
