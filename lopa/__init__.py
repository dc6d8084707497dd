"""LoPA and its peers: soft-prompt adaptation of frozen foundation models."""

from omegaconf import OmegaConf

__version__ = "0.1.0"

# ${mul:a,b}: a learning rate as a multiple of a method's own (the offline study's grid, configs/experiment/)
OmegaConf.register_new_resolver("mul", lambda a, b: float(a) * float(b), replace=True)
