"""Entry point: python run.py method=lopa task=glue/rte model=smollm2-135m [key=value ...]."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lopa.cli import FAILED_JOBS, is_main_rank, prepare_overrides, relaunch_if_needed

EXIT_BAD_INPUT = 2  # a ConfigError: the one `error:` line on stderr says what to change
EXIT_SWEEP_FAILURES = 1  # a multirun finished, but some of its jobs failed (their records say why)
EXIT_INTERRUPTED = 143  # SIGTERM: a checkpoint was saved; rerun the same command in the same run directory


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import logging
    import traceback
    from contextlib import nullcontext

    from hydra.core.hydra_config import HydraConfig

    from lopa.errors import ConfigError
    from lopa.records import (
        RESULTS_FILE,
        ForeignRecordError,
        completed_record,
        failed_record,
        hold_run_dir,
        write_json,
    )
    from lopa.schema import validate

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    single_run = HydraConfig.get().mode.name == "RUN"
    try:
        validate(cfg)  # the value table first: a bad number is one line before torch and transformers load
        from lopa.runner import run
        # the main process holds the directory while it checks and runs: a second launch into it stops at once
        with hold_run_dir(run_dir) if is_main_rank() else nullcontext():
            done = completed_record(run_dir, OmegaConf.to_container(cfg, resolve=True)) if cfg.get("skip_completed") else None
            if done is not None:
                if is_main_rank():
                    print(f"{cfg.run_name}: skipped, already completed -> {run_dir / RESULTS_FILE}")
                return
            record = run(cfg, run_dir)
    except Exception as error:
        message = str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
        if is_main_rank() and not isinstance(error, ForeignRecordError):
            # A complete record marked failed, so sweeps list the failure instead of losing it.
            write_json(run_dir / RESULTS_FILE, failed_record(cfg, message, traceback.format_exc()))
        if single_run:
            if not isinstance(error, ConfigError):
                raise  # a bug, not bad input: keep the traceback
            if is_main_rank():
                print(f"error: {message}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        # In a sweep the other jobs go on; the record and the job's log hold the details.
        logging.getLogger("run").error("job failed: %s", message, exc_info=not isinstance(error, ConfigError))
        if is_main_rank():
            print(f"error: job {HydraConfig.get().job.num} ({run_dir}) failed: {message}", file=sys.stderr)
        FAILED_JOBS.append(str(run_dir))
        return
    if record["status"] == "interrupted":
        if is_main_rank():
            print(f"interrupted by SIGTERM at step {record['steps']}: checkpoint {record['checkpoint']}; run the same "
                  f"command with hydra.run.dir={run_dir} to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    best = record["best"]
    if is_main_rank() and record["steps"] == 0 and not record.get("train_losses"):  # mode=evaluate: nothing trained
        print(f"{record['run_name']}: evaluated {record['primary_metric']}={best[record['primary_metric']]:.4f}, "
              f"{record['parameters']['trainable']:,} trainable parameters -> {run_dir / RESULTS_FILE}")
    elif is_main_rank():
        print(f"{record['run_name']}: best {record['primary_metric']}={best[record['primary_metric']]:.4f} "
              f"at step {best['step']}, {record['parameters']['trainable']:,} trainable parameters -> {run_dir / RESULTS_FILE}")


if __name__ == "__main__":
    sys.argv[1:] = prepare_overrides(sys.argv[1:], Path(__file__).parent / "configs")
    relaunch_if_needed([str(Path(__file__).resolve()), *sys.argv[1:]])
    main()
    if FAILED_JOBS:
        print(f"error: {len(FAILED_JOBS)} job(s) of the sweep failed (status \"failed\" in their results.json): "
              f"{', '.join(FAILED_JOBS)}", file=sys.stderr)
        sys.exit(EXIT_SWEEP_FAILURES)
