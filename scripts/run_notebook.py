"""Execute notebooks/analysis.ipynb headless, as CI does: python scripts/run_notebook.py [--results DIR] [--output FILE].

The notebook reads only <results>/*.csv; any cell error fails the run (exit 1). The committed notebook is left as
it is unless --output names it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def execute(notebook: Path = NOTEBOOK, results: Path = REPO / "results", output: Path | None = None,
            timeout_s: int = 600) -> nbformat.NotebookNode:
    """Run every cell in a fresh python3 kernel with LOPA_RESULTS_DIR=results; returns the executed notebook."""
    nb = nbformat.read(notebook, as_version=4)
    os.environ["LOPA_RESULTS_DIR"] = str(Path(results).resolve())  # the kernel inherits this process's environment
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    if output:
        nbformat.write(nb, output)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--results", type=Path, default=REPO / "results", help="directory of the *.csv tables")
    parser.add_argument("--output", type=Path, help="also write the executed notebook here")
    args = parser.parse_args(argv)
    try:
        execute(args.notebook, args.results, args.output)
    except CellExecutionError as error:
        print(f"error: {args.notebook} failed on {args.results}:\n{error}", file=sys.stderr)
        return 1
    print(f"{args.notebook}: executed on {args.results}" + (f" -> {args.output}" if args.output else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
