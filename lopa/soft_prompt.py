"""The one soft-prompt wrapper: every method plugs into `TunedModel` (METHODS.md §1).

A method may (a) modify the FM in place (LoRA, full fine-tuning) and/or (b) return a prompt tensor
P of shape [B, m, d] per batch (static tables are expanded, instance-dependent methods compute one
per example). The wrapper embeds the ids with the FM's own table, places P right before the text
(pads stay outside, so batched and one-by-one results agree), and returns vocabulary logits only at
the positions that are scored or trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lopa.models import input_embedding_dim, output_head


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
    def embed_dim(self) -> int:
        return input_embedding_dim(self.fm)


class Method(nn.Module):
    """Base class: freezes the FM and adds no prompt. Subclasses override what they change."""

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

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimiser groups; the default is one group of everything that trains."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]

    def saved_buffer_names(self) -> list[str]:
        """Buffers that are part of the trained result (e.g. a frozen initial prompt)."""
        return []


class TunedModel(nn.Module):
    """A frozen (or partly trainable) FM plus a method; the single path for training, scoring and generation."""

    def __init__(self, fm: nn.Module, method: Method, fm_kind: str):
        super().__init__()
        self.fm = fm
        self.method = method
        self.fm_kind = fm_kind
        method.prepare_fm(fm)
        self.head = output_head(fm)

    @property
    def num_virtual_tokens(self) -> int:
        return self.method.num_virtual_tokens

    def _prompted_inputs(self, batch: dict) -> dict:
        """inputs_embeds, attention_mask, target_ids (and position_ids for causal FMs) with the prompt inserted."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        embeds = self.fm.get_input_embeddings()(input_ids)
        target_ids = batch.get("target_ids")
        prompt = self.method.prompt(batch)
        if prompt is not None:
            batch_size, m = prompt.shape[:2]
            embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(batch_size, m), attention_mask], dim=1)
            if target_ids is not None:
                target_ids = torch.cat([target_ids.new_full((batch_size, m), -100), target_ids], dim=1)
            if self.fm_kind == "causal":
                # Move left pads in front of the prompt so the prompt sits next to the text: [pads; P; x].
                order = torch.sort(attention_mask, dim=1, stable=True).indices
                embeds = embeds.gather(1, order.unsqueeze(-1).expand_as(embeds))
                attention_mask = attention_mask.gather(1, order)
                if target_ids is not None:
                    target_ids = target_ids.gather(1, order)
        inputs = {"inputs_embeds": embeds, "attention_mask": attention_mask, "target_ids": target_ids}
        if self.fm_kind == "causal":
            inputs["position_ids"] = (attention_mask.cumsum(1) - 1).clamp(min=0)
        return inputs

    def forward(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Vocabulary logits [N, V] at the N positions that have a target, and those targets [N].

        Positions come in row-major order, so a batch with one target per example gives one row per example.
        `target_ids[b, t]` is the token the logits at position t must predict (the next token for causal FMs,
        the label word at `<mask>` for masked FMs).
        """
        inputs = self._prompted_inputs(batch)
        target_ids = inputs.pop("target_ids")
        hidden = self.fm.base_model(**inputs).last_hidden_state
        scored = target_ids != -100
        return self.head(hidden[scored]).float(), target_ids[scored]

    @torch.no_grad()
    def generate(self, batch: dict, **generation_kwargs) -> Tensor:
        """Batched generation with per-instance prompts; returns only the new tokens [B, T]."""
        inputs = self._prompted_inputs(batch)
        inputs.pop("target_ids")
        inputs.pop("position_ids", None)  # generate() derives them from the attention mask, as we do
        return self.fm.generate(**inputs, **generation_kwargs)
