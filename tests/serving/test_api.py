"""The model server against OpenAI's wire format, in-process (Starlette's TestClient)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from alignloop.data.chat import encode_prompt
from alignloop.models.generation import Sampling, generate
from tests.serving.helpers import ask, parse_sse, streamed_text

PROMPT = "Tell me a long story about a river."


@pytest.fixture
def client(served):
    s = served(max_new_tokens_limit=64, default_max_tokens=16)
    s.start()
    with TestClient(s.app) as c:
        yield c


def solo_greedy(model, tokenizer, content: str, max_new_tokens: int):
    return generate(model, tokenizer, [[{"role": "user", "content": content}]],
                    Sampling(temperature=0, max_new_tokens=max_new_tokens), show_progress=False)


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["talky"]
    assert models["data"][0]["object"] == "model"
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "talky" and health["worker_alive"]


def test_answer_is_a_chat_completion_equal_to_generate(client, talky):
    """Greedy (temperature 0): the server's answer is `generate`'s, token for token (one row
    each: the same arithmetic), with OpenAI's fields and token counts."""
    model, tokenizer = talky
    r = client.post("/v1/chat/completions", json=ask(PROMPT, temperature=0, max_tokens=12))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "talky" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    solo = solo_greedy(model, tokenizer, PROMPT, 12)
    assert choice["index"] == 0 and choice["message"] == {"role": "assistant", "content": solo.texts[0]}
    assert len(solo.texts[0]) > 5 and len(set(solo.texts[0])) > 3  # the talky model says something
    assert choice["finish_reason"] == ("stop" if solo.finished[0] else "length")
    prompt_tokens = len(encode_prompt(tokenizer, [{"role": "user", "content": PROMPT}]))
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": len(solo.response_ids[0]),
                             "total_tokens": prompt_tokens + len(solo.response_ids[0])}


def test_max_tokens_ends_with_length(client, talky):
    assert not solo_greedy(*talky, PROMPT, 3).finished[0]  # no EOS within 3 tokens here
    body = client.post("/v1/chat/completions", json=ask(PROMPT, temperature=0, max_tokens=3)).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3


def test_stream_is_openai_server_sent_events(client):
    whole = client.post("/v1/chat/completions", json=ask(PROMPT, temperature=0, max_tokens=12)).json()
    with client.stream("POST", "/v1/chat/completions",
                       json=ask(PROMPT, temperature=0, max_tokens=12, stream=True,
                                stream_options={"include_usage": True})) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "talky" for c in events[:-1])
    assert len({c["id"] for c in events[:-1]}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    middle = chunks[1:-1]
    assert len(middle) >= 2 and all(set(c["choices"][0]["delta"]) == {"content"} for c in middle)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    last = chunks[-1]["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert streamed_text(events) == whole["choices"][0]["message"]["content"]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]


def test_a_stop_string_cuts_the_answer_and_is_never_streamed(client):
    """Sampled with a seed (so the same answer again): cut right before the stop string's first
    occurrence, finish_reason "stop"; the stream shows no piece of it."""
    request = ask(PROMPT, temperature=1.0, seed=11, max_tokens=40)
    full = client.post("/v1/chat/completions", json=request).json()["choices"][0]["message"]["content"]
    again = client.post("/v1/chat/completions", json=request).json()["choices"][0]["message"]["content"]
    assert again == full and len(full) > 12
    stop = full[8:11]
    cut = full[: full.find(stop)]
    body = client.post("/v1/chat/completions", json={**request, "stop": [stop, "never-said"]}).json()
    assert body["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": cut},
                                  "finish_reason": "stop", "logprobs": None}
    with client.stream("POST", "/v1/chat/completions", json={**request, "stop": stop, "stream": True}) as r:
        events = parse_sse(r.read().decode())
    assert streamed_text(events) == cut
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_seeded_choices(client):
    request = ask(PROMPT, temperature=1.0, seed=5, max_tokens=10, n=2)
    a = client.post("/v1/chat/completions", json=request).json()
    b = client.post("/v1/chat/completions", json=request).json()
    texts = [c["message"]["content"] for c in a["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1]
    assert texts == [c["message"]["content"] for c in b["choices"]] and texts[0] != texts[1]
    other = client.post("/v1/chat/completions", json={**request, "seed": 6}).json()
    assert [c["message"]["content"] for c in other["choices"]] != texts
    usage = a["usage"]  # the prompt counted once, both choices' tokens
    assert 2 <= usage["completion_tokens"] <= 20 and usage["total_tokens"] == usage["prompt_tokens"] + usage[
        "completion_tokens"]


@pytest.mark.parametrize("change, param", [
    ({"model": "gpt-4"}, "model"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 65}, "max_tokens"),  # the fixture's limit is 64
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"n": 9}, "n"),  # more than the batch
])
def test_bad_requests_get_openai_errors(client, change, param):
    r = client.post("/v1/chat/completions", json={**ask("hi"), **change})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]


def test_too_many_tokens_for_the_model(served):
    s = served(max_new_tokens_limit=5000)
    s.start()
    with TestClient(s.app) as c:
        r = c.post("/v1/chat/completions", json=ask("hi", max_tokens=1020))  # tiny Llama: 1024 positions
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_overloaded_answers_503(served):
    s = served(max_waiting=1)  # worker not started: the first request waits
    with TestClient(s.app) as c:
        s.batcher.submit(_waiting_job())
        r = c.post("/v1/chat/completions", json=ask("hi"))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "overloaded"


def _waiting_job():
    from alignloop.serving.jobs import Job

    return Job(prompt_ids=[1, 2], max_tokens=1, deadline=time.monotonic() + 60, send=lambda e: None)


@pytest.fixture
def slow_model(talky):
    """Each forward pass of the talky model takes 0.1 s longer while the test runs."""
    model, _ = talky
    handle = model.register_forward_hook(lambda *args: time.sleep(0.1))
    yield
    handle.remove()


def test_time_out_returns_what_was_generated_with_an_error(served, slow_model):
    s = served(timeout_s=1.0, max_new_tokens_limit=200)
    s.start()
    with TestClient(s.app) as c:
        r = c.post("/v1/chat/completions", json=ask(PROMPT, temperature=0, max_tokens=200))
        assert r.status_code == 504
        body = r.json()
        assert body["error"]["type"] == "timeout_error" and body["error"]["code"] == "timeout"
        partial = body["partial"]
        assert 1 <= partial["usage"]["completion_tokens"] < 200
        assert partial["choices"][0]["message"]["content"] and partial["choices"][0]["finish_reason"] is None
        with c.stream("POST", "/v1/chat/completions",
                      json=ask(PROMPT, temperature=0, max_tokens=200, stream=True)) as stream:
            events = parse_sse(stream.read().decode())
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
    assert streamed_text(events[:-2])  # the text sent before the time-out stays
    assert all(c["choices"][0]["finish_reason"] is None for c in events[:-2])
