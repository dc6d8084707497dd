"""Trainable-parameter counts built with the paper's dimensions (no weights needed), next to the paper's numbers.

    python scripts/param_counts.py          # prints the table; exits 1 on any mismatch

Modules are built on the meta device from the model and encoder configs in configs/, so the counts come
from the same code that trains, not from a formula typed twice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from baselines.accept import ProductQuantised  # noqa: E402
from baselines.dept import LowRankUpdate  # noqa: E402
from baselines.idpg import IDPGPrompt  # noqa: E402
from baselines.lowrank_prompt import LowRankFactors  # noqa: E402
from baselines.residual_prompt import ResidualReparameterisation  # noqa: E402
from lopa.methods.lopa import LoPAPrompt  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# openai/clip-vit-base-patch16's architecture: transformers' CLIPConfig defaults (text width 512, vision 768,
# projection 512) with 16-pixel patches, so CLIP methods are built on the real dimensions without weights.
CLIP_VIT_B16 = dict(vision_config=dict(patch_size=16, image_size=224))

# roberta-large's architecture (its Hub config.json), to count a trained encoder on the meta device offline.
ROBERTA_LARGE = dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1)


def composed(*overrides: str):
    """The run config of `overrides` as run.py composes it (presets included)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("config", overrides=list(overrides))


def roberta_large_encoder() -> nn.Module:
    from transformers import RobertaConfig, RobertaModel

    return RobertaModel(RobertaConfig(**ROBERTA_LARGE))


def lopa_preset(preset: str) -> Callable[[], nn.Module]:
    """LoPA's trainable part under an official-code preset: the heads and Z_S, plus the encoder when it trains."""
    cfg = composed("method=lopa", "model=roberta-large", "encoder=roberta-large", f"+preset={preset}")

    def build() -> nn.Module:
        prompt = LoPAPrompt(cfg.method.prompt_length, cfg.model.hidden_size, cfg.encoder.hidden_size,
                            cfg.method.hidden_size, cfg.method.rank)
        if not cfg.encoder.trainable:
            return prompt
        encoder = roberta_large_encoder()
        return Parts(prompt, encoder)

    return build


def hidden_size(group: str, name: str) -> int:
    return OmegaConf.load(CONFIGS / group / f"{name}.yaml").hidden_size


@dataclass
class Case:
    method: str
    setting: str
    build: Callable[[], nn.Module]
    paper_millions: float  # as printed in the paper (two decimals) or its exact count when given
    exact: bool = False


def lopa(model: str, encoder: str, hidden: int, rank: int) -> Callable[[], nn.Module]:
    return lambda: LoPAPrompt(10, hidden_size("model", model), hidden_size("encoder", encoder), hidden, rank)


def idpg(model: str, encoder: str, hidden: int) -> Callable[[], nn.Module]:
    return lambda: IDPGPrompt(10, hidden_size("model", model), hidden_size("encoder", encoder), hidden)


class Parts(nn.Module):
    """A method's trainable pieces side by side: an optional plain [m, d] prompt table plus the modules it builds."""

    def __init__(self, *parts: nn.Module, prompt_shape: tuple[int, int] | None = None):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        if prompt_shape is not None:
            self.prompt_table = nn.Parameter(torch.empty(*prompt_shape))


def accept(model: str, m: int, t: int, r: int, s: int, update_rank: int) -> Callable[[], nn.Module]:
    """SCPP plus DePT's A·B update (the official T5-base QNLI script runs SCAP off)."""
    d = hidden_size("model", model)
    return lambda: Parts(ProductQuantised(m, d, t, r), LowRankUpdate(s, d, update_rank, alpha=8))


def lowrank_prompt(model: str, m: int, r: int) -> Callable[[], nn.Module]:
    return lambda: LowRankFactors(m, hidden_size("model", model), r)


def dept(model: str, m: int, r: int, s: int) -> Callable[[], nn.Module]:
    d = hidden_size("model", model)
    return lambda: Parts(LowRankUpdate(s, d, r, alpha=8), prompt_shape=(m, d))


def residual_prompt(model: str, m: int, bottleneck: int) -> Callable[[], nn.Module]:
    d = hidden_size("model", model)
    return lambda: Parts(ResidualReparameterisation(d, bottleneck), prompt_shape=(m, d))


def clip_method(method: str) -> Callable[[], nn.Module]:
    """The registered CLIP method itself (configs/method/<method>.yaml) on a config-built ViT-B/16 CLIPModel.

    The prompt inits need a tokenizer only for the ids of init_text ("a photo of a"); CLIP's own is on the Hub, so the
    offline MiniLM vocabulary stands in: the ids do not change what trains."""
    cfg = composed(f"method={method}", "model=clip-vit-b16")

    def build() -> nn.Module:
        from transformers import CLIPConfig, CLIPModel

        from lopa.models import load_tokenizer
        from lopa.registry import method_class
        from lopa.soft_prompt import MethodContext

        tokenizer = load_tokenizer(composed("model=tiny-clip").model)
        fm = CLIPModel(CLIPConfig(**CLIP_VIT_B16))
        ctx = MethodContext(fm=fm, tokenizer=tokenizer, model_cfg=cfg.model, encoder_cfg=None)
        return method_class(method)(cfg.method, ctx)

    return build


T5_BASE_D = 768

CASES = [
    *[Case("lopa", f"GLUE roberta-large, r={r}", lopa("roberta-large", "roberta-large", 256, r), v)
      for r, v in [(1, 0.80), (2, 1.07), (4, 1.60)]],
    *[Case("lopa", f"deepseek-coder-1.3b + codesage-small, r={r}", lopa("deepseek-coder-1.3b", "codesage-small", 1024, r), v)
      for r, v in [(1, 4.23), (2, 6.34), (4, 10.56)]],
    *[Case("lopa", f"phi-2 + codesage-small, r={r}", lopa("phi-2", "codesage-small", 1024, r), v)
      for r, v in [(1, 4.76), (2, 7.39), (4, 12.66)]],
    # Official LoPA NLU code (issue 17), m=10, r=4: the heads at HEAD are 1024 wide and the encoder trains.
    Case("lopa", "+preset=lopa_nlu_head: heads h=1024 + trained encoder", lambda: lopa_preset("lopa_nlu_head")(),
         6_348_840 + 355_359_744, exact=True),
    Case("lopa", "+preset=lopa_nlu_paper (paper_counts): h=256, frozen encoder", lambda: lopa_preset("lopa_nlu_paper")(),
         1_597_992, exact=True),
    Case("idpg", "GLUE roberta-large, h=256", idpg("roberta-large", "roberta-large", 256), 2.89),
    Case("idpg", "deepseek-coder-1.3b + codebert-base, h=768", idpg("deepseek-coder-1.3b", "codebert-base", 768), 16.34),
    Case("accept", "t5-base QNLI: SCPP m=60 t=32 r=20 + A·B s=256 r=30", accept("t5-base", 60, 32, 20, 256, 30), 74_880,
         exact=True),
    Case("lowrank_prompt", "t5-base (DPT) m=100, r=10", lowrank_prompt("t5-base", 100, 10), 8_680, exact=True),
    Case("dept", "t5-base m=60, r=30, s=256 (= 100·d)", dept("t5-base", 60, 30, 256), 100 * T5_BASE_D, exact=True),
    # RLP's "0.5K": n_ctx 4, rank 1 on ViT-B/16's 512-wide text embeddings (METHODS.md §4); CoOp: n_ctx · 512.
    Case("rlp", "clip-vit-b16 n_ctx=4, r=1: 4·1 + 1·512", clip_method("rlp"), 516, exact=True),
    Case("coop", "clip-vit-b16 n_ctx=4: 4·512", clip_method("coop"), 2_048, exact=True),
    # No count is printed in the paper: the check is the formula m·d + 2·d·h + h + 3·d (during training).
    Case("residual_prompt", "t5-base m=10, h=800 (formula)", residual_prompt("t5-base", 10, 800),
         10 * T5_BASE_D + 2 * T5_BASE_D * 800 + 800 + 3 * T5_BASE_D, exact=True),
]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def main(cases: list[Case] = CASES) -> int:
    rows, mismatches = [], 0
    for case in cases:
        with torch.device("meta"):
            parameters = count(case.build())
        ours = parameters if case.exact else round(parameters / 1e6, 2)
        paper = int(case.paper_millions) if case.exact else case.paper_millions
        ok = ours == paper
        mismatches += not ok
        shown = (f"{ours:,}", f"{paper:,}") if case.exact else (f"{ours:.2f}", f"{paper:.2f}")
        rows.append((case.method, case.setting, f"{parameters:,}", *shown, "ok" if ok else "MISMATCH"))
    header = ("method", "setting", "parameters", "ours", "paper", "check")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print(f"\n{len(rows) - mismatches}/{len(rows)} match (the paper's numbers to two decimals in millions or exactly; rows marked (formula) check the formula where the paper prints no count)")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
