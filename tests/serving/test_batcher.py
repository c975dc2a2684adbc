"""Concurrent requests are decoded together, each with its own settings and stopping, and each
answer is what the model alone would say."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from alignloop.data.chat import encode_prompt
from alignloop.serving.jobs import Event, Job
from tests.serving.helpers import ask, is_greedy_answer

PROMPTS = ["Hi", "Tell me a long story about a river.", "What is 2+2?", "Name three colours of the rainbow, please.",
           "Why is the sky blue?"]


class Recorder:
    """A job's events, collected from the worker thread."""

    def __init__(self, on_event=None):
        self.events: list[Event] = []
        self.done = threading.Event()
        self.on_event = on_event

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if self.on_event:
            self.on_event(event)
        if event.finish:
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)

    @property
    def last(self) -> Event:
        return self.events[-1]


def job(tokenizer, content: str, send, **fields) -> Job:
    return Job(prompt_ids=encode_prompt(tokenizer, [{"role": "user", "content": content}]),
               deadline=time.monotonic() + 60, send=send, **{"max_tokens": 8, "temperature": 0.0, **fields})


def test_requests_sent_together_are_one_batch_and_each_gets_its_own_greedy_answer(served, talky):
    """Five requests wait while the worker is stopped; started, it prefills them in one batch and
    decodes all five rows together. Each answer is a greedy decoding of the model run on that
    prompt alone (its batch changes the order of float sums, so ties within 1e-3 may go either
    way), and each stops at its own max_tokens."""
    model, tokenizer = talky
    s = served(max_choices=8)
    recorders = [Recorder() for _ in PROMPTS]
    jobs = [job(tokenizer, p, r, max_tokens=4 + 3 * i) for i, (p, r) in enumerate(zip(PROMPTS, recorders))]
    for j in jobs:
        s.batcher.submit(j)
    s.start()
    assert all(r.done.wait(30) for r in recorders)
    stats = s.batcher.stats
    assert stats.prefills == 1 and stats.peak_rows == len(PROMPTS) and stats.requests == len(PROMPTS)
    assert stats.steps == max(r.last.completion_tokens for r in recorders)  # one step per token of the longest
    for j, r in zip(jobs, recorders):
        ids = r.last.token_ids
        assert r.last.finish in ("stop", "length") and r.last.completion_tokens == len(ids)
        assert len(ids) == j.max_tokens or ids[-1] in s.batcher.eos
        assert is_greedy_answer(model, j.prompt_ids, ids)
        assert r.text == tokenizer.decode(ids, skip_special_tokens=True)


def test_a_request_joins_a_running_batch_and_a_short_one_leaves_first(served, talky):
    """B arrives while A decodes (A's first event holds the worker until B is queued), joins the
    running batch, and ends (max_tokens 3) while A goes on: continuous batching."""
    model, tokenizer = talky
    s = served()
    b_queued = threading.Event()
    finished: list[str] = []
    a_rec = Recorder(on_event=lambda e: b_queued.wait(10) if len(a_rec.events) == 1 else None)
    b_rec = Recorder()
    a = job(tokenizer, PROMPTS[1], lambda e: (a_rec(e), e.finish and finished.append("a")), max_tokens=30)
    b = job(tokenizer, PROMPTS[3], lambda e: (b_rec(e), e.finish and finished.append("b")), max_tokens=3)
    s.batcher.submit(a)
    s.start()
    while not a_rec.events:
        time.sleep(0.005)
    s.batcher.submit(b)
    b_queued.set()
    assert a_rec.done.wait(30) and b_rec.done.wait(30)
    stats = s.batcher.stats
    assert stats.prefills == 2 and stats.joined_running == 1 and stats.peak_rows == 2
    assert finished == ["b", "a"] and b_rec.last.completion_tokens == 3
    assert a_rec.last.completion_tokens == 30 or a_rec.last.token_ids[-1] in s.batcher.eos
    for j, r in ((a, a_rec), (b, b_rec)):
        assert is_greedy_answer(model, j.prompt_ids, r.last.token_ids)


def test_rows_sample_with_their_own_settings_and_seeds(served, talky):
    """A seeded sampled row draws the same tokens alone and beside other rows (its own
    generator), while a greedy row and a sampled one share a batch."""
    _, tokenizer = talky
    alone, s = Recorder(), served()
    s.batcher.submit(job(tokenizer, PROMPTS[1], alone, temperature=1.0, top_p=0.9, seed=3, max_tokens=12))
    s.start()
    assert alone.done.wait(30)
    s2 = served()
    together = [Recorder() for _ in range(3)]
    s2.batcher.submit(job(tokenizer, PROMPTS[0], together[0], temperature=0.0, max_tokens=12))
    s2.batcher.submit(job(tokenizer, PROMPTS[1], together[1], temperature=1.0, top_p=0.9, seed=3, max_tokens=12))
    s2.batcher.submit(job(tokenizer, PROMPTS[1], together[2], temperature=1.0, top_p=0.9, seed=4, max_tokens=12))
    s2.start()
    assert all(r.done.wait(30) for r in together)
    assert s2.batcher.stats.prefills == 1 and s2.batcher.stats.peak_rows == 3
    assert together[1].last.token_ids == alone.last.token_ids
    assert together[2].last.token_ids != alone.last.token_ids


def test_cancelled_rows_leave_the_batch(served, talky):
    _, tokenizer = talky
    s = served()
    gone = Recorder()
    j = job(tokenizer, PROMPTS[1], gone, max_tokens=500)
    j_cancel = threading.Event()

    def send(event):
        gone(event)
        if len(gone.events) == 2:
            j.cancelled = True
            j_cancel.set()

    j.send = send
    s.batcher.submit(j)
    s.start()
    assert j_cancel.wait(30)
    deadline = time.monotonic() + 10
    while s.batcher.health()["running_rows"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.batcher.health()["running_rows"] == 0 and len(gone.events) == 2


@pytest.mark.anyio
async def test_concurrent_http_requests_are_batched(served, talky):
    """Over HTTP (httpx's ASGI transport): four clients at once, streaming and not; the worker,
    started once all four wait, runs one prefill for them; each gets its own greedy answer."""
    model, tokenizer = talky
    s = served()
    answers: dict[int, list[int]] = {}
    submit = s.batcher.submit

    def recording_submit(j: Job) -> None:  # note each job's token ids as its last event passes
        send = j.send

        def spy(event: Event, j=j) -> None:
            if event.finish:
                answers[id(j)] = (j.prompt_ids, event.token_ids)
            send(event)

        j.send = spy
        submit(j)

    s.batcher.submit = recording_submit
    transport = httpx.ASGITransport(app=s.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://server", timeout=60) as client:
        async def one(i: int) -> str:
            body = ask(PROMPTS[i], temperature=0, max_tokens=6, stream=i % 2 == 1)
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
            return r.text

        tasks = [asyncio.create_task(one(i)) for i in range(4)]
        while s.batcher.health()["waiting"] < 4:
            await asyncio.sleep(0.01)
        s.start()
        texts = await asyncio.gather(*tasks)
    assert s.batcher.stats.prefills == 1 and s.batcher.stats.peak_rows == 4
    assert len(answers) == 4 and all(is_greedy_answer(model, p, ids) for p, ids in answers.values())
    assert texts[1].endswith("data: [DONE]\n\n") and '"object":"chat.completion"' in texts[0]


@pytest.fixture
def anyio_backend():
    return "asyncio"
