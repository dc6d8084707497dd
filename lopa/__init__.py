"""LoPA and its peers: soft-prompt adaptation of frozen foundation models."""

__version__ = "0.1.0"
