"""RLP (Hao et al. 2023): CoOp's context re-parameterised as P = P0 + Dropout(A)·B with a rank-r update.

P0 is the frozen embedding of CLIP's hand-written context ("a photo of a"), A ∈ R^{m×r}, B ∈ R^{r×d}: m·r + r·d
parameters (4 · 1 + 1 · 512 = 516 on ViT-B/16). `merge()` folds it into a plain [m, d] context, and evaluation
reuses the merged table, so inference costs what CoOp's does; the trained run also writes that merged context
(`weights/merged_prompt.safetensors`). What METHODS.md does not confirm (P0, A = 0 at the start, the dropout rate)
is a config value, marked reconstructed in configs/method/rlp.yaml.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from baselines.lowrank_prompt import LowRankPrompt
from lopa.registry import register_method

MERGED_PROMPT_FILE = "merged_prompt.safetensors"


@register_method("rlp")
class RLP(LowRankPrompt):
    """LowRankPrompt with RLP's defaults; exports the merged [m, d] context beside the trained factors."""

    def export(self, fm: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_file

        from lopa.records import atomic_write

        table = {"prompt": self.merged_table().float().contiguous().cpu()}
        atomic_write(Path(directory) / MERGED_PROMPT_FILE, lambda tmp: save_file(table, str(tmp)))
