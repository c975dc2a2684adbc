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

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
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


def consecutive_chunks(costs: Sequence[int | Mapping[Hashable, int]], budget: int) -> list[tuple[int, int]]:
    """[start, stop) ranges that cut items 0..n-1, in order, into consecutive chunks whose
    costs sum to at most `budget` (an item over the budget is a chunk alone); budget 0: one
    chunk of everything. E.g. costs [3, 3, 5, 1], budget 6 -> [(0, 2), (2, 4)].

    An item's cost is a number, or its parts (key -> cost): a part that several items of one
    chunk share is counted once (records that share a prompt, run once per chunk)."""
    if not budget:
        return [(0, len(costs))] if len(costs) else []
    chunks, start, total, seen = [], 0, 0, set()
    for i, item in enumerate(costs):
        parts = item if isinstance(item, Mapping) else {(i,): item}
        if i > start and total + sum(c for k, c in parts.items() if k not in seen) > budget:
            chunks.append((start, i))
            start, total, seen = i, 0, set()
        total += sum(c for k, c in parts.items() if k not in seen)
        seen.update(parts)
    if start < len(costs):
        chunks.append((start, len(costs)))
    return chunks


def even_chunks(chunks_by_process: list[list[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
    """Each process's [start, stop) chunks, the one of most items split in half (the first
    such) until every process has as many chunks as the process with most: then every process
    runs as many forwards, as FSDP / ZeRO-3 need (each forward gathers the weights, a
    collective). A process has at least as many items as any process has chunks, so the
    splits always succeed. E.g. [[(0, 4)], [(4, 5), (5, 8)]] -> [[(0, 2), (2, 4)], [(4, 5), (5, 8)]]."""
    most = max(len(c) for c in chunks_by_process)
    out = []
    for chunks in chunks_by_process:
        chunks = list(chunks)
        while len(chunks) < most:
            i = max(range(len(chunks)), key=lambda j: chunks[j][1] - chunks[j][0])
            a, b = chunks[i]
            if b - a < 2:
                raise ValueError(f"cannot split {chunks} into {most} chunks")
            chunks[i: i + 1] = [(a, (a + b) // 2), ((a + b) // 2, b)]
        out.append(chunks)
    return out


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
