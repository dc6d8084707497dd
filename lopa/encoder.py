"""The instance encoder of instance-dependent prompts (LoPA, IDPG): frozen with a per-example feature cache (default),
or trained with the method (`encoder.trainable=true`, the official LoPA NLU code at HEAD; then nothing is cached)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from lopa.errors import ConfigError, check_choice
from lopa.models import from_pretrained
from lopa.schema import POOLINGS
from lopa.soft_prompt import Method, MethodContext

MASK_PLACEHOLDER = "<mask>"  # how classification tasks mark the label slot in encoder texts (lopa/tasks/classification.py)


def encoder_setting(cfg: DictConfig, key: str, default):
    """An optional encoder key (older configs lack it): its value, or the default that keeps the old behaviour."""
    value = cfg.get(key, default)
    return default if value is None and default is not None else value


class InstanceEncoder(nn.Module):
    """Text -> pooled feature vector [d_enc].

    Frozen (`encoder.trainable=false`, the default): always in eval mode, and features are cached per example key, so
    each example is encoded once and reused across epochs and evaluations (the heads' dropout acts on the cached
    features, so it still applies). Trained (`encoder.trainable=true`): its parameters require grad (the method's
    optimiser group holds them), it follows train/eval mode so its dropout is on in training (`encoder.dropout`
    sets the rate; null keeps the checkpoint's), and the cache is off, because its features change every step.
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
        self.trainable = bool(encoder_setting(cfg, "trainable", False))
        self.include_mask = bool(encoder_setting(cfg, "include_mask", False))
        dropout = cfg.get("dropout")
        if dropout is not None:
            if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
                raise ConfigError(f"encoder.dropout={dropout!r} is not allowed (allowed: null or a number in [0, 1))")
            for module in self.model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = float(dropout)
            for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):  # attention kernels read the config
                if hasattr(self.model.config, key):
                    setattr(self.model.config, key, float(dropout))
        if self.include_mask and self.tokenizer.mask_token is None:
            raise ConfigError(f"encoder.include_mask=true but encoder {cfg.name!r} has no mask token (allowed: false)")
        self.model.requires_grad_(self.trainable)
        self.model.train(False)
        # The one place that decides caching: a trained encoder's features change every step, so they are never cached.
        self.cache_features = cache_features and not self.trainable
        self.feature_cache: dict[str, Tensor] = {}

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def train(self, mode: bool = True) -> InstanceEncoder:
        return super().train(mode and self.trainable)  # frozen: its own dropout must never be active

    def encoder_input(self, text: str) -> str:
        """The text the encoder reads: the template with its mask token (include_mask) or without it."""
        if self.include_mask:
            return " ".join(text.split()).replace(MASK_PLACEHOLDER, self.tokenizer.mask_token)
        return " ".join(text.replace(MASK_PLACEHOLDER, "").split())

    def encode(self, texts: list[str]) -> Tensor:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self._encode(texts)

    def _encode(self, texts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        inputs = self.tokenizer([self.encoder_input(text) for text in texts], padding=True, truncation=True,
                                max_length=self.cfg.max_length, return_tensors="pt")
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
    """Base of methods whose prompt depends on the input: owns the instance encoder and reads its features.

    The encoder is a submodule, so with `encoder.trainable=true` its parameters are in the default optimiser group
    (Method.param_groups) and in the saved weights; frozen, they are in neither.
    """

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
