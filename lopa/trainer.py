"""The one Accelerate trainer: every method and task, no branching on method names."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from lopa.errors import check_choice
from lopa.soft_prompt import TunedModel
from lopa.tasks.base import Task

log = logging.getLogger(__name__)

SCHEDULERS = ("constant_with_warmup", "linear", "constant")


@dataclass
class TrainingOutcome:
    evaluations: list[dict] = field(default_factory=list)  # {"step", "epoch", metrics...} per evaluation
    best: dict | None = None  # the evaluation with the best primary metric
    steps: int = 0
    train_losses: list[dict] = field(default_factory=list)  # {"step", "loss"} every log_every steps


def num_training_steps(cfg: DictConfig, batches_per_epoch: int) -> int:
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    return int(cfg.epochs) * math.ceil(batches_per_epoch / cfg.grad_accum_steps)


def scored_loss(model: TunedModel, batch: dict) -> torch.Tensor:
    """Cross-entropy over the full vocabulary at every position that has a target."""
    logits, targets = model(batch)
    return F.cross_entropy(logits, targets)


def train(
    cfg: DictConfig,
    model: TunedModel,
    task: Task,
    train_loader: DataLoader,
    eval_loader: DataLoader,
    accelerator: Accelerator,
    on_best: Callable[[dict], None] | None = None,
) -> TrainingOutcome:
    """Train `model` with AdamW and evaluate it every `eval_every` steps (or each epoch), tracking the best."""
    check_choice("trainer.scheduler", cfg.scheduler, SCHEDULERS)
    steps = num_training_steps(cfg, len(train_loader))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * steps)
    optimizer = torch.optim.AdamW(model.method.param_groups(cfg.lr, cfg.weight_decay))
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    if cfg.gradient_checkpointing:
        model.fm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    outcome = TrainingOutcome()
    metric = task.primary_metric

    def evaluate(epoch: int) -> None:
        metrics = task.evaluate(model, eval_loader, accelerator)
        record = {"step": outcome.steps, "epoch": epoch, **metrics}
        outcome.evaluations.append(record)
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=outcome.steps)
        log.info("step %d: %s", outcome.steps, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if outcome.best is None or metrics[metric] > outcome.best[metric]:
            outcome.best = record
            if on_best is not None:
                on_best(record)
        model.train()

    progress = tqdm(total=steps, desc="train", disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    running_loss, running_count = 0.0, 0
    epoch = 0
    model.train()
    while outcome.steps < steps:
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = scored_loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss += loss.detach().float().item()
            running_count += 1
            if not accelerator.sync_gradients:
                continue
            outcome.steps += 1
            progress.update(1)
            if outcome.steps % cfg.log_every == 0 or outcome.steps == steps:
                mean_loss = running_loss / running_count
                outcome.train_losses.append({"step": outcome.steps, "loss": mean_loss})
                accelerator.log({"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0]}, step=outcome.steps)
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                running_loss, running_count = 0.0, 0
            if cfg.eval_every and outcome.steps % cfg.eval_every == 0:
                evaluate(epoch)
            if outcome.steps >= steps:
                break
        epoch += 1
        if not cfg.eval_every:
            evaluate(epoch - 1)
    progress.close()
    if not outcome.evaluations or outcome.evaluations[-1]["step"] != outcome.steps:
        evaluate(epoch - 1)
    return outcome
