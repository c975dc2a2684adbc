"""Record types exchanged between stages (DESIGN.md section 2), validated with pydantic.

Every record may carry `id` and `meta`. A prompt is either `prompt` (one user turn) or
`messages` (a chat, without the final assistant turn for prompts). No module here imports
torch: the web app and the quality tools read these records too.

    prompt         {"prompt": str} | {"messages": [{"role", "content"}, ...]}
    demonstration  prompt fields + "response": str   (or messages ending with the assistant)
    samples        prompt fields + "responses": [str, ...] + "model" + "sampling"
    comparison     prompt fields + "responses": [str, ...] (K >= 2) + "ranking" (best first,
                   a nested list is a tie) + optional rater, source, weight, p
                   shorthand on input: {"prompt", "chosen", "rejected"}
    binary         prompt fields + "response" + "label" (1 good, 0 bad)
"""

from __future__ import annotations

import json

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant"]
Source = Literal["human", "ai", "simulated", "gold"]
RankingEntry = int | list[int]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class Record(BaseModel):
    """Fields every record may carry. Unknown fields are ignored, so a samples or comparisons
    file can be read as prompts."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = Field(None, description="Stable identifier of the record.")
    meta: dict[str, Any] = Field(default_factory=dict, description="Free-form metadata.")


class PromptRecord(Record):
    """A prompt: `prompt` (one user turn) or `messages` (a conversation awaiting the assistant)."""

    prompt: str | None = Field(None, description="The user's request, one turn.")
    messages: list[Message] | None = Field(None, description="A conversation; the assistant answers next.")

    @model_validator(mode="before")
    @classmethod
    def _category_into_meta(cls, data: Any) -> Any:
        """The prompt's category is `meta.category` (evaluate reports per category); a top-level
        `category` or `task` field, as other datasets spell it, is moved there."""
        if not isinstance(data, dict) or not isinstance(data.get("meta") or {}, dict):
            return data
        meta = dict(data.get("meta") or {})
        named = [("meta.category", meta["category"])] if meta.get("category") is not None else []
        named += [(f, data[f]) for f in ("category", "task") if data.get(f) is not None]
        if not named:
            return data
        for field, value in named:
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"field '{field}': a category must be a non-empty string, got {value!r}")
            if meta.setdefault("category", value) != value:
                raise ValueError(f"field '{field}': {value!r} differs from the category {meta['category']!r} also given")
        data = {k: v for k, v in data.items() if k not in ("category", "task")}
        data["meta"] = meta
        return data

    @model_validator(mode="after")
    def _one_prompt_form(self):
        if self.prompt is None and self.messages is None:
            raise ValueError("field 'prompt': missing (give 'prompt' or 'messages')")
        if self.prompt is not None and self.messages is not None:
            raise ValueError("field 'prompt': give either 'prompt' or 'messages', not both")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("field 'prompt': empty")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("field 'messages': empty list")
            if self.messages[-1].role == "assistant" and type(self) is PromptRecord:
                raise ValueError("field 'messages': a prompt must not end with an assistant turn")
        return self

    def chat(self) -> list[dict[str, str]]:
        """The prompt as chat messages (without the response)."""
        if self.messages is not None:
            msgs = [m.model_dump() for m in self.messages]
            if msgs[-1]["role"] == "assistant":  # a demonstration given as a full chat
                msgs = msgs[:-1]
            return msgs
        return [{"role": "user", "content": self.prompt}]

    def chat_key(self) -> str:
        """The prompt as one string (its chat as JSON, keys sorted): equal for records of one prompt."""
        return json.dumps(self.chat(), sort_keys=True, ensure_ascii=False)

    def prompt_text(self) -> str:
        """The last user turn, for display and for scorers that read plain text."""
        if self.prompt is not None:
            return self.prompt
        return next(m.content for m in reversed(self.messages) if m.role == "user")

    def prompt_fields(self) -> dict[str, Any]:
        """Only the prompt fields (prompt or messages), to copy into a derived record."""
        if self.prompt is not None:
            return {"prompt": self.prompt}
        return {"messages": [{"role": r["role"], "content": r["content"]} for r in self.chat()]}


def _non_empty(value: str, field: str) -> str:
    if not value.strip():
        raise ValueError(f"field '{field}': empty response")
    return value


class Demonstration(PromptRecord):
    """A prompt and the response to imitate (SFT)."""

    response: str | None = Field(None, description="The response to learn.")

    @model_validator(mode="after")
    def _has_response(self):
        if self.response is None:
            if self.messages and self.messages[-1].role == "assistant":
                self.response = self.messages[-1].content
            else:
                raise ValueError("field 'response': missing (or end 'messages' with an assistant turn)")
        _non_empty(self.response, "response")
        return self


class Samples(PromptRecord):
    """K responses sampled for one prompt, with the model and the sampling settings."""

    responses: list[str] = Field(..., min_length=1, description="The sampled responses.")
    model: str | None = Field(None, description="Name of the model that produced the responses.")
    sampling: dict[str, Any] = Field(default_factory=dict, description="Sampling settings (temperature, top_p, ...).")
    finished: list[bool] | None = Field(None, description="Per response: did it end with EOS.")
    rewards: dict[str, list[float]] | None = Field(None, description="Per reward source, one score per response.")


def flatten_ranking(ranking: list[RankingEntry]) -> list[int]:
    return [i for entry in ranking for i in (entry if isinstance(entry, list) else [entry])]


def ranking_tiers(ranking: list[RankingEntry]) -> list[list[int]]:
    """The ranking as tiers, best first: [2, [0, 3], 1] -> [[2], [0, 3], [1]]."""
    return [list(e) if isinstance(e, list) else [e] for e in ranking]


class Comparison(PromptRecord):
    """K >= 2 responses to one prompt, ranked best first (a nested list is a tie)."""

    responses: list[str] = Field(..., description="The K candidate responses.")
    ranking: list[RankingEntry] | None = Field(
        None, description="Response indices best first; a nested list marks a tie."
    )
    p: float | None = Field(None, description="Soft label for K = 2: probability that responses[0] is better.")
    rater: str | None = Field(None, description="Who ranked (rater id or judge name).")
    source: Source | None = Field(None, description="human | ai | simulated | gold.")
    weight: float = Field(1.0, ge=0.0, description="Weight of the record in the reward-model loss.")
    explanation: str | None = Field(None, description="Gold records: why the ranking is right (shown after a practice answer).")

    @model_validator(mode="before")
    @classmethod
    def _chosen_rejected(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("chosen" in data or "rejected" in data):
            data = dict(data)
            for f in ("chosen", "rejected"):
                if f not in data:
                    raise ValueError(f"field '{f}': missing (the chosen/rejected shorthand needs both)")
            if "responses" in data:
                raise ValueError("field 'responses': give either 'responses' or 'chosen'/'rejected'")
            data["responses"] = [data.pop("chosen"), data.pop("rejected")]
            data.setdefault("ranking", [0, 1])
        return data

    @field_validator("responses")
    @classmethod
    def _responses(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError("field 'responses': a comparison needs at least 2 responses")
        for i, r in enumerate(v):
            _non_empty(r, f"responses[{i}]")
        return v

    @model_validator(mode="after")
    def _label(self):
        k = len(self.responses)
        if self.ranking is None and self.p is None:
            raise ValueError("field 'ranking': missing (give 'ranking' or a soft label 'p')")
        if self.ranking is not None:
            flat = flatten_ranking(self.ranking)
            if sorted(flat) != list(range(k)):
                raise ValueError(
                    f"field 'ranking': {self.ranking} is not a permutation of 0..{k - 1} "
                    f"(each of the {k} responses exactly once)"
                )
            if any(isinstance(e, list) and len(e) == 0 for e in self.ranking):
                raise ValueError("field 'ranking': empty tie group")
        if self.p is not None:
            if k != 2:
                raise ValueError(f"field 'p': a soft label needs exactly 2 responses, got {k}")
            if not 0.0 <= self.p <= 1.0:
                raise ValueError(f"field 'p': {self.p} is not a probability in [0, 1]")
        return self

    def tiers(self) -> list[list[int]]:
        """Tiers best first; from `p` alone, the more probable response first."""
        if self.ranking is not None:
            return ranking_tiers(self.ranking)
        if self.p == 0.5:
            return [[0, 1]]
        return [[0], [1]] if self.p > 0.5 else [[1], [0]]


class BinaryFeedback(PromptRecord):
    """A thumbs up (1) or down (0) on one response."""

    response: str = Field(..., description="The rated response.")
    label: Literal[0, 1] = Field(..., description="1 good, 0 bad.")
    rater: str | None = Field(None, description="Who rated.")
    source: Source | None = Field(None, description="human | ai | simulated | gold.")
    explanation: str | None = Field(None, description="Gold records: why the label is right (shown after a practice answer).")

    @field_validator("response")
    @classmethod
    def _response(cls, v: str) -> str:
        return _non_empty(v, "response")


RECORD_TYPES: dict[str, type[Record]] = {
    "prompt": PromptRecord,
    "demonstration": Demonstration,
    "samples": Samples,
    "comparison": Comparison,
    "binary": BinaryFeedback,
}
