"""Prompt tuning (Lester et al. 2021): one trainable [m, d] table shared by every input."""

from omegaconf import DictConfig
from torch import Tensor, nn

from lopa.method_config import positive_int
from lopa.prompt_init import initial_prompt
from lopa.registry import register_method
from lopa.soft_prompt import Method, MethodContext


@register_method("prompt_tuning")
class PromptTuning(Method):
    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        prompt_length = positive_int(cfg, "prompt_length")
        self.prompt_table = nn.Parameter(initial_prompt(cfg.init, prompt_length, ctx, cfg.get("init_text")))

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_table.shape[0]

    def shared_prompt(self) -> Tensor:
        return self.prompt_table

    def prompt(self, batch: dict) -> Tensor:
        return self.prompt_table.expand(batch["input_ids"].shape[0], -1, -1)
