"""Residual prompt tuning (Razdaibiedina et al. 2023): P'_i = LN(W_up ReLU(W_down P_i)) + P_i.

One bottleneck MLP shared by all prompt tokens reparameterises the prompt during training; `merge()` folds it into a
plain [m, d] table afterwards (the MLP is dropped, the outputs stay identical).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from baselines.lowrank_prompt import MergeablePrompt
from lopa.method_config import positive_int
from lopa.prompt_init import initial_prompt
from lopa.registry import register_method
from lopa.soft_prompt import MethodContext


class ResidualReparameterisation(nn.Module):
    """P -> LN(W_up Dropout(ReLU(W_down P))) + P per token: 2·d·h + h + 3·d parameters."""

    def __init__(self, embed_dim: int, bottleneck: int, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(embed_dim, bottleneck)
        self.up = nn.Linear(bottleneck, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, prompt: Tensor) -> Tensor:
        return self.norm(self.up(self.dropout(torch.relu(self.down(prompt))))) + prompt


@register_method("residual_prompt")
class ResidualPrompt(MergeablePrompt):
    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        prompt_length = positive_int(cfg, "prompt_length")
        self.prompt_table = nn.Parameter(initial_prompt(cfg.init, prompt_length, ctx, cfg.get("init_text")))
        self.reparameterisation = ResidualReparameterisation(ctx.embed_dim, positive_int(cfg, "bottleneck"), cfg.dropout)

    def prompt_matrix(self) -> Tensor:
        return self.reparameterisation(self.prompt_table)

    def reparameterisation_names(self) -> list[str]:
        return ["prompt_table", "reparameterisation"]
