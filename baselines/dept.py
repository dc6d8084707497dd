"""DePT (Shi & Lipani 2024): a shorter prompt plus a low-rank update added position-wise to the input embeddings.

[P ; E(x) + (α/√r)·A·B] with A ∈ R^{s×r} (kaiming-uniform) and B ∈ R^{r×d} (zeros), so training starts from plain
prompt tuning. Parameters m·d + s·r + r·d, matched to 100·d by default (m=60, r=30, s=256).
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from lopa.method_config import positive_int
from lopa.prompt_init import initial_prompt
from lopa.registry import register_method
from lopa.soft_prompt import Method, MethodContext, add_positionwise


class LowRankUpdate(nn.Module):
    """The [s, d] matrix (α/√r)·A·B added to the first s text embeddings; s·r + r·d parameters."""

    def __init__(self, length: int, embed_dim: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(length, rank))
        self.B = nn.Parameter(torch.zeros(rank, embed_dim))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scaling = alpha / math.sqrt(rank)

    def forward(self) -> Tensor:
        return self.scaling * (self.A @ self.B)


def two_rate_groups(prompt: list[nn.Parameter], update: list[nn.Parameter], lr: float, update_lr: float,
                    weight_decay: float) -> list[dict]:
    """The prompt at the trainer's rate and the position-wise update at its own (DePT's and ACCEPT's two groups)."""
    groups = [{"params": prompt, "lr": lr, "weight_decay": weight_decay},
              {"params": update, "lr": update_lr, "weight_decay": weight_decay}]
    return [group for group in groups if group["params"]]


@register_method("dept")
class DePT(Method):
    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        prompt_length = positive_int(cfg, "prompt_length")
        self.prompt_table = nn.Parameter(initial_prompt(cfg.init, prompt_length, ctx, cfg.get("init_text")))
        self.update = LowRankUpdate(positive_int(cfg, "update_length"), ctx.embed_dim, positive_int(cfg, "rank"), cfg.alpha)

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_table.shape[0]

    def prompt(self, batch: dict) -> Tensor:
        return self.prompt_table.expand(batch["input_ids"].shape[0], -1, -1)

    def update_input_embeddings(self, embeds: Tensor, attention_mask: Tensor) -> Tensor:
        return add_positionwise(embeds, attention_mask, self.update())

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return two_rate_groups([self.prompt_table], list(self.update.parameters()), lr, self.cfg.update_lr, weight_decay)
