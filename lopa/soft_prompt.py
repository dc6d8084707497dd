"""The one soft-prompt wrapper: every method plugs into `TunedModel` (METHODS.md §1).

A method may (a) modify the FM in place (LoRA, full fine-tuning) and/or (b) return a prompt tensor
P of shape [B, m, d] per batch (static tables are expanded, instance-dependent methods compute one
per example) and/or (c) change the text embeddings position-wise (`update_input_embeddings`, DePT's
and ACCEPT's added update). The wrapper embeds the ids with the FM's own table, places P right before
the text (pads stay outside, so batched and one-by-one results agree), and returns vocabulary logits only
at the positions that are scored or trained. Encoder-decoder FMs get the prompt in the encoder only; their
targets are the decoder's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lopa.errors import ConfigError
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


def text_positions(attention_mask: Tensor) -> Tensor:
    """[B, L] index of each column within its example's text (0 for the first real token), whichever side the pads are on."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


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
    """A frozen (or partly trainable) FM plus a method; the single path for training, scoring and generation."""

    def __init__(self, fm: nn.Module, method: Method, fm_kind: str):
        super().__init__()
        self.fm = fm
        self.method = method
        self.fm_kind = fm_kind
        method.prepare_fm(fm)
        # fp32 master weights for everything that trains, whatever the FM's dtype: AdamW updates of ~1e-4 round
        # away in bf16, and the fp16 GradScaler refuses fp16 gradients. Autocast (trainer.mixed_precision) still
        # runs the compute in low precision; PEFT's LoRA layers cast their input to the adapter's dtype.
        for parameter in self.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
        # Encoder-decoder FMs are called whole (encoder, decoder, head); the others through base model + head.
        self.head = None if fm_kind == "seq2seq" else output_head(fm)

    @property
    def num_virtual_tokens(self) -> int:
        return self.method.num_virtual_tokens

    def _prompted_inputs(self, batch: dict) -> dict:
        """inputs_embeds, attention_mask, target_ids (and position_ids for causal FMs) with the prompt inserted.

        For seq2seq FMs the prompt goes to the encoder only and target_ids (the decoder's) pass through unchanged.
        """
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        embeds = self.fm.get_input_embeddings()(input_ids)
        embeds = self.method.update_input_embeddings(embeds, attention_mask)
        target_ids = batch.get("target_ids")
        encoder_only = self.fm_kind == "seq2seq"
        prompt = self.method.prompt(batch)
        if prompt is not None:
            batch_size, m = prompt.shape[:2]
            embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(batch_size, m), attention_mask], dim=1)
            if target_ids is not None and not encoder_only:
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
            inputs["position_ids"] = text_positions(attention_mask)
        return inputs

    def _decoder_input_ids(self, target_ids: Tensor) -> Tensor:
        """Teacher forcing: the decoder targets shifted right behind the decoder start token (-100 -> pad)."""
        start = getattr(self.fm.config, "decoder_start_token_id", None)
        if start is None:
            raise ConfigError(f"the seq2seq FM {type(self.fm).__name__} has no decoder_start_token_id in its config")
        shifted = target_ids.new_full(target_ids.shape, start)
        shifted[:, 1:] = target_ids[:, :-1]
        return shifted.masked_fill(shifted == -100, self.fm.config.pad_token_id)

    def forward(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Vocabulary logits [N, V] at the N positions that have a target, and those targets [N].

        Positions come in row-major order, so a batch with one target per example gives one row per example.
        `target_ids[b, t]` is the token the logits at position t must predict (the next token for causal FMs,
        the label word at `<mask>` for masked FMs, the t-th decoder token for seq2seq FMs).
        """
        inputs = self._prompted_inputs(batch)
        target_ids = inputs.pop("target_ids")
        scored = target_ids != -100
        if self.fm_kind == "seq2seq":
            logits = self.fm(**inputs, decoder_input_ids=self._decoder_input_ids(target_ids), use_cache=False).logits
            return logits[scored].float(), target_ids[scored]
        if self.fm_kind == "causal":
            inputs["use_cache"] = False  # a training/scoring pass never decodes on; don't build a KV cache
        hidden = self.fm.base_model(**inputs).last_hidden_state
        return self.head(hidden[scored]).float(), target_ids[scored]

    @torch.no_grad()
    def generate(self, batch: dict, **generation_kwargs) -> Tensor:
        """Batched generation with per-instance prompts; returns only the new tokens [B, T]."""
        inputs = self._prompted_inputs(batch)
        inputs.pop("target_ids")
        inputs.pop("position_ids", None)  # generate() derives them from the attention mask, as we do
        generated = self.fm.generate(**inputs, **generation_kwargs)
        # Encoder-decoder FMs return the decoder start token first; causal FMs given embeddings return only new tokens.
        return generated[:, 1:] if self.fm_kind == "seq2seq" else generated
