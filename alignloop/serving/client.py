"""A client of an OpenAI-compatible generation server: vLLM, SGLang, `alignloop serve-model` (no torch).

It samples for the commands that otherwise sample in-process (`generate`, `evaluate`, PPO's
rollout: `--generation-url`), through `POST /v1/completions` with the prompt as TOKEN IDS: the
caller templates the chat itself (data/chat.py's `encode_prompt`, as in-process sampling does),
so the server continues exactly those tokens, and with vLLM's `return_token_ids` every choice
comes back as the token ids the server drew (EOS included where it stopped there). A trainer
therefore scores exactly what was sampled and recomputes every log-probability itself; the
server's logprobs are never asked for. (Chat completions would template the prompt on the
server with its own template and answer text only; re-tokenising a text need not give back the
tokens that were sampled: " a" + "b" may come back as " ab".)

Each prompt is one request for its n choices, `concurrency` requests in flight at once, each
with a time-out; the seed of prompt p is `seed * 1_000_003 + p`, so what a prompt draws does
not depend on which requests run beside it (on a server that honours seeds: alignloop's and
vLLM's do). A failure raises `GenerationServerError`, naming the URL, the HTTP status and the
server's error body. The LoRA endpoints are vLLM's runtime ones (`/v1/load_lora_adapter`,
`/v1/unload_lora_adapter`), which `alignloop serve-model --lora-loading` also offers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

SEED_STRIDE = 1_000_003  # prompt p of a call with seed s asks for seed s * SEED_STRIDE + p


@dataclass(frozen=True)
class Settings:
    """How every choice is sampled (the request fields of the same names)."""

    n: int = 1
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: every token (sent as -1, vLLM's "off")
    max_tokens: int = 128
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sampled:
    """One prompt's choices as the server answered them."""

    token_ids: list[list[int] | None]  # per choice; None where the server returned no token ids
    texts: list[str]
    finish_reasons: list[str | None]  # "stop" (EOS or a stop string), "length"
    model: str  # the name that answered (a loaded adapter's lora_name)
    fingerprint: str | None  # `system_fingerprint`: alignloop's server names an adapter's weights there


class GenerationServerError(RuntimeError):
    """A request to the generation server failed: `url`, `status` (None: no answer) and `body`."""

    def __init__(self, url: str, status: int | None, body: str, what: str):
        self.url, self.status, self.body = url, status, body
        status_text = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"generation server {url}: {what} ({status_text}): {body[:2000]}")


def api_base(url: str) -> str:
    """The server's API root, ending in /v1: `http://host:8000` and `http://host:8000/v1/` both
    give `http://host:8000/v1`."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--generation-url {url!r}: expected http://HOST:PORT or http://HOST:PORT/v1")
    return url if url.endswith("/v1") else url + "/v1"


def request_body(model: str, prompt_ids: list[int], settings: Settings, seed: int | None) -> dict:
    """The `/v1/completions` body for one prompt (token ids) and its n choices."""
    body = {"model": model, "prompt": prompt_ids, "n": settings.n, "temperature": settings.temperature,
            "top_p": settings.top_p, "top_k": settings.top_k if settings.top_k > 0 else -1,
            "max_tokens": settings.max_tokens, "return_token_ids": True, "skip_special_tokens": True}
    if seed is not None:
        body["seed"] = seed
    if settings.stop:
        body["stop"] = list(settings.stop)
    return body


def parse_completion(url: str, data: dict, n: int) -> Sampled:
    """A `text_completion` answer as `Sampled`, its choices in index order."""
    try:
        choices = sorted(data["choices"], key=lambda c: c["index"])
        if len(choices) != n:
            raise ValueError(f"{len(choices)} choices for n = {n}")
        return Sampled(token_ids=[c.get("token_ids") for c in choices], texts=[c["text"] for c in choices],
                       finish_reasons=[c.get("finish_reason") for c in choices], model=data.get("model", ""),
                       fingerprint=data.get("system_fingerprint"))
    except (KeyError, TypeError, ValueError) as err:
        raise GenerationServerError(url, 200, str(data), f"not a text completion ({err})") from None


class GenerationClient:
    """Samples from an OpenAI-compatible server at `url` (see the module docstring).

    `model` is the served name asked for (None: the first model the server lists);
    `http` replaces the HTTP client (a test's transport)."""

    def __init__(self, url: str, model: str | None = None, timeout_s: float = 300.0, concurrency: int = 8,
                 http: httpx.Client | None = None):
        self.base = api_base(url)
        self.timeout_s, self.concurrency = timeout_s, concurrency
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
                                         limits=httpx.Limits(max_connections=concurrency))
        self._model = model

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, body: dict, what: str) -> httpx.Response:
        url = f"{self.base}{path}"
        try:
            response = self.http.post(url, json=body, timeout=self.timeout_s)
        except httpx.TimeoutException:
            raise GenerationServerError(url, None, f"no answer within {self.timeout_s:g} s (--generation-timeout-s)",
                                        what) from None
        except httpx.TransportError as err:
            raise GenerationServerError(url, None, f"{type(err).__name__}: {err}", what) from None
        if response.status_code != 200:
            raise GenerationServerError(url, response.status_code, response.text, what)
        return response

    def models(self) -> list[dict]:
        """The server's `GET /v1/models` cards."""
        url = f"{self.base}/models"
        try:
            response = self.http.get(url, timeout=self.timeout_s)
        except httpx.TransportError as err:
            raise GenerationServerError(url, None, f"{type(err).__name__}: {err}", "listing the models") from None
        if response.status_code != 200:
            raise GenerationServerError(url, response.status_code, response.text, "listing the models")
        return response.json()["data"]

    @property
    def model(self) -> str:
        """The served name asked for: the one given, else the server's first model."""
        if self._model is None:
            cards = self.models()
            if not cards:
                raise GenerationServerError(f"{self.base}/models", 200, "[]", "the server serves no model")
            self._model = cards[0]["id"]
        return self._model

    def complete(self, prompt_ids: list[int], settings: Settings, seed: int | None = None,
                 model: str | None = None) -> Sampled:
        """The n choices of one prompt (token ids)."""
        name = model or self.model
        response = self._post("/completions", request_body(name, prompt_ids, settings, seed),
                              f"sampling from '{name}'")
        return parse_completion(f"{self.base}/completions", response.json(), settings.n)

    def complete_all(self, prompts: list[list[int]], settings: Settings, model: str | None = None) -> list[Sampled]:
        """Every prompt's choices, in prompt order, `concurrency` requests at a time; prompt p is
        seeded with `settings.seed * SEED_STRIDE + p`."""
        name = model or self.model
        seeds = [None if settings.seed is None else settings.seed * SEED_STRIDE + p for p in range(len(prompts))]
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            return list(pool.map(lambda args: self.complete(args[0], settings, args[1], name), zip(prompts, seeds)))

    def load_lora_adapter(self, name: str, path: str) -> None:
        """vLLM's `POST /v1/load_lora_adapter`: serve the adapter folder `path` (a path on the
        server's machine) under `name`."""
        self._post("/load_lora_adapter", {"lora_name": name, "lora_path": path}, f"loading the LoRA adapter {path}")

    def unload_lora_adapter(self, name: str) -> None:
        self._post("/unload_lora_adapter", {"lora_name": name}, f"unloading the LoRA adapter '{name}'")
