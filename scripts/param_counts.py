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
from baselines.idpg import IDPGPrompt  # noqa: E402
from lopa.methods.lopa import LoPAPrompt  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


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


CASES = [
    *[Case("lopa", f"GLUE roberta-large, r={r}", lopa("roberta-large", "roberta-large", 256, r), v)
      for r, v in [(1, 0.80), (2, 1.07), (4, 1.60)]],
    *[Case("lopa", f"deepseek-coder-1.3b + codesage-small, r={r}", lopa("deepseek-coder-1.3b", "codesage-small", 1024, r), v)
      for r, v in [(1, 4.23), (2, 6.34), (4, 10.56)]],
    *[Case("lopa", f"phi-2 + codesage-small, r={r}", lopa("phi-2", "codesage-small", 1024, r), v)
      for r, v in [(1, 4.76), (2, 7.39), (4, 12.66)]],
    Case("idpg", "GLUE roberta-large, h=256", idpg("roberta-large", "roberta-large", 256), 2.89),
    Case("idpg", "deepseek-coder-1.3b + codebert-base, h=768", idpg("deepseek-coder-1.3b", "codebert-base", 768), 16.34),
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
    print(f"\n{len(rows) - mismatches}/{len(rows)} match the paper (millions to two decimals, or exact counts)")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
