"""Entry point: python run.py method=lopa task=glue/rte model=smollm2-135m [key=value ...]."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lopa.cli import check_group_choices


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import traceback

    from hydra.core.hydra_config import HydraConfig

    from lopa.errors import ConfigError
    from lopa.records import write_json
    from lopa.runner import (  # heavy imports (torch, transformers) only once the config is valid
        RESULTS_FILE,
        run,
    )

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        record = run(cfg, run_dir)
    except Exception as error:
        # A complete record marked failed, so sweeps list the failure instead of losing it.
        write_json(run_dir / RESULTS_FILE, {"status": "failed", "error": f"{type(error).__name__}: {error}",
                                            "run_name": cfg.get("run_name"), "traceback": traceback.format_exc()})
        if isinstance(error, ConfigError):
            print(f"error: {error}", file=sys.stderr)
            if HydraConfig.get().mode.name == "RUN":
                sys.exit(2)
        raise
    best = record["best"]
    print(f"{record['run_name']}: best {record['primary_metric']}={best[record['primary_metric']]:.4f} "
          f"at step {best['step']}, {record['parameters']['trainable']:,} trainable parameters -> {run_dir / RESULTS_FILE}")


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], Path(__file__).parent / "configs")
    main()
