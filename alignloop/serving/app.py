"""The model server's web app: OpenAI's chat-completions API over a generator (no torch here).

    GET  /v1/models             the served model's name (and the LoRA adapters loaded)
    POST /v1/chat/completions   an answer (`chat.completion`) or, with "stream": true, its
                                server-sent events (serving/wire.py)
    POST /v1/completions        a prompt's continuation (`text_completion`), the prompt as text
                                or token ids, the sampled token ids with `return_token_ids`
    GET  /health                status and the batcher's counters
    POST /v1/load_lora_adapter, /v1/unload_lora_adapter   vLLM's runtime LoRA endpoints, only
                                with an `AdapterLoader`: an adapter folder served under a name

A request is validated (400 in OpenAI's error shape, `param` naming the field), tokenised off
the event loop, submitted to the engine as a `Job` (503 when too many wait) and answered from
the events the engine's worker thread sends back; the event loop never waits on the model.
A time-out answers 504 with what was generated (`partial`); in a stream, the pieces already
sent stay and an error event comes before [DONE]. A client that goes away cancels its job.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from alignloop.serving.jobs import AdapterLoader, Engine, Event, Job, Overloaded
from alignloop.serving.wire import (DONE, AssistantMessage, ChatCompletion, ChatCompletionChunk,
                                    ChatCompletionRequest, Choice, ChunkChoice, Completion, CompletionChoice,
                                    CompletionRequest, Delta, ErrorBody, LoadLoraAdapter, ModelCard, ModelList,
                                    UnloadLoraAdapter, Usage, adapter_fingerprint, completion_id, sse)

GRACE_S = 5.0  # the web side gives the worker this long past a deadline to report the time-out


@dataclass(frozen=True)
class Limits:
    """What one request may ask (the serve-model options of the same names)."""

    max_new_tokens_limit: int = 1024
    default_max_tokens: int = 256
    timeout_s: float = 120.0
    max_choices: int = 8  # n: at most --max-batch-size


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, partial: ChatCompletion | Completion | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.body, self.partial, self.headers = status, ErrorBody(
            message=message, type=type_, param=param, code=code), partial, headers


def error_json(body: ErrorBody, partial: ChatCompletion | Completion | None = None) -> dict:
    return {"error": body.model_dump(), **({"partial": partial.model_dump(mode="json")} if partial else {})}


def _timeout_error(limits: Limits, tokens: int, partial: ChatCompletion | Completion | None = None) -> ApiError:
    return ApiError(504, f"generation timed out after {limits.timeout_s:g} s ({tokens} tokens generated)",
                    "timeout_error", code="timeout", partial=partial)


@dataclass
class Served:
    """A model the app answers for: its engine, and for a loaded adapter its folder and the
    fingerprint of its weights (every answer's `system_fingerprint`)."""

    engine: Engine
    created: int
    root: str | None = None
    fingerprint: str | None = None


def create_app(engine: Engine, name: str, limits: Limits = Limits(), lifespan=None,
               adapters: AdapterLoader | None = None) -> FastAPI:
    """The app serving `engine` under the model name `name`; `lifespan` (an async context
    manager factory, FastAPI's) starts and stops the engine's worker with the server;
    `adapters`, when given, opens the runtime LoRA endpoints."""
    models = {name: Served(engine, int(time.time()))}
    app = FastAPI(title="alignloop model server", version="1", lifespan=lifespan,
                  description="An OpenAI-compatible chat-completions API for one model.")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(error_json(err.body, err.partial), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        loc = [str(x) for x in first["loc"] if x != "body"]
        message = f"{'.'.join(loc) or 'body'}: {first['msg'].removeprefix('Value error, ')}"
        return JSONResponse(error_json(ErrorBody(message=message, type="invalid_request_error",
                                                 param=".".join(loc) or None)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_json(ErrorBody(message=str(err.detail), type="invalid_request_error")),
                            status_code=err.status_code)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, **engine.health(), "adapters": sorted(set(models) - {name})}

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=n, created=m.created, root=m.root, parent=None if n == name else name)
                               for n, m in models.items()])

    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses={400: {"description": "bad request"}, 503: {"description": "overloaded"},
                         504: {"description": "timed out"}})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        served = _served(models, body.model)
        job, events = await _submit(served.engine, limits, body, lambda: served.engine.encode(body.chat()), "messages")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(job, events, body.model, limits, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _collect(job, events, body.model, limits, served.fingerprint)

    @app.post("/v1/completions", response_model=Completion,
              responses={400: {"description": "bad request"}, 503: {"description": "overloaded"},
                         504: {"description": "timed out"}})
    async def completions(body: CompletionRequest):
        served = _served(models, body.model)
        engine = served.engine
        if isinstance(body.prompt, list) and max(body.prompt) >= engine.vocab_size:
            raise ApiError(400, f"prompt: token id {max(body.prompt)} is not below the model's vocabulary size, "
                                f"{engine.vocab_size}", param="prompt")
        encode = (lambda: list(body.prompt)) if isinstance(body.prompt, list) else (
            lambda: engine.encode_text(body.prompt))
        job, events = await _submit(engine, limits, body, encode, "prompt")
        texts, finish, tokens, ids, failures = await _gather(job, events)
        answer = Completion(model=body.model, usage=_usage(job, tokens), system_fingerprint=served.fingerprint,
                            choices=[CompletionChoice(index=i, text=t, finish_reason=f,
                                                      token_ids=ids[i] if body.return_token_ids else None)
                                     for i, (t, f) in enumerate(zip(texts, finish))])
        _raise_failures(failures, limits, tokens, answer)
        return answer

    if adapters is not None:
        _adapter_routes(app, models, name, adapters)
    return app


def _served(models: dict[str, Served], name: str) -> Served:
    if name not in models:
        raise ApiError(400, f"unknown model '{name}': this server serves {', '.join(map(repr, models))}",
                       param="model", code="model_not_found")
    return models[name]


def _adapter_routes(app: FastAPI, models: dict[str, Served], name: str, adapters: AdapterLoader) -> None:
    """vLLM's runtime LoRA endpoints: a loaded adapter is a model of its own (loading runs off
    the event loop; an unloaded one's requests still decoding end as its worker stops)."""
    loading: set[str] = set()

    @app.post("/v1/load_lora_adapter", response_class=PlainTextResponse)
    async def load_lora_adapter(body: LoadLoraAdapter) -> str:
        if body.lora_name in models or body.lora_name in loading:
            raise ApiError(400, f"a model named '{body.lora_name}' is already served", param="lora_name")
        loading.add(body.lora_name)
        try:
            engine = await asyncio.to_thread(adapters.load, body.lora_path)
        except (ValueError, FileNotFoundError, OSError) as err:
            raise ApiError(400, f"cannot load the LoRA adapter {body.lora_path}: {err}", param="lora_path") from None
        finally:
            loading.discard(body.lora_name)
        fingerprint = await asyncio.to_thread(adapter_fingerprint, body.lora_path)
        models[body.lora_name] = Served(engine, int(time.time()), root=body.lora_path, fingerprint=fingerprint)
        return f"Success: LoRA adapter '{body.lora_name}' added successfully."

    @app.post("/v1/unload_lora_adapter", response_class=PlainTextResponse)
    async def unload_lora_adapter(body: UnloadLoraAdapter) -> str:
        if body.lora_name == name:
            raise ApiError(400, f"'{name}' is the served model, not a loaded adapter", param="lora_name")
        served = models.pop(body.lora_name, None)
        if served is None:
            raise ApiError(404, f"no LoRA adapter named '{body.lora_name}' is loaded", param="lora_name",
                           code="model_not_found")
        await asyncio.to_thread(adapters.unload, served.engine)
        return f"Success: LoRA adapter '{body.lora_name}' removed successfully."


async def _submit(engine: Engine, limits: Limits, body: ChatCompletionRequest | CompletionRequest,
                  encode: Callable[[], list[int]], prompt_param: str) -> tuple[Job, asyncio.Queue[Event]]:
    """Validate what the schema cannot, tokenise (`encode`, off the event loop), and hand the
    job to the engine; `prompt_param` names the prompt's field in errors."""
    max_tokens = body.token_limit() or min(limits.default_max_tokens, limits.max_new_tokens_limit)
    if max_tokens > limits.max_new_tokens_limit:
        raise ApiError(400, f"max_tokens {max_tokens} is more than this server's limit, "
                            f"{limits.max_new_tokens_limit}", param="max_tokens")
    if body.n > limits.max_choices:
        raise ApiError(400, f"n {body.n} is more than this server's batch size, {limits.max_choices}", param="n")
    prompt_ids = await asyncio.to_thread(encode)
    if len(prompt_ids) + max_tokens > engine.max_positions:
        raise ApiError(400, f"too many tokens: the prompt's {len(prompt_ids)} + max_tokens {max_tokens} is more "
                            f"than the model's {engine.max_positions}", param=prompt_param,
                       code="context_length_exceeded")
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job = Job(prompt_ids=prompt_ids, max_tokens=max_tokens, deadline=time.monotonic() + limits.timeout_s,
              send=lambda event: loop.call_soon_threadsafe(events.put_nowait, event), n=body.n,
              temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, stops=body.stop_list(),
              seed=body.seed)
    try:
        engine.submit(job)
    except Overloaded as err:
        raise ApiError(503, f"the server is overloaded: {err}; retry later", "overloaded_error",
                       code="overloaded", headers={"Retry-After": "1"}) from None
    return job, events


async def _events(job: Job, events: asyncio.Queue[Event]) -> AsyncIterator[Event]:
    """The job's events until each choice has ended; a worker silent past the deadline ends
    the unfinished choices with a time-out."""
    open_choices = set(range(job.n))
    while open_choices:
        wait = job.deadline + GRACE_S - time.monotonic()
        try:
            event = await asyncio.wait_for(events.get(), timeout=max(wait, 0.0))
        except TimeoutError:
            job.cancelled = True
            for choice in sorted(open_choices):
                yield Event(choice, finish="timeout")
            return
        if event.finish is not None:
            open_choices.discard(event.choice)
        yield event


async def _gather(job: Job, events: asyncio.Queue[Event]):
    """(texts, finish reasons, tokens generated, token ids) of each choice, and the last events
    of the choices that failed (`_raise_failures`)."""
    texts, finish, tokens, ids = [""] * job.n, [None] * job.n, [0] * job.n, [[] for _ in range(job.n)]
    failures: list[Event] = []
    async for event in _events(job, events):
        texts[event.choice] += event.text
        tokens[event.choice] = max(tokens[event.choice], event.completion_tokens)
        if event.token_ids is not None:
            ids[event.choice] = event.token_ids
        if event.finish in ("stop", "length"):
            finish[event.choice] = event.finish
        elif event.finish is not None:
            failures.append(event)
    return texts, finish, tokens, ids, failures


def _raise_failures(failures: list[Event], limits: Limits, tokens: list[int],
                    answer: ChatCompletion | Completion) -> None:
    if any(f.finish == "timeout" for f in failures):
        raise _timeout_error(limits, sum(tokens), answer)
    if failures:
        raise ApiError(500, failures[0].message, "server_error", code="generation_failed")


async def _collect(job: Job, events: asyncio.Queue[Event], name: str, limits: Limits,
                   fingerprint: str | None) -> ChatCompletion:
    texts, finish, tokens, _, failures = await _gather(job, events)
    answer = ChatCompletion(
        model=name, usage=_usage(job, tokens), system_fingerprint=fingerprint,
        choices=[Choice(index=i, message=AssistantMessage(content=t), finish_reason=f)
                 for i, (t, f) in enumerate(zip(texts, finish))])
    _raise_failures(failures, limits, tokens, answer)
    return answer


def _usage(job: Job, tokens: list[int]) -> Usage:
    return Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=sum(tokens),
                 total_tokens=len(job.prompt_ids) + sum(tokens))


async def _stream(job: Job, events: asyncio.Queue[Event], name: str, limits: Limits,
                  include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's event stream: role chunks, content chunks, finish chunks, [usage], [DONE]."""
    cid, created = completion_id(), int(time.time())

    def chunk(choice: int, delta: Delta, finish=None, usage=None, choices=True) -> str:
        return sse(ChatCompletionChunk(id=cid, created=created, model=name, usage=usage, choices=[
            ChunkChoice(index=choice, delta=delta, finish_reason=finish)] if choices else []))

    tokens, failure = [0] * job.n, None
    try:
        for choice in range(job.n):
            yield chunk(choice, Delta(role="assistant", content=""))
        async for event in _events(job, events):
            tokens[event.choice] = max(tokens[event.choice], event.completion_tokens)
            if event.text:
                yield chunk(event.choice, Delta(content=event.text))
            if event.finish in ("stop", "length"):
                yield chunk(event.choice, Delta(), finish=event.finish)
            elif event.finish is not None and failure is None:
                failure = event
        if failure is not None:
            err = _timeout_error(limits, sum(tokens)) if failure.finish == "timeout" else ApiError(
                500, failure.message, "server_error", code="generation_failed")
            yield sse(error_json(err.body))
        elif include_usage:
            yield chunk(0, Delta(), usage=_usage(job, tokens), choices=False)
        yield DONE
    finally:  # the client went away (or the stream ended): drop what is still decoding
        job.cancelled = True
