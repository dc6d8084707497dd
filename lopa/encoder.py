"""The frozen instance encoder of instance-dependent prompts (LoPA, IDPG), with a per-example feature cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from lopa.errors import ConfigError, check_choice
from lopa.models import from_pretrained
from lopa.soft_prompt import Method, MethodContext

POOLINGS = ("cls", "mean", "pooler")


class InstanceEncoder(nn.Module):
    """Text -> pooled feature vector [d_enc]; never trained, always in eval mode.

    Features are cached per example key, since the encoder is frozen: each example is encoded once and reused
    across epochs and evaluations (the heads' dropout acts on the cached features, so it still applies).
    """

    def __init__(self, cfg: DictConfig, cache_features: bool = True):
        super().__init__()
        check_choice("encoder.pooling", cfg.pooling, POOLINGS)
        self.cfg = cfg
        self.tokenizer = from_pretrained(AutoTokenizer, cfg.tokenizer or cfg.pretrained, cfg.trust_remote_code, "encoder")
        if cfg.pretrained is None:
            arch = OmegaConf.to_container(cfg.architecture, resolve=True)
            config = AutoConfig.for_model(arch.pop("model_type"), vocab_size=len(self.tokenizer), **arch)
            self.model = AutoModel.from_config(config)
        else:
            self.model = from_pretrained(AutoModel, cfg.pretrained, cfg.trust_remote_code, "encoder")
        self.model.requires_grad_(False)
        self.model.eval()
        self.cache_features = cache_features
        self.feature_cache: dict[str, Tensor] = {}

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def train(self, mode: bool = True) -> InstanceEncoder:
        return super().train(False)  # frozen: its own dropout must never be active

    @torch.no_grad()
    def encode(self, texts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt")
        outputs = self.model(**inputs.to(device))
        if self.cfg.pooling == "cls":
            features = outputs.last_hidden_state[:, 0]
        elif self.cfg.pooling == "mean":
            mask = inputs["attention_mask"].unsqueeze(-1).to(outputs.last_hidden_state.dtype)
            features = (outputs.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            if getattr(outputs, "pooler_output", None) is None:
                raise ConfigError(f"encoder {self.cfg.name!r} has no pooler output; use encoder.pooling=cls or mean")
            features = outputs.pooler_output
        features = features.float()
        return F.normalize(features, dim=-1) if self.cfg.normalize else features

    def fill_cache(self, texts: list[str], keys: list[str], batch_size: int) -> None:
        """Encode every uncached example in the given order and batches.

        Features then do not depend on which examples share a training batch (padding changes them by ~1e-7),
        so a resumed run, or one with another number of processes, sees exactly the same features.
        """
        if not self.cache_features:
            return
        missing = list({key: text for key, text in zip(keys, texts) if key not in self.feature_cache}.items())
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            for (key, _), feature in zip(chunk, self.encode([text for _, text in chunk])):
                self.feature_cache[key] = feature

    def forward(self, texts: list[str], keys: list[str] | None = None) -> Tensor:
        """Features [B, d_enc] of `texts`; with keys and caching on, each key is encoded only once."""
        if not self.cache_features or keys is None:
            return self.encode(texts)
        missing = {key: text for key, text in zip(keys, texts) if key not in self.feature_cache}
        if missing:
            for key, feature in zip(missing, self.encode(list(missing.values()))):
                self.feature_cache[key] = feature
        return torch.stack([self.feature_cache[key] for key in keys])


def build_instance_encoder(cfg: DictConfig | None, method_name: str, cache_features: bool) -> InstanceEncoder:
    if cfg is None:
        raise ConfigError(f"method {method_name!r} needs an instance encoder (e.g. encoder=minilm-l6), none is configured")
    return InstanceEncoder(cfg, cache_features)


class InstanceDependentMethod(Method):
    """Base of methods whose prompt depends on the input: owns the frozen encoder and reads its features."""

    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        self.instance_encoder = build_instance_encoder(ctx.encoder_cfg, cfg.name, cfg.cache_features)

    generator: nn.Module  # instance features [B, d_enc] -> prompt [B, m, d]; built by the subclass

    def prepare_examples(self, examples: list[dict], batch_size: int) -> None:
        self.instance_encoder.fill_cache([e["encoder_text"] for e in examples], [e["example_key"] for e in examples],
                                         batch_size)

    def instance_features(self, batch: dict) -> Tensor:
        return self.instance_encoder(batch["encoder_texts"], batch.get("example_keys"))

    def prompt(self, batch: dict) -> Tensor:
        return self.generator(self.instance_features(batch))
