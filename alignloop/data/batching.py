"""Length-bucketed batches for the forward-only passes (scoring, evaluation, normalisation).

A forward pass with no gradients keeps no activations for a backward, so it can take many
more sequences at once than a training step; what limits it is the padded size of the batch.
`token_budget_batches` sorts items by length and cuts them into batches of at most
`token_budget` padded tokens:

    cost(batch) = rows(batch) x longest(batch)  <=  token_budget   (a longer item alone)

`windows` reads a stream in windows of about `size` rows, so that sorting (which must see
every item it sorts) never holds more than one window: memory stays bounded however many
items are scored. No torch here: the pure arithmetic is tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def token_budget_batches(lengths: Sequence[int], token_budget: int, rows: Sequence[int] | None = None) -> list[list[int]]:
    """Indices 0..n-1 in batches: sorted by length, longest first (ties in input order), each
    batch as long as sum(rows) x max(lengths) <= token_budget; an item over the budget is a
    batch alone. `rows[i]` is how many sequences item i holds (default 1: a prompt's K
    responses are one item of K rows). Every index appears once."""
    rows = rows if rows is not None else [1] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    n_rows = 0
    for i in order:  # longest first: the first item of a batch sets its width
        width = lengths[current[0]] if current else lengths[i]
        if current and (n_rows + rows[i]) * width > token_budget:
            batches.append(current)
            current, n_rows = [], 0
        current.append(i)
        n_rows += rows[i]
    if current:
        batches.append(current)
    return batches


def windows(items: Iterable[T], size: int, rows=lambda item: 1) -> Iterator[list[T]]:
    """Consecutive lists of `items`, each closed once its rows (`rows(item)`) reach `size`:
    a stream read a window at a time (the last window may be smaller)."""
    window: list[T] = []
    n = 0
    for item in items:
        window.append(item)
        n += rows(item)
        if n >= size:
            yield window
            window, n = [], 0
    if window:
        yield window
