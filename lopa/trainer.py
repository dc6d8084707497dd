"""The one Accelerate trainer: every method and task, no branching on method names."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
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
    # Wall time of the processes before this one, up to the checkpoint this one resumed from (their set-up, and any
    # work after their last checkpoint, excluded): a resumed run's record then counts its whole cost, not its last leg.
    earlier_wall_time_s: float = 0.0
    started: float = field(default_factory=time.time, repr=False)  # when this process's training began

    def progress(self) -> dict:
        """What a checkpoint must carry to rebuild this outcome."""
        return {"evaluations": self.evaluations, "best": self.best, "train_losses": self.train_losses,
                "earlier_wall_time_s": round(self.earlier_wall_time_s + time.time() - self.started, 2)}


def seed_processes(seed: int) -> None:
    """Each process its own random stream from here on (dropout, sampling): seed + rank, so one process is unchanged.

    Everything drawn before (an FM built from an architecture, prompt inits) came from `seed` alone, alike on every
    process; after this, two processes drawing the same dropout masks would make their batches correlated."""
    set_seed(seed, device_specific=True)


def num_training_steps(cfg: DictConfig, batches_per_epoch: int) -> int:
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    return int(cfg.epochs) * math.ceil(batches_per_epoch / cfg.grad_accum_steps)


def last_step(cfg: DictConfig, steps: int) -> int:
    """Where training ends: `trainer.stop_at_step` when set (the schedule still spans all `steps`), else `steps`."""
    stop = cfg.get("stop_at_step")
    if stop is None:
        return steps
    if not 1 <= stop <= steps:
        raise ConfigError(f"trainer.stop_at_step={stop} is outside the run's schedule (allowed: 1..{steps}, or null)")
    return int(stop)


def scored_loss(model: TunedModel, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the full vocabulary at every position that has a target (one batch on its own)."""
    logits, targets = model(batch)
    return F.cross_entropy(logits, targets)


def summed_loss(model: TunedModel, batch: dict) -> torch.Tensor:
    """Cross-entropy summed over every position that has a target: the trainer divides by the window's token count."""
    logits, targets = model(batch)
    return F.cross_entropy(logits, targets, reduction="sum")


def target_tokens(batch: dict) -> torch.Tensor:
    """How many targets `summed_loss` sums over in a batch: positions with a target token (the prompt adds none), or
    for image classification, whose batches carry no tokens to predict, one class label per example."""
    if "target_ids" not in batch:
        return torch.tensor(batch["labels"].numel(), device=batch["labels"].device)
    return (batch["target_ids"] != -100).sum()


def accumulation_windows(batches: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive lists of `size` micro-batches (the last of an epoch may be shorter): one optimiser step each."""
    window = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def accumulate_gradients(model, window: list[dict], accelerator: Accelerator) -> tuple[float, int]:
    """Backward passes over one accumulation window so the gradients become those of the mean token loss over every
    target token of the window on every process, however the tokens fall into micro-batches; returns this process's
    loss sum and token count.

    As Hugging Face's Trainer does with `num_items_in_batch`: the window is fetched up front, its target tokens are
    counted and summed over processes (N), and each micro-batch's summed loss is scaled by A·P/N, since
    `accelerator.backward` divides by the A accumulation steps and DDP (FSDP, DeepSpeed) averages over the P processes.
    Gradients are synchronised on the window's last micro-batch only; the sync flag is set here (as the Trainer does)
    because Accelerate's `accumulate()` reads it off the dataloader, which is a window ahead once windows are prefetched.
    """
    local = torch.stack([target_tokens(batch) for batch in window]).sum()
    total = accelerator.reduce(local.clone(), reduction="sum") if accelerator.num_processes > 1 else local
    scale = accelerator.gradient_accumulation_steps * accelerator.num_processes / max(int(total.item()), 1)
    loss_sum = torch.zeros((), device=accelerator.device)
    for index, batch in enumerate(window):
        last = index == len(window) - 1
        accelerator.gradient_state._set_sync_gradients(last)
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            loss = summed_loss(model, batch)
            accelerator.backward(loss * scale)
        loss_sum += loss.detach().float()
    return loss_sum.item(), int(local.item())


def optimizer_step(optimizer, scheduler, accelerator: Accelerator, trainable: list, max_grad_norm: float | None) -> None:
    if max_grad_norm is not None:
        accelerator.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    if not optimizer.step_was_skipped:  # fp16 overflow skips a step
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def mean_over_processes(accelerator: Accelerator, loss_sum: float, count: int) -> float:
    """The mean loss over every process's target tokens, not only the main one's."""
    totals = torch.tensor([loss_sum, count], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    return (totals[0] / totals[1].clamp(min=1)).item()


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
    split model selection may look at: the evaluation split is the one a study reports).

    The global RNG is restored afterwards: iterating a DataLoader without a generator of its own draws its base seed
    from it, so the training that follows (dropout masks) would depend on how often, and on how many splits, one
    evaluates. run.py's loaders carry their own generators; this keeps any caller's loaders from mattering."""
    with torch.random.fork_rng(devices=[]):
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


def resume(checkpointer: Checkpointer, path: Path, model, optimizer, scheduler, schedule: dict,
           allow_schedule_change: bool) -> tuple[TrainState, TrainingOutcome]:
    """The train state and outcome so far of checkpoint `path`, with weights, optimiser, scheduler and RNG restored;
    refused when the current learning-rate schedule would change the rate of a step the checkpoint's also covers."""
    state, progress = checkpointer.load(path, model, optimizer, scheduler)
    log.info("resumed from %s at step %d (epoch %d, batch %d)", path, state.step, state.epoch, state.batch_in_epoch)
    jump = schedule_jump(state.schedule, schedule, state.step)
    if jump is not None and not allow_schedule_change:
        old = state.schedule
        raise ConfigError(f"resuming {path} under another learning-rate schedule ({old['name']}, {old['steps']} "
                          f"steps, {old['warmup']} warm-up -> {schedule['name']}, {schedule['steps']}, "
                          f"{schedule['warmup']}) changes the rate from step {jump} on: keep trainer.max_steps/epochs, "
                          "or set trainer.allow_schedule_change=true")
    state.schedule = schedule
    outcome = TrainingOutcome(**progress, steps=state.step, resumed_from=str(path), last_checkpoint=str(path))
    return state, outcome


def log_train_loss(outcome: TrainingOutcome, state: TrainState, accelerator: Accelerator, lr: float, steps: int,
                   bar) -> None:
    """Log the mean token loss since the last log (over every process) and start a new running sum."""
    loss = mean_over_processes(accelerator, state.running_loss, state.running_count)
    outcome.train_losses.append({"step": state.step, "loss": loss, "lr": lr})
    accelerator.log({"train/loss": loss, "train/lr": lr}, step=state.step)
    bar.set_postfix(loss=f"{loss:.4f}")
    log.info("step %d/%d: loss=%.4f lr=%.3g", state.step, steps, loss, lr)
    state.running_loss, state.running_count = 0.0, 0


def record_evaluation(outcome: TrainingOutcome, metrics: dict, step: int, epoch: int, task: Task,
                      accelerator: Accelerator, on_best: Callable[[dict], None] | None) -> None:
    """Append an evaluation to the outcome, log it, and make it the best one if it is (on a test split: the last)."""
    record = {"step": step, "epoch": epoch, **metrics}
    outcome.evaluations.append(record)
    scalars = scalar_metrics(metrics)
    accelerator.log({f"eval/{k}": v for k, v in scalars.items()}, step=step)
    log.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in scalars.items()))
    metric = task.primary_metric
    if outcome.best is None or not task.selects_best_evaluation or metrics[metric] > outcome.best[metric]:
        outcome.best = record
        if on_best is not None:
            on_best(record)


def enable_activation_checkpointing(fm) -> None:
    """Recompute the FM's layer activations in backward (non-reentrant, so frozen inputs still get gradients).

    transformers 5.25 renamed `gradient_checkpointing_enable` (a deprecated alias until v6); older 5.x has only that.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(fm, "activation_checkpointing_enable"):
        fm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        fm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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

    One optimiser step is one accumulation window (`grad_accum_steps` micro-batches on every process), its loss the
    mean over all the window's target tokens (`accumulate_gradients`).
    With a `checkpointer`, checkpoints are saved every `cfg.checkpoint_every` steps and when SIGTERM arrives (then
    training stops early with `interrupted` set); `resume_from` continues from a checkpoint exactly where it was.
    The train loader should shuffle with an `EpochShuffle` sampler, so an interrupted epoch replays in the same order.
    `holdout_loader` (a held-out slice of the training set) is scored at every evaluation beside the evaluation split;
    `keep_predictions` stores each evaluation's per-example predictions in it.
    """
    check_choice("trainer.scheduler", cfg.scheduler, SCHEDULERS)
    optimizer = torch.optim.AdamW(model.method.param_groups(cfg.lr, cfg.weight_decay))
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model.fm)
    sampler = train_loader.sampler
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    if holdout_loader is not None:
        holdout_loader = accelerator.prepare(holdout_loader)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    # Counted on the prepared (per-process) loader: one optimiser step takes one window on every process. Steps,
    # warm-up and the schedule are all in optimiser steps, whatever the number of processes, so the scheduler is
    # not handed to Accelerate (which would step it once per process) but stepped here once per optimiser step.
    batches_per_epoch = len(train_loader)
    steps = num_training_steps(cfg, batches_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * steps)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    schedule = {"name": cfg.scheduler, "steps": steps, "warmup": warmup}
    end = last_step(cfg, steps)
    state, outcome = TrainState(schedule=schedule), TrainingOutcome()
    if resume_from is not None:
        state, outcome = resume(checkpointer, resume_from, model, optimizer, scheduler, schedule,
                                cfg.get("allow_schedule_change", False))

    bar = progress_bar(total=end, initial=state.step, desc="train", accelerator=accelerator)  # beside the loss logs
    model.train()
    with StopOnSigterm(accelerator, enabled=checkpointer is not None) as sigterm:
        while state.step < end and not outcome.interrupted:
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(state.epoch)
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(state.epoch)  # Accelerate re-applies its own epoch count to the sampler
            # A resumed epoch skips the micro-batches it had consumed (a whole number of windows: checkpoints are
            # taken at step boundaries), so its windows are the uninterrupted run's.
            batches = train_loader
            if state.batch_in_epoch:
                batches = accelerator.skip_first_batches(train_loader, state.batch_in_epoch)
            for window in accumulation_windows(batches, accelerator.gradient_accumulation_steps):
                loss_sum, tokens = accumulate_gradients(model, window, accelerator)
                optimizer_step(optimizer, scheduler, accelerator, trainable, cfg.max_grad_norm)
                state.step += 1
                state.batch_in_epoch += len(window)
                state.running_loss += loss_sum
                state.running_count += tokens
                outcome.steps = state.step
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == end:
                    log_train_loss(outcome, state, accelerator, scheduler.get_last_lr()[0], steps, bar)

                end_of_epoch = state.batch_in_epoch >= batches_per_epoch
                if (cfg.eval_every and state.step % cfg.eval_every == 0) or (not cfg.eval_every and end_of_epoch
                                                                             and task.selects_best_evaluation):
                    metrics = evaluation(task, model, eval_loader, accelerator, holdout_loader, keep_predictions)
                    record_evaluation(outcome, metrics, state.step, state.epoch, task, accelerator, on_best)
                    model.train()
                if end_of_epoch:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0

                outcome.interrupted = sigterm.requested()
                if checkpointer is not None and (outcome.interrupted or checkpointer.due(state.step, state.step == end)):
                    path = checkpointer.save(model, optimizer, scheduler, state, outcome.progress())
                    outcome.last_checkpoint = str(path)
                if outcome.interrupted or state.step >= end:
                    break
    bar.close()
    if outcome.interrupted:
        log.warning("SIGTERM: stopped at step %d after saving %s", state.step, outcome.last_checkpoint)
        return outcome
    if not outcome.evaluations or outcome.evaluations[-1]["step"] != state.step:
        epoch = state.epoch if state.batch_in_epoch else state.epoch - 1  # the epoch the last step belongs to
        metrics = evaluation(task, model, eval_loader, accelerator, holdout_loader, keep_predictions)
        record_evaluation(outcome, metrics, state.step, epoch, task, accelerator, on_best)
    return outcome
