"""FM kinds: one object per kind of FM decides how a prompt enters it (lopa/fm_kinds.py)."""

import pytest
import torch

from lopa.errors import ConfigError
from lopa.fm_kinds import FM_KINDS, CausalFM, fm_kind_class


def test_an_unknown_kind_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"'rnn'.*causal.*masked.*seq2seq"):
        fm_kind_class("rnn")


@pytest.mark.parametrize("name", ["causal", "masked", "seq2seq"])
def test_each_language_model_kind_knows_how_it_loads_and_pads(name):
    kind = fm_kind_class(name)
    assert kind is FM_KINDS[name] and kind.name == name
    assert kind.padding_side == ("left" if name == "causal" else "right")
    assert kind.auto_class.__name__.startswith("AutoModelFor")


class FixedPrompt(torch.nn.Module):
    """A method stand-in: a [1, 2, d] prompt of ones, text embeddings unchanged."""

    def update_input_embeddings(self, embeds, attention_mask):
        return embeds

    def prompt(self, batch):
        return torch.ones(batch["input_ids"].shape[0], 2, 4)


def test_causal_kind_puts_left_pads_in_front_of_the_prompt():
    fm = torch.nn.Module()
    fm.embed = torch.nn.Embedding(10, 4)
    fm.get_input_embeddings = lambda: fm.embed
    kind = CausalFM.__new__(CausalFM)  # no head needed to place the prompt
    kind.fm = fm
    batch = {"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
             "target_ids": torch.tensor([[-100, -100, 3], [-100, -100, 4]])}
    inputs = kind.prompted_inputs(FixedPrompt(), batch)
    assert inputs["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert (inputs["inputs_embeds"][0, 1:3] == 1).all()  # [pad; P; x]: the prompt sits right before the text
    assert inputs["target_ids"][:, -1].tolist() == [3, 4]
    assert inputs["position_ids"].tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]]
