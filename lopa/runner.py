"""Compose FM, task and method from a config, train, evaluate, and write the run's record."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lopa.checkpointing import (
    Checkpointer,
    EpochShuffle,
    check_resume_config,
    checkpoint_settings,
    resume_checkpoint,
)
from lopa.data import split_holdout
from lopa.errors import ConfigError, check_choice
from lopa.models import load_fm, load_tokenizer
from lopa.records import (
    RESULTS_FILE,
    check_trained_config,
    cpu_info,
    git_commit,
    load_trained,
    machine_info,
    push_to_hub,
    save_trained,
    weights_file,
    write_json,
)
from lopa.registry import method_class
from lopa.schema import LOGGERS, MIXED_PRECISIONS, MODES
from lopa.schema import validate as validate_values
from lopa.soft_prompt import MethodContext, TunedModel
from lopa.tasks import build_task
from lopa.tasks.base import Task
from lopa.trainer import evaluation, seed_processes, train

log = logging.getLogger(__name__)

INIT_TEXT_LIMIT = 2000  # training texts used for frequency-based prompt inits


def check_config(cfg: DictConfig) -> None:
    """Fail early, in one line, on required values left as ???, values the table refuses and impossible settings."""
    validate_values(cfg)
    check_choice("mode", cfg.mode, MODES)
    preset_methods = cfg.get("preset_methods")
    if preset_methods and cfg.method.name not in preset_methods:
        raise ConfigError(f"+preset={cfg.preset} is written for method={', '.join(preset_methods)}, not "
                          f"method={cfg.method.name} (drop the preset or pick that method)")
    trains = method_class(cfg.method.name).trains
    if cfg.mode == "train" and not trains:
        raise ConfigError(f"method={cfg.method.name} has nothing to train: run it with mode=evaluate")
    if cfg.mode == "train" and cfg.trainer.lr == 0:
        raise ConfigError("trainer.lr=0 is not allowed when training (allowed: a finite number > 0)")
    if cfg.mode == "evaluate" and not cfg.checkpoint and trains:
        raise ConfigError(f"mode=evaluate with method={cfg.method.name} needs checkpoint=<directory of trained weights> "
                          "(or method=zero_shot for the untrained FM)")
    if cfg.checkpoint:
        weights_file(Path(cfg.checkpoint).expanduser())  # fails early, in one line, when there are none
    check_push_to_hub(cfg)
    checkpoint_settings(cfg.trainer)
    check_resume_config(cfg.trainer.get("resume", "auto"))


def check_push_to_hub(cfg: DictConfig) -> None:
    repo_id = cfg.trainer.get("push_to_hub")
    if repo_id is None:
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        if not isinstance(repo_id, str):
            raise HFValidationError(repo_id)
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(f"trainer.push_to_hub={repo_id!r} is not a Hub repo id (allowed: null or <user>/<name>)") from None
    if cfg.mode != "train" or not cfg.trainer.save_weights:
        raise ConfigError("trainer.push_to_hub uploads the trained weights: it needs mode=train and trainer.save_weights=true")


def make_accelerator(cfg: DictConfig, run_dir: Path) -> Accelerator:
    device = str(cfg.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} requested but no GPU is available here (use device=cpu or device=auto)")
    check_choice("device", device.split(":")[0], ("auto", "cpu", "cuda"))
    check_choice("trainer.mixed_precision", cfg.trainer.mixed_precision, MIXED_PRECISIONS)
    log_with = None
    if cfg.logger.name == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("logger=wandb needs the wandb package (pip install wandb) or use logger=none") from None
        log_with = "wandb"
    else:
        check_choice("logger", cfg.logger.name, LOGGERS)
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    cpu = cpu_info() if on_cpu and cfg.trainer.mixed_precision == "bf16" else {}
    if cpu.get("cpu_bf16") is False:
        log.warning("trainer.mixed_precision=bf16 on a CPU without bf16 instructions (%s): bf16 is emulated, its "
                    "matmuls several times slower than float32 here (trainer.mixed_precision=no)", cpu["cpu"])
    return Accelerator(
        cpu=on_cpu,
        mixed_precision=cfg.trainer.mixed_precision,
        gradient_accumulation_steps=cfg.trainer.grad_accum_steps,
        log_with=log_with,
        project_dir=str(run_dir),
    )


def start_tracking(cfg: DictConfig, accelerator: Accelerator, run_dir: Path) -> None:
    if cfg.logger.name != "wandb":
        return
    mode = cfg.logger.mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    accelerator.init_trackers(
        cfg.logger.project,
        config=OmegaConf.to_container(cfg, resolve=True),
        init_kwargs={"wandb": {"name": cfg.run_name, "entity": cfg.logger.entity, "dir": str(run_dir), "mode": mode}},
    )


def count_parameters(model: TunedModel) -> dict:
    """Trainable parameters (what the method adds or unfreezes) next to the FM's and everything's totals."""
    unique = {id(p): p for p in model.parameters()}.values()
    return {
        "trainable": sum(p.numel() for p in unique if p.requires_grad),
        "fm": sum(p.numel() for p in {id(p): p for p in model.fm.parameters()}.values()),
        "total": sum(p.numel() for p in unique),
        "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in unique if p.requires_grad}),
    }


def trained_config(cfg: DictConfig, model: TunedModel) -> dict:
    """What trained weights are for (their trained_config.json): evaluate mode checks it before using them."""
    return {"method": OmegaConf.to_container(cfg.method, resolve=True), "model": cfg.model.name,
            "task": cfg.task.name, "num_virtual_tokens": model.num_virtual_tokens}


@torch.no_grad()
def prompt_tensors(model: TunedModel, batch: dict | None) -> dict[str, Tensor]:
    """The method's shared [m, d] table (`prompt`: PT's, LoPA's Z_S), where it has one, and the prompt the FM is given
    (`input_prompt`: `method.prompt(batch)` in eval mode on one evaluation batch, e.g. LoPA's gated Z_S ∘ σ(u vᵀ),
    S-IDPG's generated rows), as detached fp32 copies."""
    tensors = {}
    shared = model.method.shared_prompt()
    if shared is not None:
        tensors["prompt"] = shared.detach().float().clone()
    if batch is not None:
        was_training = model.training
        model.eval()
        given = model.method.prompt(batch)
        model.train(was_training)
        if given is not None:
            tensors["input_prompt"] = given.detach().float().clone()
    return tensors


def prompt_scale(model: TunedModel, tensors: dict[str, Tensor], initial: dict[str, Tensor] | None = None) -> dict:
    """Mean row norms of `prompt_tensors` beside the FM's token embeddings' (a prompt far longer than the tokens it
    sits next to dominates a pre-norm decoder's residual stream, issue 12), how much the input prompt varies across
    the batch (`input_prompt_instance_spread`: mean ‖P_b − P̄‖ / ‖P̄‖, 0 for a static prompt) and, given the initial
    tensors, how far each moved: ‖final − initial‖ / ‖initial‖ (a row norm can stay put while the rows turn)."""
    tokens = model.kind.token_embeddings(model.fm).weight.detach().float()
    scale = {"token_embedding_row_norm": round(tokens.norm(dim=-1).mean().item(), 4),
             "token_embedding_std": round(tokens.std().item(), 5)}
    for name, tensor in tensors.items():
        scale[f"{name}_row_norm"] = round(tensor.norm(dim=-1).mean().item(), 4)
        if name == "input_prompt" and tensor.shape[0] > 1:  # how much the prompt depends on the input: 0 for PT
            mean_prompt = tensor.mean(0, keepdim=True)
            scale["input_prompt_instance_spread"] = round(
                ((tensor - mean_prompt).norm(dim=(1, 2)).mean() / mean_prompt.norm()).item(), 5)
        if initial is not None and name in initial:
            scale[f"{name}_relative_change"] = round(((tensor - initial[name]).norm() / initial[name].norm()).item(), 5)
    return scale


def scale_batch(loader, device: torch.device) -> dict | None:
    """The first batch of an evaluation loader, on the device: the fixed inputs the prompt's scale is measured on.

    None for batches without text (CLIP's images: their prompt goes into the class-name texts, beside no batch tokens).
    """
    batch = next(iter(loader), None) if loader is not None else None
    if batch is None or "input_ids" not in batch:
        return None
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


def load_components(cfg: DictConfig, data_dir: str | None) -> tuple:
    """(tokenizer, FM, task) of a config; an FM built from an architecture draws its weights from the seed set before."""
    tokenizer = load_tokenizer(cfg.model)
    fm = load_fm(cfg.model, tokenizer)
    return tokenizer, fm, build_task(cfg.task, tokenizer, cfg.model.kind, data_dir)


def build_model(cfg: DictConfig, tokenizer, fm, task: Task, train_rows: list[dict]) -> TunedModel:
    """Wrap the FM with the configured method; the task learns how many prompt tokens to leave room for."""
    ctx = MethodContext(
        fm=fm,
        tokenizer=tokenizer,
        model_cfg=cfg.model,
        encoder_cfg=cfg.get("encoder"),
        label_word_ids=task.label_word_ids,
        init_texts=[task.text(row) for row in train_rows[:INIT_TEXT_LIMIT]],
    )
    method = method_class(cfg.method.name)(cfg.method, ctx)
    model = TunedModel(fm, method, cfg.model.kind)
    task.num_virtual_tokens = model.num_virtual_tokens
    return model


def shared_run_dir(accelerator: Accelerator, run_dir: Path) -> Path:
    """The main process's run directory on every process (Hydra's timestamped ones may differ by a second)."""
    if accelerator.num_processes == 1:
        return run_dir
    shared = [str(run_dir.resolve())]
    broadcast_object_list(shared, from_process=0)
    return Path(shared[0])


def prepare_run_dir(cfg: DictConfig, accelerator: Accelerator, run_dir: Path) -> Path:
    """The shared run directory with the resolved config in it (only the main process writes into it)."""
    run_dir = shared_run_dir(accelerator, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def load_rows(cfg: DictConfig, task: Task) -> tuple[list[dict], list[dict], list[dict]]:
    """(training, held-out, evaluation) rows; the held-out slice is taken before train_limit, so it is the same
    whatever the limit, and nothing is trained on in evaluate mode."""
    holdout_size = cfg.eval.get("holdout")
    train_rows = task.load("train") if cfg.mode == "train" or holdout_size else []
    holdout_rows = []
    if holdout_size:
        train_rows, holdout_rows = split_holdout(train_rows, holdout_size, cfg.eval.get("holdout_min_words"),
                                                 list(cfg.task.get("text_fields") or []))
    train_rows = train_rows[: cfg.trainer.train_limit] if cfg.mode == "train" else []
    return train_rows, holdout_rows, task.load(cfg.eval.split, cfg.eval.limit)


def run_record(cfg: DictConfig, accelerator: Accelerator, task: Task, started: float, parameters: dict,
               examples: dict[str, list[dict]], keep_predictions: bool) -> dict:
    """What a record says about the run before it trains or evaluates (`examples`: train, eval, holdout)."""
    record = {
        "status": "completed",
        "run_name": cfg.run_name,
        "mode": cfg.mode,
        "method": cfg.method.name,
        "task": cfg.task.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "git_commit": git_commit(),
        "machine": machine_info(),
        "num_processes": accelerator.num_processes,
        "parameters": parameters,
        **{f"num_{split}_examples": len(rows) for split, rows in examples.items()},
        "primary_metric": task.primary_metric,
    }
    if keep_predictions and "label" in (examples["eval"][0] if examples["eval"] else {}):
        record["eval_labels"] = [example["label"] for example in examples["eval"]]  # the order of "predictions"
    return record


def save_best_weights(evaluation: dict, model: TunedModel, accelerator: Accelerator, weights_dir: Path,
                      weights_config: dict) -> None:
    """The `on_best` of a training run: the best evaluation's weights, with what they are for, from the main process."""
    if accelerator.is_main_process:
        save_trained(accelerator.unwrap_model(model), weights_dir, {**weights_config, "evaluation": evaluation})


def train_and_record(cfg: DictConfig, model: TunedModel, task: Task, train_examples: list[dict],
                     eval_loader, holdout_loader, accelerator: Accelerator, run_dir: Path, weights_dir: Path,
                     keep_predictions: bool) -> dict:
    """Train (resuming from the run directory's checkpoint when there is one); returns the record's training part."""
    # The loader's own generator keeps DataLoader iterators from drawing on the global RNG (dropout's), which
    # a resumed run restores at a step boundary: a new iterator there would otherwise shift it.
    train_loader = task.dataloader(train_examples, cfg.trainer.batch_size, shuffle=False,
                                   sampler=EpochShuffle(len(train_examples), cfg.seed),
                                   generator=torch.Generator().manual_seed(cfg.seed),
                                   num_workers=cfg.trainer.num_workers)
    checkpointer = Checkpointer(run_dir, *checkpoint_settings(cfg.trainer), OmegaConf.to_container(cfg, resolve=True),
                                accelerator)
    resume = cfg.trainer.get("resume", "auto")
    resume_from = resume_checkpoint(resume, run_dir)
    if resume is False:
        checkpointer.clear()
    on_best = None
    if cfg.trainer.save_weights:
        on_best = partial(save_best_weights, model=model, accelerator=accelerator, weights_dir=weights_dir,
                          weights_config=trained_config(cfg, model))
    seed_processes(cfg.seed)
    outcome = train(cfg.trainer, model, task, train_loader, eval_loader, accelerator, on_best=on_best,
                    checkpointer=checkpointer, resume_from=resume_from, holdout_loader=holdout_loader,
                    keep_predictions=keep_predictions)
    return {
        "status": "interrupted" if outcome.interrupted else "completed",
        "steps": outcome.steps,
        "evaluations": outcome.evaluations,
        "best": outcome.best,
        "best_is": "the best evaluation" if task.selects_best_evaluation else "the last evaluation (test split)",
        "final": outcome.evaluations[-1] if outcome.evaluations else None,
        "train_losses": outcome.train_losses,
        "weights": str(weights_dir) if cfg.trainer.save_weights else None,
        "resumed_from": outcome.resumed_from,
        "earlier_wall_time_s": outcome.earlier_wall_time_s,  # spent by the processes before the last one
        "checkpoint": outcome.last_checkpoint,
    }


def evaluate_and_record(task: Task, model: TunedModel, eval_loader, holdout_loader, accelerator: Accelerator,
                        keep_predictions: bool) -> dict:
    """Evaluate without training (mode=evaluate); returns the record's evaluation part."""
    model, eval_loader = accelerator.prepare(model, eval_loader)
    if holdout_loader is not None:
        holdout_loader = accelerator.prepare(holdout_loader)
    metrics = evaluation(task, model, eval_loader, accelerator, holdout_loader, keep_predictions)
    return {"steps": 0, "evaluations": [{"step": 0, **metrics}], "best": {"step": 0, **metrics},
            "final": {"step": 0, **metrics}}


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """The whole job; returns the record it wrote to `run_dir/results.json`."""
    started = time.time()
    check_config(cfg)
    set_seed(cfg.seed)  # the same on every process until training starts: FMs built from an architecture, inits
    accelerator = make_accelerator(cfg, run_dir)
    run_dir = prepare_run_dir(cfg, accelerator, run_dir)
    weights_dir = run_dir / "weights"

    data_dir = str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir else None
    tokenizer, fm, task = load_components(cfg, data_dir)
    task.output_dir = run_dir  # tasks that write artefacts (generations) put them beside the record
    train_rows, holdout_rows, eval_rows = load_rows(cfg, task)
    model = build_model(cfg, tokenizer, fm, task, train_rows)
    parameters = count_parameters(model)
    log.info("%s on %s: %s", cfg.method.name, cfg.model.name, parameters)
    if cfg.checkpoint:
        trained_with = load_trained(model, Path(cfg.checkpoint).expanduser())
        check_trained_config(trained_with, trained_config(cfg, model), Path(cfg.checkpoint).expanduser())

    train_examples = [task.encode(row, i, "train") for i, row in enumerate(train_rows)]
    eval_examples = [task.encode(row, i, cfg.eval.split) for i, row in enumerate(eval_rows)]
    holdout_examples = [task.encode(row, i, "holdout") for i, row in enumerate(holdout_rows)]
    eval_loader = task.dataloader(eval_examples, cfg.eval.batch_size, shuffle=False, generator=torch.Generator())
    holdout_loader = (task.dataloader(holdout_examples, cfg.eval.batch_size, shuffle=False, generator=torch.Generator())
                      if holdout_examples else None)
    keep_predictions = bool(cfg.eval.get("save_predictions", False))
    # Unscored, the held-out rows stay out of training (the run trains on what a scored run trains on) and still
    # give the prompt-scale diagnostics their batch below.
    scored_holdout_loader = holdout_loader if cfg.eval.get("score_holdout", True) else None
    model.to(accelerator.device)
    model.method.prepare_examples(train_examples + eval_examples + holdout_examples, cfg.eval.batch_size)
    has_prompt = model.num_virtual_tokens > 0
    measured_on = scale_batch(holdout_loader or eval_loader, accelerator.device) if has_prompt else None
    initial_prompts = prompt_tensors(model, measured_on) if has_prompt else None

    start_tracking(cfg, accelerator, run_dir)
    record = run_record(cfg, accelerator, task, started, parameters,
                        {"train": train_examples, "eval": eval_examples, "holdout": holdout_examples}, keep_predictions)
    if cfg.mode == "train":
        record.update(train_and_record(cfg, model, task, train_examples, eval_loader, scored_holdout_loader,
                                       accelerator, run_dir, weights_dir, keep_predictions))
    else:
        record.update(evaluate_and_record(task, model, eval_loader, scored_holdout_loader, accelerator,
                                          keep_predictions))

    repo_id = cfg.trainer.get("push_to_hub")
    if repo_id and record["status"] == "completed" and accelerator.is_main_process:
        record["pushed_to"] = push_to_hub(weights_dir, repo_id, f"{cfg.run_name} (best {task.primary_metric})")
    if initial_prompts is not None:
        trained = accelerator.unwrap_model(model)
        record["prompt_scale"] = {"initial": prompt_scale(trained, initial_prompts),
                                  "final": prompt_scale(trained, prompt_tensors(trained, measured_on), initial_prompts)}
    record["wall_time_s"] = round(time.time() - started + record.get("earlier_wall_time_s", 0.0), 2)  # every process
    record["config"] = OmegaConf.to_container(cfg, resolve=True)
    if accelerator.is_main_process:
        write_json(run_dir / RESULTS_FILE, record)
    accelerator.end_training()
    return record
