"""Continuous batching of concurrent requests on one worker thread.

Requests wait in a queue; the worker decodes every running row together, one token per
iteration, with models/decoding.py's `DecodeBatch` (the loop `generate` runs). At the start of
each iteration the waiting requests that fit (`max_batch_size` rows in all; a request of n
choices is n rows) join: their prefill runs and their rows are appended to the running batch.
A row leaves the batch as soon as it ends (EOS, a stop string, max_tokens, its deadline), so a
short answer never waits for a long one. Each row samples with its own temperature / top-p and
its own generator (seeded by the request's seed), so what it draws does not depend on the
rows beside it. An idle worker that sees a request waits `window_s` for more before the first
prefill, so requests sent together start together.

Per iteration, with R running rows and J joining ones:
    1. logits (R, V) = batch.step(last tokens)          the running rows' next token
    2. logits (J, V) = batch.add(joining prompts)       the joining rows' prefill
    3. tokens (R + J,) = pick_tokens(logits, per-row settings)
    4. each row: append, decode, send the new visible text; drop the rows that ended

The web side never blocks: it submits a `Job` and reads the `Event`s its `send` delivers.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch

from alignloop.data.chat import encode_prompt
from alignloop.models.decoding import DecodeBatch, RowSampling, pick_tokens
from alignloop.models.generation import contiguous_lm_head, eos_ids, pad_token
from alignloop.serving.jobs import Event, Finish, Job, Overloaded, visible_end


@dataclass
class BatcherStats:
    """Counters of what the worker did (GET /health shows them)."""

    prefills: int = 0  # prefill forward passes (each admits the requests that joined together)
    steps: int = 0  # iterations (one token for every running row)
    peak_rows: int = 0  # most rows decoded in one iteration
    joined_running: int = 0  # requests that joined a batch already running
    requests: int = 0  # requests admitted
    tokens: int = 0  # tokens generated


@dataclass
class Row:
    """One choice of a job while it is decoded."""

    job: Job
    choice: int
    sampling: RowSampling
    tokens: list[int] = field(default_factory=list)
    shown: int = 0  # characters of its text already sent


def row_seed(seed: int | None, choice: int) -> int:
    """The generator seed of a request's choice `choice`; a request without a seed gets a fresh one."""
    return secrets.randbits(62) if seed is None else (seed * 1_000_003 + choice) % 2**63


class Batcher:
    """The generator behind the model server (the `Engine` the web app talks to)."""

    def __init__(self, model, tokenizer, max_batch_size: int = 8, max_waiting: int = 64, window_s: float = 0.005):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_waiting, self.window_s = max_batch_size, max_waiting, window_s
        self.eos = set(eos_ids(model, tokenizer))
        self.pad_id = pad_token(tokenizer, sorted(self.eos))
        self.max_positions = int(getattr(model.config, "max_position_embeddings", None) or 2048)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self.device = next(model.parameters()).device
        self.stats = BatcherStats()
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._rows: list[Row] = []
        self._batch = DecodeBatch(model, self.pad_id)
        self._last: torch.Tensor | None = None  # (R,) the running rows' last tokens
        self._closing = False
        self._thread: threading.Thread | None = None
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not to be used by two threads at once

    # ---------------------------------------------------------------- the web side
    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        with self._tokenizer_lock:
            return encode_prompt(self.tokenizer, messages)

    def encode_text(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return self.tokenizer(text)["input_ids"]

    def submit(self, job: Job) -> None:
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                raise Overloaded(f"{len(self._waiting)} requests are already waiting (--max-waiting)")
            self._waiting.append(job)
            self._wake.notify()

    def health(self) -> dict:
        return {"waiting": len(self._waiting), "running_rows": len(self._rows),
                "worker_alive": bool(self._thread and self._thread.is_alive()), **asdict(self.stats)}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alignloop-serve-model", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ---------------------------------------------------------------- the worker
    def _run(self) -> None:
        torch.set_grad_enabled(False)  # per thread
        with contiguous_lm_head(self.model):
            while True:
                joining = self._take()
                if joining is None:
                    return
                try:
                    self._iterate(joining)
                except Exception as err:  # noqa: BLE001 - a failed forward ends its rows, not the server
                    rows = self._rows + [Row(job, c, RowSampling()) for job in joining for c in range(job.n)]
                    for row in rows:
                        self._send(row.job, Event(row.choice, finish="error", completion_tokens=len(row.tokens),
                                                  message=f"generation failed: {type(err).__name__}: {err}"))
                    self._rows, self._last = [], None
                    self._batch = DecodeBatch(self.model, self.pad_id)

    def _take(self) -> list[Job] | None:
        """The waiting jobs that join now (blocks while there is nothing to do); None: closing."""
        with self._wake:
            while not self._rows and not self._waiting and not self._closing:
                self._wake.wait()
            if self._closing:
                return None
            if not self._rows and self.window_s > 0:  # idle: let requests sent together arrive together
                end = time.monotonic() + self.window_s
                while sum(j.n for j in self._waiting) < self.max_batch_size and time.monotonic() < end:
                    self._wake.wait(end - time.monotonic())
            if self._rows and not self._batch.can_join:
                return []
            free, joining, now = self.max_batch_size - len(self._rows), [], time.monotonic()
            while self._waiting and self._waiting[0].n <= free:
                job = self._waiting.popleft()
                if job.cancelled:
                    continue
                if now > job.deadline:
                    for c in range(job.n):
                        self._send(job, Event(c, finish="timeout"))
                    continue
                joining.append(job)
                free -= job.n
            return joining

    def _iterate(self, joining: list[Job]) -> None:
        logits = []
        if self._rows:  # 1. the running rows' next token
            logits.append(self._batch.step(self._last))
        new = [Row(job, c, RowSampling(job.temperature, job.top_p, max(job.top_k, 0), generator=self._generator(job, c)))
               for job in joining for c in range(job.n)]
        if new:  # 2. the joining rows' prefill
            logits.append(self._batch.add([row.job.prompt_ids for row in new]))
            self.stats.prefills += 1
            self.stats.requests += len(joining)
            self.stats.joined_running += len(joining) if self._rows else 0
        if not logits:
            return
        rows = self._rows + new
        tokens = pick_tokens(torch.cat(logits), [row.sampling for row in rows]).tolist()  # 3.
        self.stats.steps += 1
        self.stats.peak_rows = max(self.stats.peak_rows, len(rows))
        self.stats.tokens += len(rows)
        keep = [i for i, (row, token) in enumerate(zip(rows, tokens)) if not self._advance(row, token)]  # 4.
        if len(keep) < len(rows):
            self._batch.keep(keep)
        self._rows = [rows[i] for i in keep]
        self._last = torch.tensor([tokens[i] for i in keep], dtype=torch.long)

    def _generator(self, job: Job, choice: int) -> torch.Generator | None:
        if job.temperature <= 0:
            return None
        return torch.Generator(device=self.device).manual_seed(row_seed(job.seed, choice))

    def _advance(self, row: Row, token: int) -> bool:
        """Append `token` to `row` and send what became visible; whether the row has ended."""
        if row.job.cancelled:
            return True
        row.tokens.append(token)
        finish: Finish | None = None
        if token in self.eos:
            finish = "stop"
        with self._tokenizer_lock:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        end, stopped = visible_end(text, row.job.stops)
        if stopped:
            finish = "stop"
        elif finish is None and len(row.tokens) >= row.job.max_tokens:
            finish = "length"
        elif finish is None and time.monotonic() > row.job.deadline:
            finish = "timeout"
        if finish is not None and not stopped:
            end = len(text)  # nothing more is coming: what was held back is the answer's end
        piece, row.shown = text[row.shown:end], max(row.shown, end)
        if piece or finish:
            self._send(row.job, Event(row.choice, piece, finish, len(row.tokens),
                                      token_ids=list(row.tokens) if finish else None))
        return finish is not None

    @staticmethod
    def _send(job: Job, event: Event) -> None:
        try:
            job.send(event)
        except RuntimeError:  # the web side's event loop has closed: nobody is listening
            job.cancelled = True
