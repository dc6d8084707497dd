"""Prompt-based classification (METHODS.md §5): score label words at `<mask>` (masked FMs), after the text (causal),
or as the first decoder token (seq2seq: GLUE as text-to-text with the label word as the target)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lopa.errors import ConfigError
from lopa.metrics import compute_metrics
from lopa.progress import progress_bar
from lopa.schema import template_fields
from lopa.tasks.base import Task

MASK = "<mask>"


class ClassificationTask(Task):
    def __init__(self, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, fm_kind: str, data_dir: str | None):
        super().__init__(cfg, tokenizer, fm_kind, data_dir)
        if fm_kind in ("causal", "seq2seq"):
            # seq2seq FMs read the causal template (or a dedicated seq2seq_template) and answer in the decoder.
            key = "seq2seq_template" if fm_kind == "seq2seq" and cfg.get("seq2seq_template") else "causal_template"
            self.template = cfg[key]
            if MASK in self.template:
                raise ConfigError(f"task {cfg.name!r}: {key} must end where the label word goes, not hold {MASK}")
        else:
            self.template = cfg.template
            if self.template.count(MASK) != 1:
                raise ConfigError(f"task {cfg.name!r}: template {self.template!r} must contain {MASK} exactly once")
            if tokenizer.mask_token is None:
                raise ConfigError(f"the {fm_kind} FM's tokenizer has no mask token for task {cfg.name!r}")
        self.fields = template_fields(self.template)
        self._label_word_ids = self._tokenize_label_words(list(cfg.label_words))

    @property
    def label_word_ids(self) -> list[int]:
        return self._label_word_ids

    def _tokenize_label_words(self, words: list[str]) -> list[int]:
        """One token per class: the first token of each label word (they must differ)."""
        ids = []
        for word in words:
            pieces = self.tokenizer.encode(word, add_special_tokens=False)
            if not pieces:
                raise ConfigError(f"label word {word!r} of task {self.name!r} tokenizes to nothing")
            ids.append(pieces[0])
        if len(set(ids)) != len(ids):
            raise ConfigError(f"label words {words} of task {self.name!r} share a first token ({ids}); choose others")
        return ids

    def _render(self, row: dict, fields: dict[str, str]) -> str:
        return self.template.format(**fields).replace(MASK, self.tokenizer.mask_token or MASK)

    def _tokenize_within_budget(self, row: dict) -> list[int]:
        """Ids of the rendered template, the fields' tails cut longest-first until it fits (the mask is never cut).

        The longest field is cut, but not below the next longest, so several long fields end up about equally long
        (as `truncation="longest_first"` would leave them); one token more than the overflow goes each time because
        decoding and re-encoding a cut text can merge tokens at the cut.
        """
        fields = {name: str(row[name]) for name in self.fields}
        budget = self.text_budget()
        for _ in range(4 * len(fields) + 4):
            ids = self.tokenizer(self._render(row, fields)).input_ids
            overflow = len(ids) - budget
            if overflow <= 0:
                return ids
            pieces = {name: self.tokenizer.encode(text, add_special_tokens=False) for name, text in fields.items()}
            longest = max(pieces, key=lambda name: len(pieces[name]))
            next_longest = max((len(p) for name, p in pieces.items() if name != longest), default=0)
            length = len(pieces[longest])
            cut = overflow + 1
            if length - cut < next_longest:  # share the cut with the other long field(s) over the next rounds
                cut = max(length - next_longest, (cut + 1) // 2)
            if length - cut < 1:
                break  # the template alone (or with one token a field) does not fit
            fields[longest] = self.tokenizer.decode(pieces[longest][: length - cut])
        raise ConfigError(f"task {self.name!r}: cannot fit the template of example {row} into {budget} tokens")

    def load(self, split_key: str, limit: int | None = None) -> list[dict]:
        """Rows of a split, each checked for the fields task.text_fields declares and a label (the templates were
        checked against the declaration before anything loaded: lopa/schema.py)."""
        rows = super().load(split_key, limit)
        required = [*self.cfg.get("text_fields", self.fields), "label"]
        for index, row in enumerate(rows):
            missing = [name for name in required if name not in row]
            if missing:
                raise ConfigError(f"task {self.name!r}: row {index} of split {self.split_name(split_key)!r} lacks "
                                  f"field(s) {', '.join(missing)} (task.text_fields declares {', '.join(required[:-1])})")
        return rows

    def encode(self, row: dict, index: int, split_key: str) -> dict:
        missing = [name for name in self.fields + ["label"] if name not in row]
        if missing:
            raise ConfigError(f"task {self.name!r}: row {index} of split {split_key!r} lacks fields {missing}")
        label = int(row["label"])
        if not 0 <= label < len(self.label_word_ids):
            raise ConfigError(
                f"task {self.name!r}: label {label} of row {index} has no label word "
                f"(allowed 0..{len(self.label_word_ids) - 1})"
            )
        input_ids = self._tokenize_within_budget(row)
        if self.fm_kind == "seq2seq":
            # The decoder's one target is the label word's first token (one scored row per example, like the others).
            target_ids = [self.label_word_ids[label]]
        elif self.fm_kind == "causal":
            target_ids = [-100] * len(input_ids)
            target_ids[-1] = self.label_word_ids[label]  # logits after the last text token predict the label word
        else:
            target_ids = [-100] * len(input_ids)
            target_ids[input_ids.index(self.tokenizer.mask_token_id)] = self.label_word_ids[label]
        return {
            "input_ids": input_ids,
            "target_ids": target_ids,
            "label": label,
            "example_key": f"{self.name}/{split_key}/{row.get('idx', index)}",
            # The instance encoder drops the mask or reads it as its own mask token (encoder.include_mask).
            "encoder_text": " ".join(self.template.format(**{name: row[name] for name in self.fields}).split()),
        }

    def text(self, row: dict) -> str:
        """The task text as the FM reads it (without the mask), for the instance encoder and text inits."""
        rendered = self.template.format(**{name: row[name] for name in self.fields}).replace(MASK, "")
        return " ".join(rendered.split())

    def label_logits(self, model, batch: dict) -> torch.Tensor:
        """[batch, classes]: the FM's logits of each label word at each example's scored position."""
        logits, _ = model(batch)
        return logits[:, torch.tensor(self.label_word_ids, device=logits.device)]

    @torch.no_grad()
    def predict(self, model, loader: DataLoader, accelerator) -> tuple[list[int], list[int]]:
        """Argmax over the label words at each example's scored position, gathered over processes."""
        model.eval()
        predictions, references = [], []
        for batch in progress_bar(loader, desc="eval", accelerator=accelerator, nested=True):
            batch_predictions = self.label_logits(model, batch).argmax(-1)
            batch_predictions, labels = accelerator.gather_for_metrics((batch_predictions, batch["labels"]))
            predictions += batch_predictions.tolist()
            references += labels.tolist()
        return predictions, references

    def evaluate(self, model, loader: DataLoader, accelerator, predictions: bool = False) -> dict:
        predicted, references = self.predict(model, loader, accelerator)
        # num_examples: what was gathered over processes, which must be the split's size (no duplicates)
        metrics = {**compute_metrics(self.cfg.metrics, predicted, references), "num_examples": len(predicted)}
        return {**metrics, "predictions": predicted} if predictions else metrics
