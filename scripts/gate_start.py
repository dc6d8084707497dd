"""How instance-dependent LoPA's prompt is before any training, for each head init std (issue 12).

    python scripts/gate_start.py --data-dir ../shared/data                      # SmolLM2 + MiniLM, SST-2, 0.02 and 0.2
    python scripts/gate_start.py --std 0.02 0.05 0.2 --task glue/rte --examples 64 --data-dir ../shared/data
    python scripts/gate_start.py --data-dir ../shared/data -- model=tiny-llama encoder=tiny-bert   # Hydra overrides

Builds LoPA exactly as a run does (the offline study's config, `method.head_init_std=<std>`), gives it the first
`--examples` training rows and prints (one JSON line per std) the start of the gate σ(u vᵀ): its 5/50/95 % quantiles over all entries, the
std of each entry across inputs, and the record's `input_prompt_instance_spread` (mean ‖P_b − P̄‖ / ‖P̄‖). Training
rows, not the reported split: nothing here is tuned on, but nothing needs the validation split either.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def gate_start(std: float, task_name: str, examples: int, data_dir: str | None, seed: int,
               extra: list[str] | None = None) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    from lopa.runner import build_model, load_components, prompt_scale, prompt_tensors

    overrides = ["experiment=offline_study", f"task={task_name}", "method=lopa", f"method.head_init_std={std}",
                 f"seed={seed}", *([f"data_dir={data_dir}"] if data_dir else []), *(extra or [])]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(seed)
    tokenizer, fm, task = load_components(cfg, str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir else None)
    rows = task.load("train")[:examples]
    model = build_model(cfg, tokenizer, fm, task, rows)
    encoded = [task.encode(row, i, "train") for i, row in enumerate(rows)]
    model.method.prepare_examples(encoded, examples)
    batch = next(iter(task.dataloader(encoded, examples, shuffle=False, generator=torch.Generator())))
    model.eval()  # dropout off, as when the runner measures the prompt
    tensors = prompt_tensors(model, batch)
    gate = (tensors["input_prompt"] / model.method.shared_prompt().detach()).float()  # σ(u vᵀ), [B, m, d]
    quantiles = torch.quantile(gate.flatten()[:1_000_000], torch.tensor([0.05, 0.5, 0.95])).tolist()
    return {"head_init_std": std, "gate_q05_q50_q95": [round(q, 4) for q in quantiles],
            "gate_std_across_inputs": round(gate.std(0).mean().item(), 5),
            "input_prompt_instance_spread": prompt_scale(model, tensors)["input_prompt_instance_spread"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--std", type=float, nargs="+", default=[0.02, 0.2], help="method.head_init_std values")
    parser.add_argument("--task", default="glue/sst2")
    parser.add_argument("--examples", type=int, default=32, help="training rows in the one batch measured")
    parser.add_argument("--data-dir", help="data_dir (default: the config's, i.e. $LOPA_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides after --, e.g. model=tiny-llama")
    args = parser.parse_args(argv)
    for std in args.std:
        print(json.dumps(gate_start(std, args.task, args.examples, args.data_dir, args.seed, args.overrides)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
