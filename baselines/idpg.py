"""S-IDPG (Wu et al. 2022): a generator maps frozen instance features to a full [m, d] prompt."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from lopa.encoder import InstanceDependentMethod
from lopa.errors import ConfigError, check_choice
from lopa.method_config import positive_int
from lopa.registry import register_method
from lopa.schema import PHM_INITS
from lopa.soft_prompt import MethodContext

ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU}


class PHMLinear(nn.Module):
    """Parameterised hypercomplex multiplication layer: W = Σ_i A_i ⊗ S_i (n³ + in·out/n + out parameters).

    init="normal": A ~ N(0, 1/n), S ~ N(0, 0.02); init="xavier": every A_i and S_i xavier-uniform (the official
    code's PHM init per issue 17; initialising each slice on its own is our reconstruction).
    """

    def __init__(self, in_features: int, out_features: int, n: int, init: str = "normal"):
        super().__init__()
        check_choice("method.phm_init", init, PHM_INITS)
        if in_features % n or out_features % n:
            raise ConfigError(f"method.phm_n={n} must divide the layer widths {in_features} and {out_features}")
        self.rules = nn.Parameter(torch.empty(n, n, n))
        self.factors = nn.Parameter(torch.empty(n, in_features // n, out_features // n))
        self.bias = nn.Parameter(torch.zeros(out_features))
        if init == "normal":
            nn.init.normal_(self.rules, std=1 / math.sqrt(n))
            nn.init.normal_(self.factors, std=0.02)
        else:
            for rule, factor in zip(self.rules, self.factors):
                nn.init.xavier_uniform_(rule)
                nn.init.xavier_uniform_(factor)

    def weight(self) -> Tensor:
        """[in, out]: the sum of Kronecker products."""
        n, a, b = self.factors.shape
        return torch.einsum("kij,kpq->ipjq", self.rules, self.factors).reshape(n * a, n * b)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight() + self.bias


class IDPGPrompt(nn.Module):
    """Instance features [B, d_enc] -> prompt [B, m, d]; d_enc·h + h + (h+1)·m·d parameters without PHM."""

    def __init__(self, prompt_length: int, embed_dim: int, encoder_dim: int, hidden: int,
                 activation: str = "tanh", dropout: float = 0.1, phm_n: int | None = None, phm_init: str = "normal"):
        super().__init__()
        check_choice("method.activation", activation, ACTIVATIONS)
        self.prompt_length, self.embed_dim = prompt_length, embed_dim

        def linear(in_features: int, out_features: int) -> nn.Module:
            if phm_n:
                return PHMLinear(in_features, out_features, phm_n, phm_init)
            return nn.Linear(in_features, out_features)

        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            linear(encoder_dim, hidden),
            ACTIVATIONS[activation](),
            linear(hidden, prompt_length * embed_dim),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features).view(-1, self.prompt_length, self.embed_dim)


@register_method("idpg")
class IDPG(InstanceDependentMethod):
    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        self.generator = IDPGPrompt(
            positive_int(cfg, "prompt_length"),
            ctx.embed_dim,
            self.instance_encoder.hidden_size,
            hidden=positive_int(cfg, "hidden_size"),
            activation=cfg.activation,
            dropout=cfg.dropout,
            phm_n=positive_int(cfg, "phm_n") if cfg.phm else None,
            phm_init=cfg.get("phm_init", "normal"),
        )

    @property
    def num_virtual_tokens(self) -> int:
        return self.generator.prompt_length
