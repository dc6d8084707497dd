"""CLIP as an FM kind (RLP, CoOp): frozen image and text encoders, logits = scaled cosine similarity per class.

Each class's text is `[SOS] [context] <class text> [EOS]`: the method's shared [m, d] prompt (`Method.prompt()`) goes
right after the start token, as in CoOp's "X X X X <class>." with the X embeddings replaced. CLIP's text model only
takes ids, so its pieces run here on embeddings: absolute positions over the prompted sequence, CLIP's causal mask,
and the pooled (EOS) position found from the ids as CLIP finds it, shifted by the prompt length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel
from transformers.masking_utils import create_causal_mask

from lopa.errors import ConfigError
from lopa.fm_kinds import FMKind, register_fm_kind

# CLIP configs from before transformers PR #24773 carry eos_token_id=2 and pool at the highest id (the EOT token is
# the last of the vocabulary); newer ones pool at the first eos_token_id.
LEGACY_EOS_TOKEN_ID = 2


def pooled_positions(input_ids: Tensor, eos_token_id: int | None) -> Tensor:
    """[C] the position CLIP's text model pools at in each row of `input_ids` (no prompt)."""
    if eos_token_id is None or eos_token_id == LEGACY_EOS_TOKEN_ID:
        return input_ids.to(torch.int).argmax(dim=-1)
    is_eos = input_ids == eos_token_id
    if not bool(is_eos.any(dim=-1).all()):
        raise ConfigError(f"a class text has no EOS token (id {eos_token_id}) to pool at: check the CLIP tokenizer")
    return is_eos.int().argmax(dim=-1)


@register_fm_kind("clip")
class ClipFM(FMKind):
    """CLIPModel: a batch carries `pixel_values` [B, 3, H, W], `labels` [B] and its class set's tokenised texts
    (`class_input_ids`, `class_attention_mask` [C, L], right-padded); forward returns logits [B, C] and the labels."""

    auto_class = AutoModel  # maps a CLIP config or checkpoint to transformers.CLIPModel
    padding_side = "right"
    prompt_shifts_targets = False

    def __init__(self, fm: nn.Module):
        self.fm = fm  # the logits are a similarity, not a vocabulary head
        # Evaluation without gradients: the class texts' features of the last batch, reused while the prompted text
        # embeddings are the same (one text-encoder pass per evaluation, not per batch). Any pass with gradients drops them.
        self._eval_text: tuple[Tensor, Tensor, Tensor] | None = None

    @staticmethod
    def token_embeddings(fm: nn.Module) -> nn.Embedding:
        return fm.text_model.embeddings.token_embedding

    @staticmethod
    def build_config(model_type: str, architecture: dict, tokenizer):
        """A CLIPConfig from a model YAML's `architecture` (text_config, vision_config, ...): the tokenizer's size and
        special ids go into the text config, where CLIP's text model reads them."""
        text = dict(architecture.pop("text_config", {}) or {})
        text.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
                    eos_token_id=tokenizer.eos_token_id)
        return AutoConfig.for_model(model_type, text_config=text, **architecture)

    def text_features(self, method: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """[C, D] L2-normalised text features of the class texts with the method's prompt after the start token."""
        embeds = self.token_embeddings(self.fm)(input_ids)
        embeds = method.update_input_embeddings(embeds, attention_mask)
        prompt = method.prompt({"input_ids": input_ids, "attention_mask": attention_mask})
        m = 0
        if prompt is not None:
            m = prompt.shape[1]
            embeds = torch.cat([embeds[:, :1], prompt.to(embeds.dtype), embeds[:, 1:]], dim=1)
            attention_mask = torch.cat([attention_mask[:, :1], attention_mask.new_ones(len(input_ids), m),
                                        attention_mask[:, 1:]], dim=1)
        if torch.is_grad_enabled():
            self._eval_text = None
        elif self._eval_text is not None and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(self._eval_text[:2], (input_ids, embeds))):
            return self._eval_text[2]
        features = self._encode_text(input_ids, embeds, attention_mask, m)
        if not torch.is_grad_enabled():
            self._eval_text = (input_ids, embeds, features)
        return features

    def _encode_text(self, input_ids: Tensor, embeds: Tensor, attention_mask: Tensor, m: int) -> Tensor:
        """CLIP's text transformer on prompted embeddings [C, L + m, d], pooled at each text's EOS (shifted by m)."""
        text_model = self.fm.text_model
        length = embeds.shape[1]
        limit = text_model.config.max_position_embeddings
        if length > limit:
            raise ConfigError(f"class texts of {input_ids.shape[1]} tokens plus a {m}-token prompt exceed CLIP's "
                              f"{limit} text positions (shorten the class names or method.prompt_length)")
        positions = torch.arange(length, device=embeds.device).unsqueeze(0)
        hidden = text_model.embeddings(position_ids=positions, inputs_embeds=embeds)
        mask = create_causal_mask(config=text_model.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  cache=None)
        hidden = text_model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        hidden = text_model.final_layer_norm(hidden)
        pooled = hidden[torch.arange(len(hidden), device=hidden.device),
                        pooled_positions(input_ids, text_model.config.eos_token_id).to(hidden.device) + m]
        return F.normalize(self.fm.text_projection(pooled), dim=-1)

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """[B, D] L2-normalised image features."""
        dtype = self.fm.visual_projection.weight.dtype
        features = self.fm.get_image_features(pixel_values=pixel_values.to(dtype)).pooler_output
        return F.normalize(features, dim=-1)

    def forward(self, method: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        """Logits [B, C] = exp(logit_scale) · cos(image, class text), float32, and the labels [B] (indices into C)."""
        text = self.text_features(method, batch["class_input_ids"], batch["class_attention_mask"])
        image = self.image_features(batch["pixel_values"])
        logits = self.fm.logit_scale.exp() * image @ text.to(image.dtype).T
        return logits.float(), batch["labels"]
