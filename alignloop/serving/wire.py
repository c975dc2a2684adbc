"""The OpenAI chat-completions wire format: requests, answers, stream chunks, errors (no torch).

The records of `POST /v1/chat/completions` and `GET /v1/models` as OpenAI defines them, so a
client of any OpenAI-compatible server (vLLM, SGLang, llama.cpp's server) reads alignloop's
and the other way round; the chat app reuses them. A request's unknown fields are ignored, as
those servers do (clients send `user`, `frequency_penalty`, ...).

A stream is server-sent events, each `data: JSON\\n\\n`: a `chat.completion.chunk` per choice
first with `delta.role`, then `delta.content` pieces, then one with `finish_reason`; a chunk
with `usage` when `stream_options.include_usage`; finally `data: [DONE]\\n\\n`. An error is
`{"error": {"message", "type", "param", "code"}}`, in a stream as one such event before
[DONE]. A time-out (504) also carries what was generated until then, under `partial`.
vLLM's runtime LoRA endpoints take `{"lora_name", "lora_path"}` and `{"lora_name"}`.

`POST /v1/completions` continues a prompt given as text or, as vLLM takes it, as token ids
(what a trainer that templated the chat itself sends); with vLLM's `return_token_ids` each
choice also carries the `token_ids` it sampled (EOS included when it stopped there), so the
trainer scores exactly the tokens the server drew. `system_fingerprint` names the weights that
answered: for a LoRA adapter loaded at run time, `lora-` and the start of the sha256 of its
weights file.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

FinishReason = Literal["stop", "length"]
DONE = "data: [DONE]\n\n"


class ChatMessage(BaseModel):
    """One turn; `content` may also come as OpenAI's list of text parts, joined here."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in value):
                raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
            return "".join(p["text"] for p in value)
        return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The body of `POST /v1/chat/completions` (the fields this server acts on)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, description="Most tokens generated per choice (default: the server's).")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    top_k: int = Field(0, ge=-1, description="vLLM's top_k: keep the k most likely tokens (0 or -1: all).")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.messages]


class CompletionRequest(BaseModel):
    """The body of `POST /v1/completions` (the fields this server acts on; one prompt)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    prompt: str | list[int] = Field(..., description="Text, or token ids (vLLM's form; a list of one prompt too).")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, description="vLLM's top_k: keep the k most likely tokens (0 or -1: all).")
    max_tokens: int | None = Field(16, ge=1, description="Most tokens generated per choice (OpenAI's default, 16).")
    stop: str | list[str] | None = None
    stream: Literal[False] = Field(False, description="Streaming is offered by /v1/chat/completions only.")
    seed: int | None = None
    n: int = Field(1, ge=1)
    return_token_ids: bool = Field(False, description="vLLM's: each choice carries the token ids it sampled.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        return ChatCompletionRequest._stops(value)

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (list, str)):
            value = value[0]  # a batch of one prompt
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty prompt")
            if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
                raise ValueError("one prompt: text, or a list of token ids (non-negative integers)")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_limit(self) -> int | None:
        return self.max_tokens


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None
    token_ids: list[int] | None = None  # with return_token_ids: the sampled tokens


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    """A stream chunk's change to its choice's message; unset fields are left out of the JSON."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _only_set(self) -> dict[str, str]:
        return {k: v for k, v in (("role", self.role), ("content", self.content)) if v is not None}


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "alignloop"
    root: str | None = None  # a loaded LoRA adapter: its folder
    parent: str | None = None  # a loaded LoRA adapter: the served model it was loaded beside


class LoadLoraAdapter(BaseModel):
    """vLLM's `POST /v1/load_lora_adapter` body."""

    lora_name: str = Field(..., min_length=1)
    lora_path: str = Field(..., min_length=1)


class UnloadLoraAdapter(BaseModel):
    """vLLM's `POST /v1/unload_lora_adapter` body."""

    lora_name: str = Field(..., min_length=1)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
    partial: ChatCompletion | None = None  # a time-out: what was generated until then


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_fingerprint(folder: str | Path) -> str | None:
    """The `system_fingerprint` of a LoRA adapter folder's answers: `lora-` and the first 16 hex
    digits of the sha256 of its weights file (a trainer compares it with the adapter it pushed);
    None for a folder without one."""
    for name in ADAPTER_WEIGHTS:
        path = Path(folder).expanduser() / name
        if path.is_file():
            return "lora-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return None


def sse(payload: BaseModel | dict) -> str:
    """One server-sent event carrying `payload` as JSON."""
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"
