"""LoPA, the method this codebase reproduces (baselines live in the top-level `baselines` package)."""
