"""LoRA through PEFT, injected into the FM in place (METHODS.md §3)."""

from omegaconf import DictConfig, OmegaConf
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from lopa.errors import ConfigError
from lopa.registry import register_method
from lopa.soft_prompt import Method, MethodContext


@register_method("lora")
class LoRA(Method):
    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__(cfg, ctx)
        if not isinstance(cfg.r, int) or cfg.r <= 0:
            raise ConfigError(f"method.r must be a positive integer, got {cfg.r!r}")
        self.lora_config = LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=OmegaConf.to_container(cfg.target_modules),
        )

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
