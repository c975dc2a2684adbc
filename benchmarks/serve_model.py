"""Throughput of `alignloop serve-model` at 1 and at N concurrent requests.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/serve_model.py                 # bundled model
    .venv/bin/python benchmarks/serve_model.py --url http://127.0.0.1:8001 --name NAME   # a running server

Starts the server (unless --url) on a free loopback port, sends one warm-up request, then for
each concurrency C (--concurrency 1,8) sends C streaming requests at once, C rounds of them
(held-out prompts, temperature 0.7, seeds 0.., --max-tokens each). Printed per C, one JSON line:
completion tokens in all, wall seconds, tokens/s in all, each request's tokens/s (mean) and time
to its first content piece (mean), and the batcher's counters (prefills, peak rows). With
--compare-generate, then the same prompts through `generate` in this process (no server), in
batches of C: its tokens/s in all, the yardstick the server's batching is measured against;
and the server's Batcher in this process (no HTTP, no client), C jobs at once: what the
decoding loop itself does, apart from the web side and the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts() -> list[str]:
    lines = (ROOT / "alignloop" / "assets" / "prompts_heldout.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines if line.strip()]


async def one(client: httpx.AsyncClient, name: str, prompt: str, seed: int, max_tokens: int) -> dict:
    body = {"model": name, "messages": [{"role": "user", "content": prompt}], "temperature": 0.7, "seed": seed,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    start, first, usage = time.perf_counter(), None, None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - start
    return {"seconds": time.perf_counter() - start, "first_piece_s": first, "tokens": usage["completion_tokens"]}


async def measure(url: str, name: str, concurrency: int, rounds: int, max_tokens: int) -> dict:
    texts = prompts()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await one(client, name, texts[0], 0, 8)  # warm-up
        before = (await client.get("/health")).json()
        start, results = time.perf_counter(), []
        for r in range(rounds):
            batch = [one(client, name, texts[(r * concurrency + i) % len(texts)], r * concurrency + i, max_tokens)
                     for i in range(concurrency)]
            results += await asyncio.gather(*batch)
        wall = time.perf_counter() - start
        after = (await client.get("/health")).json()
    tokens = sum(x["tokens"] for x in results)
    return {"concurrency": concurrency, "requests": len(results), "completion_tokens": tokens,
            "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "per_request_tokens_per_s": round(sum(x["tokens"] / x["seconds"] for x in results) / len(results), 1),
            "first_piece_s": round(sum(x["first_piece_s"] or 0 for x in results) / len(results), 3),
            "prefills": after["prefills"] - before["prefills"], "peak_rows": after["peak_rows"]}


def generate_rate(model_name: str, concurrency: int, rounds: int, max_tokens: int) -> dict:
    from alignloop.models.generation import Sampling, generate
    from alignloop.models.loading import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(model_name), load_tokenizer(model_name)
    texts = prompts()
    chats = [[{"role": "user", "content": texts[i % len(texts)]}] for i in range(concurrency * rounds)]
    sampling = Sampling(temperature=0.7, max_new_tokens=max_tokens, batch_size=concurrency)
    generate(model, tokenizer, chats[:1], Sampling(max_new_tokens=8), show_progress=False)  # warm-up
    start = time.perf_counter()
    out = generate(model, tokenizer, chats, sampling, show_progress=False)
    wall = time.perf_counter() - start
    tokens = sum(len(r) for r in out.response_ids)
    return {"generate_batch": concurrency, "sequences": len(chats), "completion_tokens": tokens,
            "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1)}


def batcher_rate(model_name: str, concurrency: int, rounds: int, max_tokens: int) -> dict:
    import threading

    from alignloop.data.chat import encode_prompt
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.serving.batcher import Batcher
    from alignloop.serving.jobs import Job

    model, tokenizer = load_causal_lm(model_name), load_tokenizer(model_name)
    texts = prompts()
    batcher = Batcher(model, tokenizer, max_batch_size=max(concurrency, 1))
    batcher.start()

    def round_of(r: int, c: int, tokens: int) -> None:
        done = [threading.Event() for _ in range(c)]
        for i in range(c):
            chat = [{"role": "user", "content": texts[(r * c + i) % len(texts)]}]
            batcher.submit(Job(prompt_ids=encode_prompt(tokenizer, chat), max_tokens=tokens,
                               deadline=time.monotonic() + 3600, temperature=0.7, seed=r * c + i,
                               send=lambda e, ev=done[i]: ev.set() if e.finish else None))
        for ev in done:
            ev.wait()

    round_of(0, 1, 8)  # warm-up
    before, start = batcher.stats.tokens, time.perf_counter()
    for r in range(rounds):
        round_of(r, concurrency, max_tokens)
    wall = time.perf_counter() - start
    tokens = batcher.stats.tokens - before
    batcher.close()
    return {"batcher_in_process": concurrency, "completion_tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--url", help="a running server (else one is started)")
    parser.add_argument("--name", help="the model name the server serves (with --url)")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--compare-generate", action="store_true", help="also time `generate` in batches of C")
    args = parser.parse_args()
    proc, url, name = None, args.url, args.name or args.model
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "alignloop.cli", "serve-model", "--model", args.model,
                                 "--port", str(port), "--max-batch-size", str(args.max_batch_size),
                                 "--log-level", "warning"], cwd=ROOT, env=os.environ.copy())
        deadline = time.time() + 300
        while True:
            try:
                httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit("the server did not start")
                time.sleep(0.5)
    levels = [int(x) for x in args.concurrency.split(",")]
    try:
        for c in levels:
            print(json.dumps(asyncio.run(measure(url, name, c, args.rounds, args.max_tokens))), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    if args.compare_generate:
        for c in levels:
            print(json.dumps(generate_rate(args.model, c, args.rounds, args.max_tokens)), flush=True)
            print(json.dumps(batcher_rate(args.model, c, args.rounds, args.max_tokens)), flush=True)


if __name__ == "__main__":
    main()
