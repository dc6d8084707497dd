"""Low-rank prompt: RLP's factorisation (Hao et al. 2023) applied to LM soft prompts, as DPT (Xiao et al. 2023) does.

P = P0 + Dropout(A)·B with A ∈ R^{m×r}, B ∈ R^{r×d} and an optional frozen P0 (vocabulary or text embeddings).
A and B start uniform(−0.5, 0.5), as the rank-r SVD of an initial prompt, or with A = 0 (the prompt starts at P0).
`merge()` folds everything into one plain [m, d] prompt for inference, with identical outputs; in eval mode the
prompt is computed once and reused until training resumes, so evaluation costs what a plain prompt's does. Parameters m·r + r·d (8,680 on T5-base with m=100, r=10).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from lopa.errors import check_choice
from lopa.method_config import positive_int
from lopa.prompt_init import initial_prompt
from lopa.registry import register_method
from lopa.schema import FACTOR_INITS, PROMPT_INITS
from lopa.soft_prompt import Method, MethodContext


class LowRankFactors(nn.Module):
    """Dropout(A)·B, an [m, d] matrix of rank r: m·r + r·d parameters, both factors uniform(−0.5, 0.5)."""

    def __init__(self, prompt_length: int, embed_dim: int, rank: int, dropout: float = 0.0):
        super().__init__()
        self.A = nn.Parameter(torch.empty(prompt_length, rank).uniform_(-0.5, 0.5))
        self.B = nn.Parameter(torch.empty(rank, embed_dim).uniform_(-0.5, 0.5))
        self.dropout = nn.Dropout(dropout)

    @torch.no_grad()
    def init_from_svd(self, prompt: Tensor) -> None:
        """A = U_r √S_r, B = √S_r V_rᵀ: the best rank-r approximation of `prompt` [m, d]."""
        rank = self.A.shape[1]
        u, s, vh = torch.linalg.svd(prompt.float(), full_matrices=False)
        root = s[:rank].sqrt()
        self.A.copy_(u[:, :rank] * root)
        self.B.copy_(root[:, None] * vh[:rank])

    def forward(self) -> Tensor:
        return self.dropout(self.A) @ self.B


class MergeablePrompt(Method):
    """A static prompt computed from trainable factors; `merge()` stores the result as a plain [m, d] parameter."""

    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        self.merged_prompt: nn.Parameter | None = None
        self._eval_prompt: Tensor | None = None  # the merged table while in eval mode (dropped by train())

    def prompt_matrix(self) -> Tensor:
        """The [m, d] prompt before merging."""
        raise NotImplementedError

    def reparameterisation_names(self) -> list[str]:
        """Attributes (modules, buffers) that only the unmerged prompt needs."""
        raise NotImplementedError

    @property
    def num_virtual_tokens(self) -> int:
        return self.cfg.prompt_length

    def train(self, mode: bool = True):
        self._eval_prompt = None
        return super().train(mode)

    def prompt(self, batch: dict) -> Tensor:
        if self.merged_prompt is not None:
            table = self.merged_prompt
        elif self.training:
            table = self.prompt_matrix()
        else:  # evaluation: merged once, as merge() would, then reused for every batch
            if self._eval_prompt is None:
                with torch.no_grad():
                    self._eval_prompt = self.prompt_matrix().detach()
            table = self._eval_prompt
        return table.expand(batch["input_ids"].shape[0], -1, -1)

    @torch.no_grad()
    def merged_table(self) -> Tensor:
        """The plain [m, d] table the prompt computes in eval mode (dropout off): what merge() stores."""
        if self.merged_prompt is not None:
            return self.merged_prompt.detach()
        was_training = self.training
        self.eval()
        table = self.prompt_matrix().detach().clone()
        self.train(was_training)
        return table

    @torch.no_grad()
    def merge(self) -> None:
        """Replace the reparameterised prompt by the plain [m, d] table it computes in eval mode (dropout off)."""
        if self.merged_prompt is not None:
            return
        table = self.merged_table()
        for name in self.reparameterisation_names():
            delattr(self, name)
        self.merged_prompt = nn.Parameter(table)

    def saved_buffer_names(self) -> list[str]:
        return [name for name, _ in self.named_buffers(recurse=False)]


@register_method("lowrank_prompt")
class LowRankPrompt(MergeablePrompt):
    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        prompt_length = positive_int(cfg, "prompt_length")
        rank = positive_int(cfg, "rank", maximum=min(prompt_length, ctx.embed_dim))
        check_choice("method.init", cfg.init, FACTOR_INITS)
        self.factors = LowRankFactors(prompt_length, ctx.embed_dim, rank, cfg.dropout)
        if cfg.init == "zero":  # A = 0: P starts exactly at P0; A trains through B from the first step, B once A moves
            with torch.no_grad():
                self.factors.A.zero_()
        if cfg.init == "svd":
            check_choice("method.svd_source", cfg.svd_source, PROMPT_INITS)
            self.factors.init_from_svd(initial_prompt(cfg.svd_source, prompt_length, ctx, cfg.get("init_text")))
        if cfg.frozen_init is not None:
            check_choice("method.frozen_init", cfg.frozen_init, PROMPT_INITS)
            self.register_buffer("frozen_prompt", initial_prompt(cfg.frozen_init, prompt_length, ctx, cfg.get("init_text")))
        else:
            self.frozen_prompt = None

    def prompt_matrix(self) -> Tensor:
        low_rank = self.factors()
        return low_rank if self.frozen_prompt is None else self.frozen_prompt + low_rank

    def reparameterisation_names(self) -> list[str]:
        return ["factors", "frozen_prompt"]
