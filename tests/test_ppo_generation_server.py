"""PPO sampling through `alignloop serve-model --lora-loading` in another process
(--generation-url): each iteration the trainer's current adapter is pushed, the server samples
the rollout with it (its answers name the adapter and the sha256 of its weights), the trainer
scores exactly the tokens the server drew, and the previous adapter is unloaded."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from alignloop.config import ConfigError
from alignloop.train import ppo
from alignloop.train.ppo import PPOConfig, run_ppo
from alignloop.train.tracking import read_metrics
from tests.serving.test_serve_model_cli import free_port

RULE = "rule:tests.rules:count_e"


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    """serve-model on the tiny model in a subprocess on a free port; killed at the end."""
    port = free_port()
    env = {**os.environ, "ALIGNLOOP_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "alignloop.cli", "serve-model", "--model", str(tiny_model_dir),
                             "--port", str(port), "--lora-loading", "--threads", "1", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.time() < deadline, "serve-model did not answer within 120 s"
                time.sleep(0.2)
        yield url
    finally:
        proc.kill()
        proc.communicate(timeout=30)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something, number {i}."}) + "\n" for i in range(8)))
    return path


def test_ppo_samples_each_iteration_with_the_trainers_current_adapter(tiny_model_dir, prompts, server, tmp_path,
                                                                      monkeypatch):
    seen = []  # per rollout: the sha256 of the trainer's adapter as it samples, what it scored, what was sent
    original = ppo.collect_rollout

    def recording(cfg, accelerator, model, policy, reference, sampler, tokenizer, rewards, chats, seed, server=None,
                  **kw):
        folder = tmp_path / "trainer" / str(len(seen))
        policy.lm.save_pretrained(folder, safe_serialization=True)
        sha = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
        rollout = original(cfg, accelerator, model, policy, reference, sampler, tokenizer, rewards, chats, seed,
                           server=server, **kw)
        seen.append((sha, rollout.response_ids, [ids for a in server.answers for ids in a.token_ids]))
        return rollout

    monkeypatch.setattr(ppo, "collect_rollout", recording)
    out = run_ppo(PPOConfig(model=str(tiny_model_dir), reward=RULE, prompts=prompts, out=tmp_path / "ppo",
                            iterations=3, batch_size=4, num_samples=2, max_new_tokens=8, lora=True,
                            learning_rate=1e-2, missing_eos_penalty=None, save_every=0, log_samples_every=0,
                            generation_url=server, generation_concurrency=2))
    from alignloop.models.loading import load_tokenizer

    eos = load_tokenizer(str(tiny_model_dir)).eos_token_id
    lines = [json.loads(line) for line in (out / "generation.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2, 3] and len(seen) == 3
    for line, (trainer_sha, scored, sent) in zip(lines, seen):
        # the server answered every request of the rollout with the adapter pushed for it ...
        assert line["answered_by"] == [line["lora_name"]]
        assert line["fingerprints"] == [line["fingerprint"]] == ["lora-" + line["sha256"][:16]]
        # ... which is the trainer's policy at that moment, byte for byte
        assert line["sha256"] == trainer_sha
        # the trainer scored exactly the tokens the server sampled (here no response runs past an EOS)
        assert scored == [ids[: next((i + 1 for i, t in enumerate(ids) if t == eos), len(ids))] for ids in sent]
    assert len({x["sha256"] for x in lines}) == 3  # the policy changed every iteration
    assert len({x["lora_name"] for x in lines}) == 3
    last = lines[-1]
    assert hashlib.sha256((tmp_path / "ppo" / "served_adapter" / "iter-3" / "adapter_model.safetensors")
                          .read_bytes()).hexdigest() == last["sha256"]
    assert not (tmp_path / "ppo" / "served_adapter" / "iter-1").exists()  # the previous ones are removed
    # every adapter was unloaded again: the server serves its base model only
    assert [m["id"] for m in httpx.get(f"{server}/models").json()["data"]] == ["model"]
    assert len(read_metrics(out)) == 3 and (out / "adapter_model.safetensors").exists()


def test_full_finetuning_through_a_server_is_refused(tiny_model_dir, prompts, tmp_path):
    with pytest.raises(ConfigError, match="add --lora"):
        run_ppo(PPOConfig(model=str(tiny_model_dir), reward=RULE, prompts=prompts, out=tmp_path / "full",
                          lora=False, generation_url="http://127.0.0.1:9/v1"))


@pytest.mark.numerics
def test_under_fsdp_the_adapter_pushed_is_gathered_whole_from_the_shards(tiny_model_dir, prompts, server, tmp_path):
    """2 CPU processes (FSDP2 over gloo) sampling through the server: each iteration the main
    process pushes the adapter gathered from both processes' shards, both sample with it."""
    from safetensors.torch import load_file

    from alignloop.models.loading import load_causal_lm
    from tests.sharded_processes import FSDP_CONFIG, launch

    out = tmp_path / "fsdp"
    r = launch(FSDP_CONFIG, ["-m", "alignloop.cli", "ppo", "--model", str(tiny_model_dir), "--reward", RULE,
                             "--prompts", str(prompts), "--out", str(out), "--iterations", "2", "--batch-size", "2",
                             "--max-new-tokens", "6", "--lora", "--learning-rate", "1e-2", "--save-every", "0",
                             "--log-samples-every", "0", "--generation-url", server])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "generation.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2]
    assert all(x["answered_by"] == [x["lora_name"]] for x in lines)  # both processes sampled with the push
    assert lines[0]["sha256"] != lines[1]["sha256"]  # the policy moved between the pushes
    pushed = load_file(out / "served_adapter" / "iter-2" / "adapter_model.safetensors")
    hidden = load_causal_lm(str(tiny_model_dir)).config.hidden_size
    a = [v for k, v in pushed.items() if "q_proj.lora_A" in k]
    assert a and all(v.shape == (16, hidden) for v in a)  # whole matrices, not one process's shard
    assert max(v.abs().max().item() for k, v in pushed.items() if "lora_B" in k) > 0  # trained once (B starts at 0)
