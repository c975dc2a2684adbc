"""Sampling through a generation server as in-process sampling does (`--generation-url`).

`generate_remote` is models/generation.py's `generate` with the decoding done by the server
(serving/client.py): the prompts are templated here with the caller's tokenizer, sent as token
ids, and the answer is the same `Generations` record (prompt ids, response ids cut after the
first EOS, texts decoded here, finished), so every caller goes on unchanged; what the server
sampled is scored by the caller's own forward passes. The server samples with the same top-k
(50) as in-process sampling; each prompt has its own seed, so the tokens drawn are the server's,
not those an in-process run with the same seed draws (greedy decoding gives the same tokens).

`ServerSampler` is PPO's rollout through the server (`--generation-url`, LoRA only): before
each iteration's rollout the main process saves the current adapter (a folder the server can
read) and loads it under a new lora_name, `<run>-iter<k>`, unloading the previous one (and,
at the first push, any adapter an interrupted run of the same folder left loaded) and removing
its folder; every process then samples its prompts with that name. The main process writes one
line per iteration to OUT/generation.jsonl: the adapter's sha256 and the model names and
fingerprints that answered (alignloop's server reports `lora-<sha256[:16]>` of the adapter it
loaded, so a run can check it sampled with its current policy). The last adapter stays on disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from alignloop.serving.client import GenerationClient, GenerationServerError, Settings

ADAPTER_FILE = "adapter_model.safetensors"


def generate_remote(client: GenerationClient, tokenizer, eos: list[int], prompts: list[list[dict[str, str]]],
                    sampling, model: str | None = None, need_token_ids: bool = True):
    """(`Generations` of `sampling.num_samples` responses per chat prompt sampled by the server,
    the server's answers: one `Sampled` per prompt, naming the model and fingerprint that answered).

    `eos`: the ids that end a response (models/generation.py's `eos_ids`). A server that
    returns no token ids is an error when `need_token_ids` (a trainer must score the sampled
    tokens); otherwise (generate, evaluate) the text is tokenised, + EOS where it stopped.
    """
    from alignloop.data.chat import encode_prompt, encode_response
    from alignloop.models.generation import HF_TOP_K, Generations

    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    settings = Settings(n=sampling.num_samples, temperature=max(sampling.temperature, 0.0), top_p=sampling.top_p,
                        top_k=HF_TOP_K, max_tokens=sampling.max_new_tokens, seed=sampling.seed)
    answers = client.complete_all(encoded, settings, model)
    result, eos_set = Generations(), set(eos)
    for p, answer in enumerate(answers):
        for ids, text, finish in zip(answer.token_ids, answer.texts, answer.finish_reasons):
            if ids is None:
                if need_token_ids:
                    raise GenerationServerError(
                        f"{client.base}/completions", 200, "a choice without token_ids",
                        f"'{answer.model}' does not return the sampled token ids (vLLM >= 0.10.2 does, with "
                        "return_token_ids; so does alignloop serve-model): the trainer must score exactly the "
                        "tokens that were sampled")
                ids = encode_response(tokenizer, text, add_eos=finish == "stop")
            end = next((i + 1 for i, t in enumerate(ids) if t in eos_set), None)  # cut after the first EOS
            tokens, done = (ids[:end], True) if end else (list(ids), False)
            result.prompt_index.append(p)
            result.prompt_ids.append(encoded[p])
            result.response_ids.append(tokens)
            result.finished.append(done)
            result.texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return result, answers


@dataclass(frozen=True)
class Pushed:
    """The adapter the server samples with this iteration."""

    iteration: int  # 1-based: the iteration whose rollout it samples
    lora_name: str
    path: Path
    sha256: str  # of its adapter_model.safetensors, as the trainer wrote it

    @property
    def fingerprint(self) -> str:
        """What the project's server reports for it (`system_fingerprint`)."""
        return "lora-" + self.sha256[:16]


def served_eos(name: str, tokenizer) -> list[int]:
    """The ids that end a response of model `name` without loading its weights: the
    tokenizer's EOS and those of the folder's generation_config.json (`eos_ids` without a model)."""
    from transformers import GenerationConfig

    from alignloop.models.registry import resolve_model

    ids = {tokenizer.eos_token_id}
    try:
        gen_eos = GenerationConfig.from_pretrained(resolve_model(name)).eos_token_id
    except OSError:  # no generation_config.json (an adapter folder): the tokenizer's alone
        gen_eos = None
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    return sorted(i for i in ids if i is not None)


def client_for(cfg) -> GenerationClient:
    """The client of a config's GenerationServerOptions (configs.py)."""
    return GenerationClient(cfg.generation_url, cfg.generation_model, cfg.generation_timeout_s,
                            cfg.generation_concurrency)


def generate_with_server(cfg, model: str, tokenizer, prompts: list[list[dict[str, str]]], sampling,
                         served: str | None = None):
    """`generate`'s `Generations` through cfg's server (`generate`, `evaluate`) for `model` (whose
    tokenizer templates the prompts and whose EOS ends a response), served there as `served`
    (None: --generation-model, else the server's first); a server without token ids gets its
    texts tokenised."""
    client = client_for(cfg)
    try:
        gens, _ = generate_remote(client, tokenizer, served_eos(model, tokenizer), prompts, sampling,
                                  model=served, need_token_ids=False)
    finally:
        client.close()
    return gens


def served_roles(generation_model: str | None, roles: list[str]) -> dict[str, str | None]:
    """evaluate's --generation-model: the served name of each role sampled through the server.

    `ROLE=NAME,...` names them (the roles left out are sampled in-process); a plain NAME, or
    nothing (the server's first model: None), is the policy's.

    >>> served_roles("sft-v1", ["policy", "baseline"])
    {'policy': 'sft-v1'}
    >>> served_roles("baseline=base,ppo=round-1", ["ppo", "baseline"])
    {'baseline': 'base', 'ppo': 'round-1'}
    """
    from alignloop.config import ConfigError

    if generation_model is None or "=" not in generation_model:
        if "policy" not in roles:
            raise ConfigError("--generation-model: with --policies, name the served model of each one sampled "
                              f"through the server, ROLE=NAME,... (roles: {', '.join(roles)})")
        return {"policy": generation_model}
    pairs = [part.split("=", 1) for part in generation_model.split(",") if part.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise ConfigError(f"--generation-model: expected NAME or ROLE=NAME,ROLE=NAME, got {generation_model!r}")
    served = {role.strip(): name.strip() for role, name in pairs}
    unknown = sorted(set(served) - set(roles))
    if unknown:
        raise ConfigError(f"--generation-model: no model has the role {', '.join(unknown)} (roles: {', '.join(roles)})")
    return served


def run_tag(out: Path) -> str:
    """A short name for a run folder: its name and 8 hex digits of its absolute path."""
    resolved = str(Path(out).resolve())
    return f"{Path(out).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


class ServerSampler:
    """PPO's rollout sampling through the generation server (module docstring)."""

    def __init__(self, client: GenerationClient, eos: list[int], folder: Path, tag: str, log: Path):
        self.client, self.eos, self.folder, self.tag, self.log = client, eos, Path(folder).resolve(), tag, log
        self.current: Pushed | None = None
        self.answers: list = []  # the last rollout's answers

    def refresh(self, accelerator, lm, tokenizer, base: str, iteration: int, state: dict | None = None) -> None:
        """Serve the current adapter of `lm` for `iteration` (1-based): the main process saves
        and pushes it; every process waits for it. `state`: the whole state dict of `lm` where
        its weights are sharded (FSDP / ZeRO-3; gathered by the caller from every process)."""
        if accelerator.is_main_process:
            if self.current is None:
                self.drop_stale()
            self.push(self.save(lm, tokenizer, base, iteration, state))
        else:  # the other processes only need its name
            self.current = Pushed(iteration, self.name(iteration), self.folder / f"iter-{iteration}", "")
        accelerator.wait_for_everyone()

    def generate(self, tokenizer, chats: list[list[dict[str, str]]], sampling):
        """The rollout's `Generations`, sampled with the adapter pushed last."""
        gens, self.answers = generate_remote(self.client, tokenizer, self.eos, chats, sampling,
                                             model=self.current.lora_name)
        return gens

    def log_iteration(self) -> None:
        """Append the iteration's line to OUT/generation.jsonl (the main process)."""
        with self.log.open("a", encoding="utf-8") as f:
            f.write(log_line(self.current, self.answers) + "\n")

    def drop_stale(self) -> None:
        """Unload the adapters an interrupted run of this folder left on the server."""
        for card in self.client.models():
            if card["id"].startswith(f"{self.tag}-iter"):
                self.client.unload_lora_adapter(card["id"])

    def name(self, iteration: int) -> str:
        return f"{self.tag}-iter{iteration}"

    def save(self, lm, tokenizer, base: str, iteration: int, state: dict | None = None) -> Pushed:
        """Save the adapter of `lm` (a peft model; `state` its whole state dict where sharded) for
        `iteration` (1-based)."""
        from alignloop.models.loading import save_model

        path = self.folder / f"iter-{iteration}"
        if path.exists():
            shutil.rmtree(path)
        save_model(lm, tokenizer, path, base=base, state_dict=state)
        sha = hashlib.sha256((path / ADAPTER_FILE).read_bytes()).hexdigest()
        return Pushed(iteration, self.name(iteration), path, sha)

    def push(self, pushed: Pushed) -> None:
        """Serve `pushed`, then drop the previous adapter from the server and from disk."""
        self.client.load_lora_adapter(pushed.lora_name, str(pushed.path))
        previous, self.current = self.current, pushed
        if previous is not None and previous.lora_name != pushed.lora_name:
            self.client.unload_lora_adapter(previous.lora_name)
            shutil.rmtree(previous.path, ignore_errors=True)

    def close(self, accelerator) -> None:
        """Unload the last adapter from the server (its folder stays); the main process."""
        if self.current is not None and accelerator.is_main_process:
            try:
                self.client.unload_lora_adapter(self.current.lora_name)
            except GenerationServerError:
                pass  # the server went away: nothing is served any more
            self.current = None


def log_line(pushed: Pushed, answers) -> str:
    """One line of PPO's OUT/generation.jsonl: the adapter pushed for an iteration and the model
    names / fingerprints that answered its rollout's requests."""
    return json.dumps({"iteration": pushed.iteration, "lora_name": pushed.lora_name, "path": str(pushed.path),
                       "sha256": pushed.sha256, "fingerprint": pushed.fingerprint,
                       "answered_by": sorted({a.model for a in answers}),
                       "fingerprints": sorted({a.fingerprint or "" for a in answers})})
