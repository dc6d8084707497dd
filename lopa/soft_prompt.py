"""The one soft-prompt wrapper: every method plugs into `TunedModel` (METHODS.md §1).

A method may (a) modify the FM in place (LoRA, full fine-tuning) and/or (b) return a prompt tensor
P of shape [B, m, d] per batch (static tables are expanded, instance-dependent methods compute one
per example) and/or (c) change the text embeddings position-wise (`update_input_embeddings`, DePT's
and ACCEPT's added update). The FM's kind (lopa/fm_kinds.py) embeds the ids with the FM's own table, places P
right before the text (pads stay outside, so batched and one-by-one results agree), and returns logits only
at the positions that are scored or trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lopa.errors import ConfigError
from lopa.fm_kinds import fm_kind_class, text_positions


@dataclass
class MethodContext:
    """What a method may look at when it is built."""

    fm: nn.Module
    tokenizer: PreTrainedTokenizerBase
    model_cfg: DictConfig
    encoder_cfg: DictConfig | None
    label_word_ids: list[int] | None = None  # classification tasks: one token id per class
    init_texts: list[str] | None = None  # a few training texts (text-based prompt inits)

    @property
    def token_embeddings(self) -> nn.Embedding:
        """The FM's token-embedding table (prompt inits read it; a prompt row has its width)."""
        return fm_kind_class(self.model_cfg.kind).token_embeddings(self.fm)

    @property
    def embed_dim(self) -> int:
        return self.token_embeddings.weight.shape[1]


class Method(nn.Module):
    """Base class: freezes the FM and adds no prompt. Subclasses override what they change."""

    trains = True  # False for methods with nothing to train: they only run with mode=evaluate

    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__()
        self.cfg = cfg

    @property
    def num_virtual_tokens(self) -> int:
        """Prompt positions prepended to every input (0 for methods without a prompt)."""
        return 0

    def prepare_fm(self, fm: nn.Module) -> None:
        """Freeze the FM; methods that train FM weights unfreeze or inject them here."""
        fm.requires_grad_(False)

    def prompt(self, batch: dict) -> Tensor | None:
        """Prompt tensor [B, m, d] for this batch, or None."""
        return None

    def shared_prompt(self) -> Tensor | None:
        """The [m, d] table shared by every input, where the method has one (its scale is recorded per run)."""
        return None

    def update_input_embeddings(self, embeds: Tensor, attention_mask: Tensor) -> Tensor:
        """The text embeddings [B, L, d] before the prompt is prepended; pads have attention_mask 0. Default: unchanged."""
        return embeds

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimiser groups; the default is one group of everything that trains."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]

    def saved_buffer_names(self) -> list[str]:
        """Buffers that are part of the trained result (e.g. a frozen initial prompt)."""
        return []

    def prepare_examples(self, examples: list[dict], batch_size: int) -> None:
        """Called once with every encoded example before training and evaluation (default: nothing)."""

    def export(self, fm: nn.Module, directory: Path) -> None:
        """Write the trained weights in another library's format too, beside `save_trained`'s (default: nothing)."""


def add_positionwise(embeds: Tensor, attention_mask: Tensor, update: Tensor) -> Tensor:
    """embeds + update[j] at the j-th text token of each example; pads are left alone.

    This is how we realise "fixed padding to s" (DePT, ACCEPT): padding every input to s and adding the [s, d]
    update to all s columns gives the same outputs, because padded columns are masked out of attention; what
    matters is that text token j always meets row j, which holds here for left- and right-padded batches alike.
    """
    rows = update.shape[0]
    longest = int(attention_mask.sum(1).max()) if attention_mask.numel() else 0
    if longest > rows:
        raise ConfigError(
            f"an input has {longest} tokens but the position-wise update has s={rows} rows "
            f"(raise method.update_length or lower task.max_length)"
        )
    positions = text_positions(attention_mask)
    added = update[positions] * attention_mask.unsqueeze(-1).to(update.dtype)
    return embeds + added.to(embeds.dtype)


class TunedModel(nn.Module):
    """A frozen (or partly trainable) FM plus a method; the single path for training, scoring and generation.

    How the prompt enters the FM, which logits are scored and how text is generated is the FM kind's job
    (lopa/fm_kinds.py); this wrapper owns the parameters: it lets the method prepare the FM and keeps every
    trainable tensor in fp32.
    """

    def __init__(self, fm: nn.Module, method: Method, fm_kind: str):
        super().__init__()
        self.fm = fm
        self.method = method
        self.kind = fm_kind_class(fm_kind)(fm)
        method.prepare_fm(fm)
        # fp32 master weights for everything that trains, whatever the FM's dtype: AdamW updates of ~1e-4 round
        # away in bf16, and the fp16 GradScaler refuses fp16 gradients. Autocast (trainer.mixed_precision) still
        # runs the compute in low precision; PEFT's LoRA layers cast their input to the adapter's dtype.
        for parameter in self.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()

    @property
    def fm_kind(self) -> str:
        return self.kind.name

    @property
    def num_virtual_tokens(self) -> int:
        return self.method.num_virtual_tokens

    def prompted_inputs(self, batch: dict) -> dict:
        """The FM's inputs for this batch with the prompt in place (and the targets aligned to them)."""
        return self.kind.prompted_inputs(self.method, batch)

    def forward(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Logits [N, V] at the N positions that have a target, and those targets [N].

        Positions come in row-major order, so a batch with one target per example gives one row per example.
        `target_ids[b, t]` is the token the logits at position t must predict (the next token for causal FMs,
        the label word at `<mask>` for masked FMs, the t-th decoder token for seq2seq FMs).
        """
        return self.kind.forward(self.method, batch)

    @torch.no_grad()
    def generate(self, batch: dict, **generation_kwargs) -> Tensor:
        """Batched generation with per-instance prompts; returns only the new tokens [B, T]."""
        return self.kind.generate(self.method, batch, **generation_kwargs)
