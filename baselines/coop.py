"""CoOp (Zhou et al. 2022): a learnable text context [m, d] shared by every class, in front of each class name.

Prompt tuning on CLIP's text encoder (`model.kind=clip` places the context after the start token); CoOp starts it
from the embeddings of "a photo of a" (n_ctx = 4): 4 · 512 = 2,048 parameters on ViT-B/16.
"""

from baselines.prompt_tuning import PromptTuning
from lopa.registry import register_method


@register_method("coop")
class CoOp(PromptTuning):
    """PromptTuning with CoOp's defaults (configs/method/coop.yaml: init=text, init_text="a photo of a")."""
