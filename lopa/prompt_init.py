"""Initial values for [m, d] prompt tables (prompt tuning, the frozen part of low-rank prompts)."""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from lopa.errors import ConfigError, check_choice
from lopa.schema import PROMPT_INITS
from lopa.soft_prompt import MethodContext

FREQUENT_VOCAB_SIZE = 5000


def frequent_token_ids(ctx: MethodContext, count: int = FREQUENT_VOCAB_SIZE) -> list[int]:
    """The `count` most frequent non-special tokens of the task's training texts (all ids if there are none)."""
    special = set(ctx.tokenizer.all_special_ids)
    counts: Counter[int] = Counter()
    for text in ctx.init_texts or []:
        counts.update(i for i in ctx.tokenizer.encode(text, add_special_tokens=False) if i not in special)
    if not counts:
        return [i for i in range(min(count, ctx.token_embeddings.num_embeddings)) if i not in special]
    return [token for token, _ in counts.most_common(count)]


def initial_prompt(init: str, prompt_length: int, ctx: MethodContext, init_text: str | None = None) -> Tensor:
    """An [m, d] table initialised as Lester et al. describe (METHODS.md §3)."""
    check_choice("prompt init", init, PROMPT_INITS)
    embeddings = ctx.token_embeddings.weight.detach().float()
    if init == "uniform":
        return torch.empty(prompt_length, ctx.embed_dim).uniform_(-0.5, 0.5)
    if init == "normal":  # N(0, 1): PEFT's RANDOM, DePT's and the official LoPA code's prompt init
        return torch.randn(prompt_length, ctx.embed_dim)
    if init == "embedding_scale":  # N(0, s²), s = the std of the FM's token embeddings: rows as long as a token's
        return torch.randn(prompt_length, ctx.embed_dim) * embeddings.std()
    if init == "text":
        if not init_text:
            raise ConfigError("method.init=text needs method.init_text")
        ids = ctx.tokenizer.encode(init_text, add_special_tokens=False)
        ids = (ids * (prompt_length // len(ids) + 1))[:prompt_length]
        return embeddings[ids].clone()
    vocab = torch.tensor(frequent_token_ids(ctx))
    sampled = vocab[torch.randint(len(vocab), (prompt_length,))]
    if init == "label_words":
        if not ctx.label_word_ids:
            raise ConfigError("method.init=label_words needs a classification task with label words")
        label_ids = torch.tensor(ctx.label_word_ids[:prompt_length])
        sampled[: len(label_ids)] = label_ids
    return embeddings[sampled].clone()
