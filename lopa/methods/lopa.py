"""LoPA (Jain et al. 2024): Z = Z_S ∘ σ(u vᵀ), a shared prompt gated by an instance-dependent low-rank matrix."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from lopa.encoder import InstanceDependentMethod
from lopa.errors import check_choice
from lopa.method_config import positive_int
from lopa.prompt_init import initial_prompt
from lopa.registry import register_method
from lopa.schema import COMBINES, HEAD_BIAS_INITS
from lopa.soft_prompt import MethodContext


class TanhHead(nn.Module):
    """x -> W2 tanh(W1 Dropout(x) + b1) + b2, weights N(0, init_std²) (0.02, METHODS.md §2), b2 = 0.

    b1 is zero (`hidden_bias_init="zero"`, METHODS.md) or keeps nn.Linear's U(±1/√in) (`"default"`, the official
    LoPA NLU code, issue 17).
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, dropout: float, hidden_bias_init: str = "zero",
                 init_std: float = 0.02):
        super().__init__()
        check_choice("method.head_bias_init", hidden_bias_init, HEAD_BIAS_INITS)
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(in_features, hidden)
        self.output = nn.Linear(hidden, out_features)
        for layer in (self.hidden, self.output):
            nn.init.normal_(layer.weight, std=init_std)
        nn.init.zeros_(self.output.bias)
        if hidden_bias_init == "zero":
            nn.init.zeros_(self.hidden.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.output(torch.tanh(self.hidden(self.dropout(features))))


class LoPAPrompt(nn.Module):
    """Instance features [B, d_enc] -> prompt [B, m, d] (or [B, 2m, d] for combine=concat).

    Trainable parameters: m·d + 2h(d_enc+1) + r(h+1)(m+d).
    """

    def __init__(self, prompt_length: int, embed_dim: int, encoder_dim: int, hidden: int, rank: int,
                 dropout: float = 0.1, combine: str = "gate", head_bias_init: str = "zero",
                 shared_init: Tensor | None = None, head_init_std: float = 0.02):
        super().__init__()
        check_choice("method.combine", combine, COMBINES)
        self.prompt_length, self.embed_dim, self.rank, self.combine = prompt_length, embed_dim, rank, combine
        # Z_S ~ N(0, 1) (paper, official code) unless another [m, d] start is given (method.init)
        start = torch.randn(prompt_length, embed_dim) if shared_init is None else shared_init
        self.shared_prompt = nn.Parameter(start)
        # At std 0.02 both u and v start near 0 (entries ~ 0.02² √h), so u vᵀ ~ 1e-4 and σ(u vᵀ) ≈ 1/2 for every
        # input: the prompt starts as Z_S / 2, instance-independent (issue 12's heads_init_std_x10 ablation).
        self.u_head = TanhHead(encoder_dim, hidden, prompt_length * rank, dropout, head_bias_init, head_init_std)
        self.v_head = TanhHead(encoder_dim, hidden, embed_dim * rank, dropout, head_bias_init, head_init_std)

    def instance_matrix(self, features: Tensor) -> Tensor:
        """u vᵀ [B, m, d]."""
        u = self.u_head(features).view(-1, self.prompt_length, self.rank)
        v = self.v_head(features).view(-1, self.embed_dim, self.rank)
        return u @ v.transpose(1, 2)

    def forward(self, features: Tensor) -> Tensor:
        instance = self.instance_matrix(features)
        shared = self.shared_prompt.expand_as(instance)
        if self.combine == "gate":
            return shared * torch.sigmoid(instance)
        if self.combine == "add":
            return shared + instance
        if self.combine == "max":
            return torch.maximum(shared, instance)
        return torch.cat([shared, instance], dim=1)


@register_method("lopa")
class LoPA(InstanceDependentMethod):
    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        prompt_length = positive_int(cfg, "prompt_length")
        self.generator = LoPAPrompt(
            prompt_length,
            ctx.embed_dim,
            self.instance_encoder.hidden_size,
            hidden=positive_int(cfg, "hidden_size"),
            rank=positive_int(cfg, "rank", maximum=min(prompt_length, ctx.embed_dim)),
            dropout=cfg.dropout,
            combine=cfg.combine,
            head_bias_init=cfg.get("head_bias_init", "zero"),
            shared_init=initial_prompt(cfg.get("init", "normal"), prompt_length, ctx, cfg.get("init_text")),
            head_init_std=float(cfg.get("head_init_std", 0.02)),
        )

    def shared_prompt(self) -> Tensor:
        return self.generator.shared_prompt

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """One rate for everything (the paper), or Z_S at `shared_prompt_lr_scale` × the heads' rate: with Adam a
        step moves each element by about the rate, small beside N(0, 1)'s entries (issue 12's ablation)."""
        scale = float(self.cfg.get("shared_prompt_lr_scale", 1))
        if scale == 1:
            return super().param_groups(lr, weight_decay)
        heads = [p for p in self.parameters() if p.requires_grad and p is not self.generator.shared_prompt]
        return [{"params": heads, "lr": lr, "weight_decay": weight_decay},  # first: the logged rate is the trainer's
                {"params": [self.generator.shared_prompt], "lr": lr * scale, "weight_decay": weight_decay}]

    @property
    def num_virtual_tokens(self) -> int:
        return self.generator.prompt_length * (2 if self.generator.combine == "concat" else 1)
