"""`alignloop serve-model` for real: uvicorn on a free loopback port, in a thread and as the
command in a subprocess; by default it listens on 127.0.0.1 only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from alignloop.serving.cli import ServeModelConfig, build_server, is_loopback, served_name
from tests.serving.helpers import parse_sse, streamed_text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> list[str]:
    """The local addresses with a TCP socket listening on `port` (Linux's /proc/net/tcp, tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if len(address) == 8:
                    found.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    words = bytes.fromhex(address)
                    found.append(socket.inet_ntop(socket.AF_INET6, b"".join(words[i:i + 4][::-1] for i in
                                                                             range(0, 16, 4))))
    return found


def test_uvicorn_in_a_thread_streams_over_real_http(talky_dir, talky):
    cfg = ServeModelConfig(model=str(talky_dir), port=free_port(), log_level="warning")
    server, batcher = build_server(cfg, *talky)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        bound = [s.getsockname()[0] for srv in server.servers for s in srv.sockets]
        assert bound == ["127.0.0.1"]
        url = f"http://127.0.0.1:{cfg.port}"
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "talky"
        body = {"model": "talky", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 8}
        whole = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).json()
        pieces = []
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=30) as r:
            for chunk in r.iter_text():
                pieces.append(chunk)
        events = parse_sse("".join(pieces))
        assert events[-1] == "[DONE]" and streamed_text(events) == whole["choices"][0]["message"]["content"]
    finally:
        server.should_exit = True
        thread.join(15)
    assert not batcher.health()["worker_alive"]  # the worker stops with the server


def test_the_command_listens_on_loopback_only_by_default(talky_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "ALIGNLOOP_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "alignloop.cli", "serve-model", "--model", str(talky_dir),
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.time() < deadline, "serve-model did not answer within 120 s"
                time.sleep(0.2)
        assert health["status"] == "ok" and health["model"] == "talky"
        if Path("/proc/net/tcp").exists():
            assert listening(port) == ["127.0.0.1"]
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30, json={
            "model": "talky", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).json()
        assert answer["usage"]["completion_tokens"] <= 4
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "serving" in err and "warning" not in err.lower()


def test_names_and_hosts():
    assert served_name(ServeModelConfig(model="smollm2-135m-instruct")) == "smollm2-135m-instruct"
    assert served_name(ServeModelConfig(model="smollm2-135m-instruct", name="policy-v2")) == "policy-v2"
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


def test_a_public_host_is_warned_about(monkeypatch, capsys):
    import alignloop.serving.cli as cli

    class NoServer:
        def run(self):
            pass

    monkeypatch.setattr(cli, "build_server", lambda cfg: (NoServer(), None))
    cli.run_serve_model(ServeModelConfig(host="0.0.0.0"))
    assert "warning: --host 0.0.0.0 serves the model to every machine" in capsys.readouterr().err
    cli.run_serve_model(ServeModelConfig())
    assert "warning" not in capsys.readouterr().err


def test_bad_options_are_config_errors(talky):
    from alignloop.config import ConfigError

    with pytest.raises(ConfigError, match="--default-max-tokens 300 is more than --max-new-tokens-limit 200"):
        build_server(ServeModelConfig(max_new_tokens_limit=200, default_max_tokens=300), *talky)


def test_help_lists_every_option():
    out = subprocess.run([sys.executable, "-m", "alignloop.cli", "serve-model", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for field in ServeModelConfig.model_fields:
        assert "--" + field.replace("_", "-") in out


@pytest.fixture(scope="module")
def lora_folder(talky_dir, tmp_path_factory):
    """A LoRA adapter folder on the talky model whose adapter changes the answers."""
    import torch

    from alignloop.config import LoraOptions
    from alignloop.models.loading import apply_lora, load_causal_lm, load_tokenizer, save_model

    model = apply_lora(load_causal_lm(str(talky_dir)), LoraOptions(lora_rank=4))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # peft starts B at zero: an adapter that does nothing
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    out = tmp_path_factory.mktemp("run") / "sft"
    save_model(model, load_tokenizer(str(talky_dir)), out, base=str(talky_dir))
    return out


def greedy_text(folder, chat, tokens: int = 8) -> str:
    from alignloop.models.generation import Sampling, generate
    from alignloop.models.loading import load_causal_lm, load_tokenizer

    return generate(load_causal_lm(str(folder)), load_tokenizer(str(folder)), [chat],
                    Sampling(temperature=0, max_new_tokens=tokens), show_progress=False).texts[0]


CHAT = [{"role": "user", "content": "Hi"}]


def answer(client, model: str):
    return client.post("/v1/chat/completions", json={"model": model, "messages": CHAT, "temperature": 0,
                                                     "max_tokens": 8})


def test_a_runs_lora_folder_is_served_merged_into_its_base(talky_dir, lora_folder):
    """`--model` takes an adapter folder as the other commands do: its base with the adapter
    merged in, named after the folder; the answer is `generate`'s on that merged model."""
    from fastapi.testclient import TestClient

    server, _ = build_server(ServeModelConfig(model=str(lora_folder)))
    with TestClient(server.config.app) as c:
        body = answer(c, "sft").json()
    assert body["choices"][0]["message"]["content"] == greedy_text(lora_folder, CHAT) != greedy_text(talky_dir, CHAT)


def test_lora_adapters_load_and_unload_at_run_time(talky_dir, lora_folder, tmp_path):
    """vLLM's runtime LoRA endpoints (--lora-loading): an adapter folder is served under its
    lora_name beside the base, then dropped; without the option the endpoints do not exist."""
    from fastapi.testclient import TestClient

    server, _ = build_server(ServeModelConfig(model=str(talky_dir), lora_loading=True))
    with TestClient(server.config.app) as c:
        r = c.post("/v1/load_lora_adapter", json={"lora_name": "policy-v2", "lora_path": str(lora_folder)})
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'policy-v2' added successfully."
        cards = c.get("/v1/models").json()["data"]
        assert [(m["id"], m["parent"], m["root"]) for m in cards] == [("talky", None, None),
                                                                     ("policy-v2", "talky", str(lora_folder))]
        assert answer(c, "policy-v2").json()["choices"][0]["message"]["content"] == greedy_text(lora_folder, CHAT)
        assert answer(c, "talky").json()["choices"][0]["message"]["content"] == greedy_text(talky_dir, CHAT)
        again = c.post("/v1/load_lora_adapter", json={"lora_name": "policy-v2", "lora_path": str(lora_folder)})
        assert again.status_code == 400 and again.json()["error"]["param"] == "lora_name"
        bad = c.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(talky_dir)})
        assert bad.status_code == 400 and "no adapter_config.json" in bad.json()["error"]["message"]
        gone = c.post("/v1/load_lora_adapter", json={"lora_name": "y", "lora_path": str(tmp_path / "nothing")})
        assert gone.status_code == 400 and gone.json()["error"]["param"] == "lora_path"
        r = c.post("/v1/unload_lora_adapter", json={"lora_name": "policy-v2"})
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'policy-v2' removed successfully."
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["talky"]
        assert answer(c, "policy-v2").status_code == 400
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "policy-v2"}).status_code == 404
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "talky"}).status_code == 400
    closed, _ = build_server(ServeModelConfig(model=str(talky_dir)))
    with TestClient(closed.config.app) as c:
        r = c.post("/v1/load_lora_adapter", json={"lora_name": "policy-v2", "lora_path": str(lora_folder)})
        assert r.status_code == 404 and r.json()["error"]["message"]
