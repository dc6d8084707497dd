"""Official-code presets: trainable counts equal the official code's, and one update moves exactly what its optimiser holds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config
from tests.helpers import batch_of, build

TINY_LOPA = ("model=tiny-llama", "method=lopa", "encoder=tiny-bert", "method.rank=2")
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "param_counts.py"


def param_counts_module():
    spec = importlib.util.spec_from_file_location("param_counts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset, official", [("lopa_nlu_head", 6_348_840 + 355_359_744),
                                              ("lopa_nlu_paper", 1_597_992), ("paper_counts", 1_597_992)])
def test_lopa_preset_counts_equal_the_official_code(preset, official):
    counts = param_counts_module()
    with torch.device("meta"):
        assert counts.count(counts.lopa_preset(preset)()) == official


def test_head_preset_heads_alone_are_the_official_6_348_840():
    counts = param_counts_module()
    with torch.device("meta"):
        built = counts.lopa_preset("lopa_nlu_head")()
        assert counts.count(built.parts[0]) == 6_348_840  # Z_S and the two 1024-wide heads, without the encoder


@pytest.mark.parametrize("preset", ["lopa_nlu_head", "lopa_nlu_paper", "idpg_official", "dept_official",
                                    "pt_official", "accept_official"])
def test_every_preset_composes_and_names_its_sources(preset):
    cfg = compose_config(f"+preset={preset}")
    assert cfg.preset == preset
    assert len(cfg.sources) > 0


def one_step_moved(glue_data, *overrides: str) -> tuple[bool, bool]:
    """(did the encoder move, did the shared prompt move) after one AdamW step on a tiny LoPA."""
    model, task, examples = build(glue_data, *TINY_LOPA, *overrides)
    encoder = model.method.instance_encoder
    encoder_before = [p.detach().clone() for p in encoder.parameters()]
    prompt_before = model.method.generator.shared_prompt.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    logits, targets = model(batch_of(task, examples[:4]))
    torch.nn.functional.cross_entropy(logits, targets).backward()
    optimizer.step()
    encoder_moved = any(not torch.equal(b, p) for b, p in zip(encoder_before, encoder.parameters()))
    prompt_moved = not torch.equal(prompt_before, model.method.generator.shared_prompt)
    return encoder_moved, prompt_moved


def test_frozen_encoder_does_not_move(glue_data):
    assert one_step_moved(glue_data) == (False, True)


def test_trainable_encoder_moves_and_is_not_cached(glue_data):
    assert one_step_moved(glue_data, "encoder.trainable=true") == (True, True)
    model, _, _ = build(glue_data, *TINY_LOPA, "encoder.trainable=true")
    assert model.method.instance_encoder.cache_features is False
    model.eval()
    assert model.method.instance_encoder.training is False
    model.train()
    assert model.method.instance_encoder.training is True  # dropout on while the encoder trains


def test_glue_table_lists_what_each_swept_method_runs_with():
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base = compose(config_name="config", overrides=["experiment=glue_table"], return_hydra_config=True)
    swept = base.hydra.sweeper.params.method.split(",")
    assert sorted(base.method_settings) == sorted(swept)
    for method in swept:
        job = compose_config("experiment=glue_table", f"method={method}")
        listed = job.method_settings[method]
        assert (job.preset, job.trainer.lr, job.trainer.batch_size, job.trainer.max_grad_norm) == (
            listed.preset, listed.lr, listed.batch_size, listed.max_grad_norm), method
        assert set(listed.sources) == {"lr", "batch_size", "max_grad_norm"}


@pytest.mark.parametrize("preset, method", [("lopa_nlu_head", "prompt_tuning"), ("idpg_official", "lopa"),
                                            ("pt_official", "lora")])
def test_a_preset_is_refused_with_a_method_it_was_not_written_for(preset, method):
    from lopa.errors import ConfigError
    from lopa.runner import check_config

    cfg = compose_config(f"method={method}", f"+preset={preset}", "model=tiny-llama", "encoder=tiny-bert")
    with pytest.raises(ConfigError, match=f"\\+preset={preset} is written for method=.*not method={method}"):
        check_config(cfg)
