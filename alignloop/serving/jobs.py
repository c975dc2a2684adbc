"""What a request asks of the generator and what comes back (no torch: the web app's side).

A `Job` is one chat-completion request: its prompt's token ids, its sampling settings, its own
stop strings and deadline, and `send`, which the generator calls (from its worker thread) with
each `Event`: a piece of a choice's text, and once per choice its end. `visible_end` is how
much of a choice's text may be shown while more tokens come: never a part of a stop string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

# why a choice ended: EOS or a stop string, max_tokens, the deadline, a failed forward pass
Finish = Literal["stop", "length", "timeout", "error"]


@dataclass
class Event:
    """A new piece of choice `choice`'s text; `finish` set on its last event."""

    choice: int
    text: str = ""
    finish: Finish | None = None
    completion_tokens: int = 0  # tokens generated for this choice so far (its EOS included)
    message: str = ""  # what went wrong, for finish "error"
    token_ids: list[int] | None = None  # on the last event: the choice's generated tokens


@dataclass
class Job:
    """One request: n choices of the same prompt, each decoded as a row of the batch."""

    prompt_ids: list[int]
    max_tokens: int
    deadline: float  # time.monotonic() after which its rows end with finish "timeout"
    send: Callable[[Event], None]  # called from the generator's thread
    n: int = 1
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: every token
    stops: list[str] = field(default_factory=list)
    seed: int | None = None  # None: a fresh random seed
    cancelled: bool = False  # set by the web side when the client has gone; its rows are dropped


class Overloaded(RuntimeError):
    """More requests are waiting than the server queues (answered 503)."""


class Engine(Protocol):
    """What the web app needs of a generator (serving/batcher.py's Batcher is one)."""

    max_positions: int  # prompt + generated tokens must fit
    vocab_size: int  # a prompt given as token ids must be below it

    def encode(self, messages: list[dict[str, str]]) -> list[int]: ...

    def encode_text(self, text: str) -> list[int]: ...  # a completion's text prompt

    def submit(self, job: Job) -> None: ...

    def health(self) -> dict: ...


class AdapterLoader(Protocol):
    """Loads a LoRA adapter folder as a model of its own (the runtime LoRA endpoints)."""

    def load(self, path: str) -> Engine: ...  # blocking; ValueError / FileNotFoundError for a bad folder

    def unload(self, engine: Engine) -> None: ...


def visible_end(text: str, stops: list[str]) -> tuple[int, bool]:
    """(end, stopped): `text[:end]` may be shown now.

    A stop string's first occurrence ends the text right before it (stopped). Otherwise the
    text is held back by its longest end that begins a stop string (the next token may complete
    it) and by trailing U+FFFD (the bytes of a character still coming in).

    >>> visible_end("Hello wor", ["world"])   # "wor" may become "world"
    (6, False)
    >>> visible_end("Hello world!", ["world"])
    (6, True)
    """
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:
        return min(found), True
    hold = max((k for s in stops for k in range(1, min(len(s) - 1, len(text)) + 1) if text.endswith(s[:k])),
               default=0)
    end = len(text) - hold
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    return end, False
