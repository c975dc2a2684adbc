"""One progress display for every long loop (rich): what runs, how far, how fast."""

from __future__ import annotations

import os
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def progress_disabled() -> bool:
    return os.environ.get("ALIGNLOOP_NO_PROGRESS", "") not in ("", "0")


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True):
    """Yields `advance(n=1, **fields)`; extra fields (loss=..., kl=...) show after the bar."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False, disable=not enabled or progress_disabled()) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: float | str) -> None:
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            progress.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance


@contextmanager
def throughput_bar(description: str, total: int | None, enabled: bool = True):
    """A `progress_bar` for a pass over sequences (scoring, evaluation, sampling): yields
    `advance(sequences, tokens)`, and the bar shows sequences/s and tokens/s since it opened."""
    import time

    start, done = time.perf_counter(), [0, 0]
    with progress_bar(description, total, enabled) as step:
        def advance(sequences: int, tokens: int) -> None:
            done[0] += sequences
            done[1] += tokens
            seconds = max(time.perf_counter() - start, 1e-9)
            step(sequences, **{"seq/s": done[0] / seconds, "tok/s": done[1] / seconds})

        yield advance
