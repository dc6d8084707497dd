"""ACCEPT (Lin et al. 2024): product-quantised prompts (METHODS.md §4).

SCPP, the prepended prompt: d splits into K = d/t subspaces; subspace k has a codebook C^k ∈ R^{r×t} shared by all m
prompt tokens, and token i's k-th sub-vector is Σ_j w_ijk C^k_j with free weights w ∈ R^{m×K×r} (no softmax).
SCAP, the added prompt: a second product-quantised [s, d] matrix (its own t', r') added position-wise to the text
embeddings, replacing DePT's A·B. Switching a part off falls back to DePT's component, as the official code does:
no SCPP = a plain [m, d] prompt table, no SCAP = DePT's low-rank update (α/√r)·A·B of rank `update_rank`
(0 = no update at all). The official T5-base QNLI script runs SCPP (m=60, t=32, r=20: 44,160) with SCAP off and
r=30 (256·30 + 30·768 = 30,720), 74,880 parameters in all.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from baselines.dept import LowRankUpdate, two_rate_groups
from lopa.errors import ConfigError
from lopa.method_config import non_negative_int, positive_int
from lopa.prompt_init import initial_prompt
from lopa.registry import register_method
from lopa.soft_prompt import Method, MethodContext, add_positionwise


class ProductQuantised(nn.Module):
    """A [rows, d] matrix from K = d/t codebooks of r codewords each: rows·K·r + K·r·t parameters.

    Both tensors are kaiming-uniform initialised, the weights with a=√5 and the codebooks with `codebook_a`
    (a=√5 for SCPP, a=0 for SCAP, as in the official code).
    """

    def __init__(self, rows: int, embed_dim: int, subspace_dim: int, codebook_size: int,
                 subspace_key: str = "subspace_dim", codebook_a: float = math.sqrt(5)):
        super().__init__()
        if embed_dim % subspace_dim:
            raise ConfigError(f"method.{subspace_key}={subspace_dim} must divide the FM's embedding width d={embed_dim}")
        subspaces = embed_dim // subspace_dim
        self.weights = nn.Parameter(torch.empty(rows, subspaces, codebook_size))  # w [rows, K, r]
        self.codebooks = nn.Parameter(torch.empty(subspaces, codebook_size, subspace_dim))  # C [K, r, t]
        nn.init.kaiming_uniform_(self.weights, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.codebooks, a=codebook_a)

    def forward(self) -> Tensor:
        rows = self.weights.shape[0]
        return torch.einsum("nkr,krt->nkt", self.weights, self.codebooks).reshape(rows, -1)


@register_method("accept")
class ACCEPT(Method):
    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        prompt_length, embed_dim = positive_int(cfg, "prompt_length"), ctx.embed_dim
        self.scpp = self.prompt_table = self.scap = self.lowrank_update = None
        if cfg.use_scpp:
            self.scpp = ProductQuantised(prompt_length, embed_dim, positive_int(cfg, "subspace_dim"),
                                         positive_int(cfg, "codebook_size"))
        else:
            self.prompt_table = nn.Parameter(initial_prompt(cfg.init, prompt_length, ctx, cfg.get("init_text")))
        update_length = positive_int(cfg, "update_length")
        if cfg.use_scap:
            self.scap = ProductQuantised(update_length, embed_dim, positive_int(cfg, "scap_subspace_dim"),
                                         positive_int(cfg, "scap_codebook_size"), "scap_subspace_dim", codebook_a=0.0)
        elif non_negative_int(cfg, "update_rank"):
            self.lowrank_update = LowRankUpdate(update_length, embed_dim, cfg.update_rank, cfg.update_alpha)
        self.prompt_length = prompt_length

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_length

    def prompt_matrix(self) -> Tensor:
        """The [m, d] prompt shared by every input."""
        return self.scpp() if self.scpp is not None else self.prompt_table

    def prompt(self, batch: dict) -> Tensor:
        return self.prompt_matrix().expand(batch["input_ids"].shape[0], -1, -1)

    def update_input_embeddings(self, embeds: Tensor, attention_mask: Tensor) -> Tensor:
        update = self.scap if self.scap is not None else self.lowrank_update
        return embeds if update is None else add_positionwise(embeds, attention_mask, update())

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        prompt = list(self.scpp.parameters()) if self.scpp is not None else [self.prompt_table]
        update = [p for module in (self.scap, self.lowrank_update) if module is not None for p in module.parameters()]
        return two_rate_groups(prompt, update, lr, self.cfg.update_lr, weight_decay)
