"""The one Accelerate trainer: every method and task, no branching on method names."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import get_scheduler

from lopa.checkpointing import Checkpointer, StopOnSigterm, TrainState
from lopa.errors import ConfigError, check_choice
from lopa.progress import progress_bar
from lopa.schema import SCHEDULERS
from lopa.soft_prompt import TunedModel
from lopa.tasks.base import Task

log = logging.getLogger(__name__)


@dataclass
class TrainingOutcome:
    evaluations: list[dict] = field(default_factory=list)  # {"step", "epoch", metrics...} per evaluation
    best: dict | None = None  # the evaluation with the best primary metric (the last one on a test split)
    steps: int = 0
    train_losses: list[dict] = field(default_factory=list)  # {"step", "loss", "lr" (for the next step)} every log_every steps
    resumed_from: str | None = None  # the checkpoint this run continued from
    interrupted: bool = False  # stopped early by SIGTERM, after saving a checkpoint
    last_checkpoint: str | None = None

    def progress(self) -> dict:
        """What a checkpoint must carry to rebuild this outcome."""
        return {"evaluations": self.evaluations, "best": self.best, "train_losses": self.train_losses}


def num_training_steps(cfg: DictConfig, batches_per_epoch: int) -> int:
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    return int(cfg.epochs) * math.ceil(batches_per_epoch / cfg.grad_accum_steps)


def scored_loss(model: TunedModel, batch: dict) -> torch.Tensor:
    """Cross-entropy over the full vocabulary at every position that has a target."""
    logits, targets = model(batch)
    return F.cross_entropy(logits, targets)


def mean_over_processes(accelerator: Accelerator, loss_sum: float, count: int) -> float:
    """The mean loss over every process's batches, not only the main one's."""
    totals = torch.tensor([loss_sum, count], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    return (totals[0] / totals[1]).item()


def schedule_jump(saved: dict | None, current: dict, from_step: int) -> int | None:
    """The first step >= from_step at which the current schedule's learning-rate multiplier differs from the one the
    checkpoint trained under (None: they agree on every step both cover, e.g. a constant rate after the same warm-up)."""
    if not saved or saved == current:
        return None
    old, new = (get_scheduler(s["name"], torch.optim.SGD([torch.zeros(1)], lr=1.0), num_warmup_steps=s["warmup"],
                              num_training_steps=s["steps"]).lr_lambdas[0] for s in (saved, current))
    return next((step for step in range(from_step, min(saved["steps"], current["steps"]) + 1)
                 if not math.isclose(old(step), new(step), rel_tol=1e-9, abs_tol=1e-12)), None)


def evaluation(task: Task, model, eval_loader: DataLoader, accelerator: Accelerator,
               holdout_loader: DataLoader | None = None, predictions: bool = False) -> dict:
    """Metrics on the evaluation split and, when given, under "holdout" those on the held-out training slice (the
    split model selection may look at: the evaluation split is the one a study reports)."""
    metrics = task.evaluate(model, eval_loader, accelerator, predictions=predictions)
    if holdout_loader is not None:
        metrics["holdout"] = task.evaluate(model, holdout_loader, accelerator)
    return metrics


def scalar_metrics(metrics: dict, prefix: str = "") -> dict:
    """The numbers of an evaluation, nested keys joined by "/" (per-example predictions left out), for logs."""
    scalars = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            scalars.update(scalar_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float):
            scalars[f"{prefix}{key}"] = value
    return scalars


def train(
    cfg: DictConfig,
    model: TunedModel,
    task: Task,
    train_loader: DataLoader,
    eval_loader: DataLoader,
    accelerator: Accelerator,
    on_best: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
    resume_from: Path | None = None,
    holdout_loader: DataLoader | None = None,
    keep_predictions: bool = False,
) -> TrainingOutcome:
    """Train `model` with AdamW and evaluate it every `eval_every` steps (or each epoch), tracking the best.

    When the task evaluates on its test split, nothing is selected: without `eval_every` it evaluates once, after
    training, and the best evaluation is the last one (intermediate ones, if asked for, are only a learning curve).

    With a `checkpointer`, checkpoints are saved every `cfg.checkpoint_every` steps and when SIGTERM arrives (then
    training stops early with `interrupted` set); `resume_from` continues from a checkpoint exactly where it was.
    The train loader should shuffle with an `EpochShuffle` sampler, so an interrupted epoch replays in the same order.
    `holdout_loader` (a held-out slice of the training set) is scored at every evaluation beside the evaluation split;
    `keep_predictions` stores each evaluation's per-example predictions in it.
    """
    check_choice("trainer.scheduler", cfg.scheduler, SCHEDULERS)
    optimizer = torch.optim.AdamW(model.method.param_groups(cfg.lr, cfg.weight_decay))
    if cfg.gradient_checkpointing:
        model.fm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    sampler = train_loader.sampler
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    if holdout_loader is not None:
        holdout_loader = accelerator.prepare(holdout_loader)
    # Counted on the prepared (per-process) loader: one optimiser step takes one batch on every process. Steps,
    # warm-up and the schedule are all in optimiser steps, whatever the number of processes, so the scheduler is
    # not handed to Accelerate (which would step it once per process) but stepped here once per optimiser step.
    steps = num_training_steps(cfg, len(train_loader))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * steps)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    outcome = TrainingOutcome()
    state = TrainState()
    if resume_from is not None:
        state, progress = checkpointer.load(resume_from, model, optimizer, scheduler)
        outcome = TrainingOutcome(**progress, resumed_from=str(resume_from), last_checkpoint=str(resume_from))
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from, state.step, state.epoch,
                 state.batch_in_epoch)
    schedule = {"name": cfg.scheduler, "steps": steps, "warmup": warmup}
    jump = schedule_jump(state.schedule, schedule, state.step) if resume_from is not None else None
    if jump is not None and not cfg.get("allow_schedule_change", False):
        old = state.schedule
        raise ConfigError(f"resuming {resume_from} under another learning-rate schedule ({old['name']}, {old['steps']} "
                          f"steps, {old['warmup']} warm-up -> {cfg.scheduler}, {steps}, {warmup}) changes the rate from "
                          f"step {jump} on: keep trainer.max_steps/epochs, or set trainer.allow_schedule_change=true")
    state.schedule = schedule
    outcome.steps = state.step
    metric = task.primary_metric
    select_best = task.selects_best_evaluation
    batches_per_epoch = len(train_loader)

    def evaluate(epoch: int) -> None:
        metrics = evaluation(task, model, eval_loader, accelerator, holdout_loader, keep_predictions)
        record = {"step": state.step, "epoch": epoch, **metrics}
        outcome.evaluations.append(record)
        scalars = scalar_metrics(metrics)
        accelerator.log({f"eval/{k}": v for k, v in scalars.items()}, step=state.step)
        log.info("step %d: %s", state.step, ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in scalars.items()))
        if outcome.best is None or not select_best or metrics[metric] > outcome.best[metric]:
            outcome.best = record
            if on_best is not None:
                on_best(record)
        model.train()

    def save_checkpoint() -> None:
        path = checkpointer.save(model, optimizer, scheduler, state, outcome.progress())
        outcome.last_checkpoint = str(path)

    bar = progress_bar(total=steps, initial=state.step, desc="train", accelerator=accelerator)  # beside the loss logs
    model.train()
    with StopOnSigterm(accelerator, enabled=checkpointer is not None) as sigterm:
        while state.step < steps:
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(state.epoch)
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(state.epoch)  # Accelerate re-applies its own epoch count to the sampler
            batches = train_loader
            if state.batch_in_epoch:
                batches = accelerator.skip_first_batches(train_loader, state.batch_in_epoch)
            for batch in batches:
                with accelerator.accumulate(model):
                    loss = scored_loss(model, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients and not optimizer.step_was_skipped:  # fp16 overflow skips a step
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batch_in_epoch += 1
                state.running_loss += loss.detach().float().item()
                state.running_count += 1
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                outcome.steps = state.step
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == steps:
                    mean_loss = mean_over_processes(accelerator, state.running_loss, state.running_count)
                    outcome.train_losses.append({"step": state.step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0]})
                    accelerator.log({"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0]}, step=state.step)
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    log.info("step %d/%d: loss=%.4f lr=%.3g", state.step, steps, mean_loss, scheduler.get_last_lr()[0])
                    state.running_loss, state.running_count = 0.0, 0
                end_of_epoch = state.batch_in_epoch >= batches_per_epoch
                if (cfg.eval_every and state.step % cfg.eval_every == 0) or (not cfg.eval_every and end_of_epoch
                                                                             and select_best):
                    evaluate(state.epoch)
                if end_of_epoch:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                stop = sigterm.requested()
                if checkpointer is not None and (stop or checkpointer.due(state.step, last=state.step == steps)):
                    save_checkpoint()
                if stop:
                    outcome.interrupted = True
                    log.warning("SIGTERM: stopped at step %d after saving %s", state.step, outcome.last_checkpoint)
                    bar.close()
                    return outcome
                if state.step >= steps:
                    break
    bar.close()
    if not outcome.evaluations or outcome.evaluations[-1]["step"] != state.step:
        evaluate(state.epoch if state.batch_in_epoch else state.epoch - 1)
    return outcome
