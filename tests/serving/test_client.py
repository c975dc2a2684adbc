"""The generation-server client (serving/client.py) and what it needs of the server:
/v1/completions with a prompt of token ids and the sampled token ids back; the client against
a test double of the HTTP layer (its requests, its errors); and `alignloop generate` through
the server equal to `generate` in-process (greedy)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from alignloop.config import ConfigError
from alignloop.serving.client import SEED_STRIDE, GenerationClient, GenerationServerError, Settings, api_base
from alignloop.serving.remote import generate_remote, served_roles
from tests.serving.helpers import is_greedy_answer

CHAT = [{"role": "user", "content": "Tell me about the sea."}]


def test_completions_continue_token_ids_and_return_the_sampled_ones(served):
    from alignloop.data.chat import encode_prompt

    s = served()
    s.start()
    prompt = encode_prompt(s.tokenizer, CHAT)
    with TestClient(s.app) as c:
        r = c.post("/v1/completions", json={"model": "talky", "prompt": prompt, "temperature": 0, "max_tokens": 6,
                                            "return_token_ids": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "text_completion" and body["model"] == "talky"
        choice = body["choices"][0]
        ids = choice["token_ids"]
        assert len(ids) == body["usage"]["completion_tokens"] and is_greedy_answer(s.model, prompt, ids)
        assert choice["text"] == s.tokenizer.decode(ids, skip_special_tokens=True)
        assert body["usage"]["prompt_tokens"] == len(prompt)
        # the same prompt as text (tokenised by the server: the template's text, no special tokens added)
        text = s.tokenizer.decode(prompt)
        as_text = c.post("/v1/completions", json={"model": "talky", "prompt": text, "temperature": 0,
                                                  "max_tokens": 6, "return_token_ids": True}).json()
        assert as_text["usage"]["prompt_tokens"] == len(s.tokenizer(text)["input_ids"])
        # a batch of one prompt is that prompt; token ids only when asked for
        plain = c.post("/v1/completions", json={"model": "talky", "prompt": [prompt], "temperature": 0,
                                                "max_tokens": 6}).json()
        assert plain["choices"][0]["token_ids"] is None and plain["choices"][0]["text"] == choice["text"]
        # n seeded choices: each its own draw, the same again for the same seed
        seeded = {"model": "talky", "prompt": prompt, "n": 3, "seed": 7, "max_tokens": 6, "return_token_ids": True}
        first = [ch["token_ids"] for ch in c.post("/v1/completions", json=seeded).json()["choices"]]
        again = [ch["token_ids"] for ch in c.post("/v1/completions", json=seeded).json()["choices"]]
        assert first == again and len(first) == 3 and len({tuple(x) for x in first}) > 1
        # bad requests name the field
        vocab = s.batcher.vocab_size
        for bad, param in (({"prompt": [vocab]}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": [1, -1]}, "prompt"),
                           ({"prompt": prompt, "stream": True}, "stream"), ({"prompt": prompt, "model": "x"}, "model"),
                           ({"prompt": prompt, "max_tokens": 5000}, "max_tokens")):
            r = c.post("/v1/completions", json={"model": "talky", **bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (bad, r.text)


def test_top_k_one_is_greedy(served):
    from alignloop.data.chat import encode_prompt

    s = served()
    s.start()
    prompt = encode_prompt(s.tokenizer, CHAT)
    with TestClient(s.app) as c:
        greedy = c.post("/v1/completions", json={"model": "talky", "prompt": prompt, "temperature": 0,
                                                 "max_tokens": 6, "return_token_ids": True}).json()
        top1 = c.post("/v1/completions", json={"model": "talky", "prompt": prompt, "temperature": 1.5, "top_k": 1,
                                               "seed": 3, "max_tokens": 6, "return_token_ids": True}).json()
    assert top1["choices"][0]["token_ids"] == greedy["choices"][0]["token_ids"]


def double(handler) -> GenerationClient:
    """A client whose HTTP layer is `handler(request) -> httpx.Response`."""
    return GenerationClient("http://gen.test:8000", model="m", timeout_s=5, concurrency=3,
                            http=httpx.Client(transport=httpx.MockTransport(handler)))


def answer_for(body: dict, token_ids=True) -> dict:
    n = body["n"]
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
            "system_fingerprint": "fp", "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
            "choices": [{"index": i, "text": f"t{body['prompt'][0]}-{i}", "finish_reason": "stop",
                         **({"token_ids": [body["prompt"][0], 99]} if token_ids else {})} for i in reversed(range(n))]}


def test_the_client_sends_token_ids_seeds_each_prompt_and_keeps_their_order():
    seen = []
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with lock:
            seen.append((str(request.url), body))
        time.sleep(0.01 * (5 - body["prompt"][0]))  # later prompts answer first
        return httpx.Response(200, json=answer_for(body))

    client = double(handler)
    settings = Settings(n=2, temperature=0.7, top_p=0.9, top_k=0, max_tokens=5, seed=4)
    answers = client.complete_all([[p, 7] for p in range(5)], settings)
    assert [a.token_ids for a in answers] == [[[p, 99], [p, 99]] for p in range(5)]
    assert [a.texts for a in answers] == [[f"t{p}-0", f"t{p}-1"] for p in range(5)]  # choices by index
    assert {u for u, _ in seen} == {"http://gen.test:8000/v1/completions"}
    by_prompt = {b["prompt"][0]: b for _, b in seen}
    assert [by_prompt[p]["seed"] for p in range(5)] == [4 * SEED_STRIDE + p for p in range(5)]
    first = by_prompt[0]
    assert (first["prompt"], first["n"], first["temperature"], first["top_p"], first["top_k"], first["max_tokens"],
            first["return_token_ids"], first["model"]) == ([0, 7], 2, 0.7, 0.9, -1, 5, True, "m")
    assert "stop" not in first and answers[0].fingerprint == "fp" and answers[0].model == "m"


def test_the_client_names_url_status_and_body_when_a_request_fails():
    def error(request):
        return httpx.Response(400, json={"error": {"message": "n 9 is more than this server's batch size, 8"}})

    with pytest.raises(GenerationServerError) as err:
        double(error).complete([1, 2], Settings(n=9))
    assert err.value.status == 400 and err.value.url == "http://gen.test:8000/v1/completions"
    assert "HTTP 400" in str(err.value) and "batch size, 8" in str(err.value) and "gen.test:8000" in str(err.value)

    def refused(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(GenerationServerError, match="no answer.*connection refused") as err:
        double(refused).complete([1], Settings())
    assert err.value.status is None

    def slow(request):
        raise httpx.ReadTimeout("timed out")

    with pytest.raises(GenerationServerError, match="no answer within 5 s"):
        double(slow).complete([1], Settings())

    def short(request):
        return httpx.Response(200, json=answer_for({**json.loads(request.content), "n": 1}))

    with pytest.raises(GenerationServerError, match="1 choices for n = 2"):
        double(short).complete([1], Settings(n=2))

    with pytest.raises(GenerationServerError, match="listing the models.*HTTP 404"):
        GenerationClient("http://gen.test", http=httpx.Client(transport=httpx.MockTransport(
            lambda r: httpx.Response(404, text="not found")))).model
    with pytest.raises(ValueError, match="expected http://HOST:PORT"):
        api_base("gen.test:8000")
    assert api_base("http://h:1/v1/") == api_base("http://h:1") == "http://h:1/v1"


def test_a_trainer_refuses_a_server_without_token_ids_and_generate_tokenises_its_text(tiny):
    from alignloop.models.generation import Sampling, eos_ids

    model, tokenizer = tiny
    eos = eos_ids(model, tokenizer)
    client = double(lambda request: httpx.Response(200, json={
        "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        "choices": [{"index": 0, "text": "the sea", "finish_reason": "stop"}]}))
    with pytest.raises(GenerationServerError, match="does not return the sampled token ids"):
        generate_remote(client, tokenizer, eos, [CHAT], Sampling(num_samples=1))
    gens, _ = generate_remote(client, tokenizer, eos, [CHAT], Sampling(num_samples=1), need_token_ids=False)
    assert gens.texts == ["the sea"] and gens.finished == [True] and gens.response_ids[0][-1] == tokenizer.eos_token_id


def test_served_roles_of_evaluate():
    assert served_roles(None, ["policy"]) == {"policy": None}
    with pytest.raises(ConfigError, match="ROLE=NAME"):
        served_roles("x", ["ppo", "dpo"])
    with pytest.raises(ConfigError, match="no model has the role sft"):
        served_roles("sft=x", ["policy", "baseline"])


@pytest.fixture
def server_thread(talky_dir, talky):
    """`alignloop serve-model` on the talky model in a thread (uvicorn, a free port), one row at
    a time, so that what it decodes is the same computation as `generate` with --batch-size 1."""
    from alignloop.serving.cli import ServeModelConfig, build_server
    from tests.serving.test_serve_model_cli import free_port

    cfg = ServeModelConfig(model=str(talky_dir), port=free_port(), log_level="warning", max_batch_size=1)
    server, _ = build_server(cfg, *talky)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{cfg.port}/v1"
    server.should_exit = True
    thread.join(15)


def test_generate_through_the_server_equals_generate_in_process(talky_dir, server_thread, tmp_path):
    from alignloop.configs import GenerateConfig
    from alignloop.generate import run_generate

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Hi", "Tell me about the sea.", "Why?"]))
    common = dict(model=str(talky_dir), prompts=prompts, num_samples=1, temperature=0, max_new_tokens=12, batch_size=1)
    local = run_generate(GenerateConfig(**common, out=tmp_path / "local.jsonl"))
    remote = run_generate(GenerateConfig(**common, out=tmp_path / "remote.jsonl", generation_url=server_thread,
                                         generation_concurrency=2))
    rows = [[json.loads(line) for line in p.read_text().splitlines()] for p in (local, remote)]
    assert [r["responses"] for r in rows[0]] == [r["responses"] for r in rows[1]]
    assert [r["finished"] for r in rows[0]] == [r["finished"] for r in rows[1]]
    assert any(r["responses"][0] for r in rows[0])  # something was said


def test_evaluate_samples_a_role_through_the_server(talky_dir, server_thread, tmp_path):
    """evaluate --generation-url: the policy sampled by the server (a temperature so low that
    sampling is the argmax, one row at a time) gives the in-process responses; the KL is still
    computed here."""
    from alignloop.configs import EvaluateConfig
    from alignloop.evaluate.evaluate import run_evaluate

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Hi", "Tell me about the sea."]))
    common = dict(policy=str(talky_dir), reference=str(talky_dir), prompts=prompts, redteam="none", temperature=1e-4,
                  max_new_tokens=8, batch_size=1)
    run_evaluate(EvaluateConfig(**common, out=tmp_path / "local"))
    run_evaluate(EvaluateConfig(**common, out=tmp_path / "remote", generation_url=server_thread,
                                generation_model="policy=talky"))
    rows = [[json.loads(line) for line in (tmp_path / d / "samples_policy.jsonl").read_text().splitlines()]
            for d in ("local", "remote")]
    assert [r["responses"] for r in rows[0]] == [r["responses"] for r in rows[1]]
    assert any(r["responses"][0] for r in rows[0])
