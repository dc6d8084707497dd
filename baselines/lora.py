"""LoRA through PEFT, injected into the FM in place (METHODS.md §3)."""

import copy
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file
from torch import nn

from lopa.errors import ConfigError
from lopa.method_config import positive_int
from lopa.records import atomic_write
from lopa.registry import register_method
from lopa.soft_prompt import Method, MethodContext

PEFT_DIR = "peft"  # inside the weights directory: loadable with peft.PeftModel.from_pretrained(base FM, <dir>)
PEFT_TASK_TYPES = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


@register_method("lora")
class LoRA(Method):
    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        self.lora_config = LoraConfig(
            r=positive_int(cfg, "r"),
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=OmegaConf.to_container(cfg.target_modules),
        )
        self.model_cfg = ctx.model_cfg

    def prepare_fm(self, fm: nn.Module) -> None:
        fm.requires_grad_(False)
        try:
            inject_adapter_in_model(self.lora_config, fm)
        except ValueError as error:
            raise ConfigError(f"LoRA target modules {list(self.lora_config.target_modules)} do not fit: {error}") from None
        self.adapter_parameters = [p for name, p in fm.named_parameters() if "lora_" in name]
        for parameter in self.adapter_parameters:
            parameter.requires_grad_(True)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [{"params": self.adapter_parameters, "lr": lr, "weight_decay": weight_decay}]

    def export(self, fm: nn.Module, directory: Path) -> None:
        """The adapter as `PeftModel.save_pretrained` writes it: adapter_config.json + adapter_model.safetensors,
        the tensors named as in a PeftModel around the FM (base_model.model.<FM's name>)."""
        config = copy.deepcopy(self.lora_config)
        config.base_model_name_or_path = self.model_cfg.get("pretrained")
        config.task_type = PEFT_TASK_TYPES.get(self.model_cfg.kind)
        state = {f"base_model.model.{name}": tensor.detach().contiguous().cpu()
                 for name, tensor in get_peft_model_state_dict(fm).items()}
        target = Path(directory) / PEFT_DIR
        atomic_write(target / "adapter_model.safetensors", lambda tmp: save_file(state, str(tmp)))
        config.save_pretrained(str(target))
