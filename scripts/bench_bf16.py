"""Is bf16 native on this CPU? One matmul of a SmolLM2-sized layer in float32 and in bfloat16, one thread.

    python scripts/bench_bf16.py            # prints the CPU, its bf16 flag and the median times
    python scripts/bench_bf16.py --out results/bench_bf16.json

Without AVX512-BF16/AMX, torch emulates bf16 and `trainer.mixed_precision=bf16` slows training instead of speeding
it up (the runner warns); records carry the same `cpu_bf16` flag (lopa.records.cpu_info).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def median_ms(left, right, repeats: int) -> float:
    for _ in range(3):  # warm-up
        left @ right
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        left @ right
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    import torch

    from lopa.records import machine_info, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=512, help="tokens in the batch (the left operand's rows)")
    parser.add_argument("--shape", type=int, nargs=2, default=[576, 1536], help="the layer: d_in d_out (SmolLM2's MLP)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, help="also write the result here (JSON, with the machine and command)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    left, right = torch.randn(args.rows, args.shape[0]), torch.randn(*args.shape)
    result = {dtype: median_ms(left.to(getattr(torch, dtype)), right.to(getattr(torch, dtype)), args.repeats)
              for dtype in ("float32", "bfloat16")}
    machine = machine_info()
    record = {"command": " ".join(["python", "scripts/bench_bf16.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine, "matmul": f"[{args.rows}, {args.shape[0]}] @ {args.shape}", "threads": 1,
              "median_ms": {dtype: round(ms, 4) for dtype, ms in result.items()},
              "bf16_over_fp32": round(result["bfloat16"] / result["float32"], 2)}
    print(json.dumps({k: record[k] for k in ("matmul", "median_ms", "bf16_over_fp32")}),
          f"cpu={machine['cpu']!r} cpu_bf16={machine['cpu_bf16']}")
    if args.out:
        write_json(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
