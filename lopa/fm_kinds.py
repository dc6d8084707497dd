"""One small object per kind of FM: how it loads, takes a soft prompt, scores its targets and generates.

`TunedModel` (lopa/soft_prompt.py) hands every batch to its FM kind; adding a kind of FM (e.g. CLIP for RLP) is one
subclass registered with `@register_fm_kind`, not a branch in the wrapper. A kind sees the method only through
the `Method` interface: `update_input_embeddings` on the text embeddings, then `prompt(batch)` ([B, m, d] or None).
"""

from __future__ import annotations

import importlib
from typing import ClassVar

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

from lopa.errors import ConfigError, check_choice

FM_KINDS: dict[str, type[FMKind]] = {}
# Modules defining further kinds, imported only when a config names one of them (they may need extra libraries).
LAZY_FM_KINDS: dict[str, str] = {"clip": "lopa.clip"}


def register_fm_kind(name: str):
    """Class decorator: make an FMKind available as `model.kind=<name>`."""

    def register(cls: type[FMKind]) -> type[FMKind]:
        cls.name = name
        FM_KINDS[name] = cls
        return cls

    return register


def fm_kind_class(name: str) -> type[FMKind]:
    """The FMKind registered as `name`, with an error listing the known kinds."""
    if name not in FM_KINDS and name in LAZY_FM_KINDS:
        importlib.import_module(LAZY_FM_KINDS[name])
    check_choice("model kind", name, sorted({*FM_KINDS, *LAZY_FM_KINDS}))
    return FM_KINDS[name]


def text_positions(attention_mask: Tensor) -> Tensor:
    """[B, L] index of each column within its example's text (0 for the first real token), whichever side the pads are on."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


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


class FMKind:
    """A language model whose token embeddings take the prompt right before the text: [P; x] (pads outside)."""

    name: ClassVar[str]
    auto_class: ClassVar[type]  # the transformers class that loads this kind
    padding_side: ClassVar[str] = "right"
    # Targets are positions of the prompted input (masked, causal), or a sequence of their own (seq2seq's decoder).
    prompt_shifts_targets: ClassVar[bool] = True

    def __init__(self, fm: nn.Module):
        self.fm = fm
        self.head = output_head(fm)  # scoring runs the base model, then the head at the scored positions only

    @staticmethod
    def token_embeddings(fm: nn.Module) -> nn.Embedding:
        """The FM's token-embedding table: the space a soft prompt lives in."""
        return fm.get_input_embeddings()

    @staticmethod
    def build_config(model_type: str, architecture: dict, tokenizer):
        """The transformers config of a randomly initialised FM from a model YAML's `architecture` (tiny test models)."""
        return AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **architecture)

    def prompted_inputs(self, method: nn.Module, batch: dict) -> dict:
        """inputs_embeds, attention_mask and target_ids of the batch with the method's prompt prepended to the text."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        embeds = self.token_embeddings(self.fm)(input_ids)
        embeds = method.update_input_embeddings(embeds, attention_mask)
        target_ids = batch.get("target_ids")
        prompt = method.prompt(batch)
        if prompt is not None:
            batch_size, m = prompt.shape[:2]
            embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(batch_size, m), attention_mask], dim=1)
            if target_ids is not None and self.prompt_shifts_targets:
                target_ids = torch.cat([target_ids.new_full((batch_size, m), -100), target_ids], dim=1)
        return {"inputs_embeds": embeds, "attention_mask": attention_mask, "target_ids": target_ids}

    def forward(self, method: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        """Logits [N, V] (float32) at the N positions that have a target, and those targets [N], row-major."""
        inputs = self.prompted_inputs(method, batch)
        target_ids = inputs.pop("target_ids")
        scored = target_ids != -100
        hidden = self.fm.base_model(**inputs).last_hidden_state
        return self.head(hidden[scored]).float(), target_ids[scored]

    def generate(self, method: nn.Module, batch: dict, **generation_kwargs) -> Tensor:
        raise ConfigError(f"a {self.name} FM does not generate text")


@register_fm_kind("masked")
class MaskedFM(FMKind):
    """Encoder-only masked LMs (RoBERTa, BERT): the label word is scored at `<mask>`."""

    auto_class = AutoModelForMaskedLM


@register_fm_kind("causal")
class CausalFM(FMKind):
    """Decoder-only LMs, padded on the left so that every text ends at the right edge: [pads; P; x]."""

    auto_class = AutoModelForCausalLM
    padding_side = "left"

    def prompted_inputs(self, method: nn.Module, batch: dict) -> dict:
        inputs = super().prompted_inputs(method, batch)
        # [P; pads; x] -> [pads; P; x]: the prompt must sit next to the text. A stable sort of the mask moves the pads
        # to the front and keeps every other column's order (without a prompt it changes nothing).
        order = torch.sort(inputs["attention_mask"], dim=1, stable=True).indices
        embeds = inputs["inputs_embeds"]
        inputs["inputs_embeds"] = embeds.gather(1, order.unsqueeze(-1).expand_as(embeds))
        inputs["attention_mask"] = inputs["attention_mask"].gather(1, order)
        if inputs["target_ids"] is not None:
            inputs["target_ids"] = inputs["target_ids"].gather(1, order)
        inputs["position_ids"] = text_positions(inputs["attention_mask"])
        return inputs

    def forward(self, method: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        inputs = self.prompted_inputs(method, batch)
        target_ids = inputs.pop("target_ids")
        scored = target_ids != -100
        # A training or scoring pass never decodes on: no KV cache.
        hidden = self.fm.base_model(**inputs, use_cache=False).last_hidden_state
        return self.head(hidden[scored]).float(), target_ids[scored]

    def generate(self, method: nn.Module, batch: dict, **generation_kwargs) -> Tensor:
        """Only the new tokens [B, T] (given embeddings, generate() returns no copy of the input)."""
        inputs = self.prompted_inputs(method, batch)
        inputs.pop("target_ids")
        inputs.pop("position_ids")  # generate() derives them from the attention mask, as we do
        return self.fm.generate(**inputs, **generation_kwargs)


@register_fm_kind("seq2seq")
class Seq2SeqFM(FMKind):
    """Encoder-decoder LMs (T5): the prompt goes to the encoder only; the targets are the decoder's tokens."""

    auto_class = AutoModelForSeq2SeqLM
    prompt_shifts_targets = False

    def __init__(self, fm: nn.Module):
        self.fm = fm  # called whole (encoder, decoder, head): no separate head

    def decoder_input_ids(self, target_ids: Tensor) -> Tensor:
        """Teacher forcing: the decoder targets shifted right behind the decoder start token (-100 -> pad)."""
        start = getattr(self.fm.config, "decoder_start_token_id", None)
        if start is None:
            raise ConfigError(f"the seq2seq FM {type(self.fm).__name__} has no decoder_start_token_id in its config")
        shifted = target_ids.new_full(target_ids.shape, start)
        shifted[:, 1:] = target_ids[:, :-1]
        return shifted.masked_fill(shifted == -100, self.fm.config.pad_token_id)

    def forward(self, method: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        inputs = self.prompted_inputs(method, batch)
        target_ids = inputs.pop("target_ids")
        scored = target_ids != -100
        logits = self.fm(**inputs, decoder_input_ids=self.decoder_input_ids(target_ids), use_cache=False).logits
        return logits[scored].float(), target_ids[scored]

    def generate(self, method: nn.Module, batch: dict, **generation_kwargs) -> Tensor:
        """Only the new tokens [B, T]: the decoder start token the FM returns first is dropped."""
        inputs = self.prompted_inputs(method, batch)
        inputs.pop("target_ids")
        return self.fm.generate(**inputs, **generation_kwargs)[:, 1:]
