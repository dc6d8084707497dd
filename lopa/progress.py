"""Progress bars that also read well in a non-tty log (SLURM, pipes): stdout, a line at most every 30 s there,
main process only (stderr stays for the one error line)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, desc: str, accelerator, total: int | None = None, initial: int = 0, nested: bool = False) -> tqdm:
    """A tqdm bar on stdout. `nested` bars (evaluation inside training) vanish when done on a terminal but stay
    as one finished line in a log file, where nothing can be overwritten."""
    tty = sys.stdout.isatty()
    return tqdm(iterable, total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stdout,
                mininterval=0.1 if tty else 30.0, leave=not (nested and tty),
                disable=not accelerator.is_local_main_process)
