"""Reading the server's answers: server-sent events, and whether a batched answer is a greedy
decoding of the model run alone."""

from __future__ import annotations

import json

import torch


def ask(content: str, **fields) -> dict:
    return {"model": "talky", "messages": [{"role": "user", "content": content}], **fields}


def parse_sse(raw: str) -> list:
    """The events of a stream, each a parsed JSON object or the string '[DONE]'; every event
    must be exactly `data: ...` followed by a blank line."""
    assert raw.endswith("\n\n"), repr(raw[-40:])
    events = []
    for block in raw[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, repr(block)
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_text(events: list, choice: int = 0) -> str:
    return "".join(c["delta"].get("content", "") for e in events if isinstance(e, dict) and "choices" in e
                   for c in e["choices"] if c["index"] == choice)


def greedy_gaps(model, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
    """For each generated token, how far its logit is below the largest one when the model runs
    on prompt + response alone (no batch, no padding): 0 where it is the argmax. A batch changes
    the order of floating-point sums, so a batched greedy answer may pick another token only
    where two logits are within rounding of each other: all gaps tiny, not exactly 0."""
    ids = torch.tensor([prompt_ids + response_ids[:-1]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:].float()
    chosen = logits[torch.arange(len(response_ids)), torch.tensor(response_ids)]
    return (logits.max(-1).values - chosen).tolist()


def is_greedy_answer(model, prompt_ids: list[int], response_ids: list[int], tol: float = 1e-3) -> bool:
    return bool(response_ids) and max(greedy_gaps(model, prompt_ids, response_ids)) <= tol
