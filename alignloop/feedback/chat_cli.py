"""`alignloop chat`: the chat page, the arena and the leaderboard, served by the feedback app,
and `alignloop chat export`.

    alignloop chat --db feedback.db --models alpha=http://127.0.0.1:8001,beta=http://127.0.0.1:8002
    alignloop chat export --db feedback.db --out chat-export/

`alignloop chat ...` without a subcommand is `alignloop chat serve ...`. Raters sign in with the
feedback app's login links (`alignloop feedback add-rater NAME`); the rater pages stay where
they are (/assignments/...), `/` leads to the chat.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import click
from pydantic import Field

from alignloop.config import ConfigError, StageConfig, config_command
from alignloop.feedback.cli import DB_HELP, ServeConfig, run_serve, shown_db
from alignloop.feedback.limits import MAX_SEED


class AppOptions(ServeConfig):
    """The feedback app's options, as for `alignloop serve`."""

    heading: ClassVar[str] = "The web app (as for alignloop serve)"


class ChatConfig(AppOptions):
    models: str = Field(..., description="The models: NAME=URL,NAME2=URL2, each an OpenAI-compatible server "
                        "(alignloop serve-model, vLLM, SGLang, llama.cpp's server; URL http://HOST:PORT, its /v1 "
                        "or its /v1/chat/completions). NAME is sent as the request's `model`. The arena needs two.")
    timeout: float = Field(120.0, gt=0, le=3600, description="Seconds an answer may take from request to last token; "
                           "then the page shows a time-out error (nothing is stored; the turn can be regenerated).")
    max_message_chars: int = Field(4000, ge=1, le=100_000, description="Longest user message, in characters.")
    max_turns: int = Field(20, ge=1, le=1000, description="Most user messages in one conversation.")
    messages_per_minute: int = Field(10, ge=1, le=10_000, description="Most messages (regenerations included) one "
                                     "rater may send in any 60 s; more answer 429. One answer at a time per rater.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature sent to the model servers.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling top_p sent to the model servers.")
    max_tokens: int = Field(512, ge=1, le=32_768, description="Longest answer, in tokens (the request's max_tokens).")
    system: str = Field("", description="A system message put before every conversation (none by default).")
    leaderboard_for: Literal["raters", "admins"] = Field("raters", description="Who may see /leaderboard: every "
                                                         "signed-in rater, or admins only.")
    n_boot: int = Field(100, ge=0, le=10_000, description="Bootstrap resamples of the leaderboard's intervals.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed of the arena's draws and of chat mode's "
                             "random model (default: unpredictable).")


class ChatExportConfig(StageConfig):
    db: str = Field("feedback.db", description=DB_HELP)
    out: Path = Field(..., description="Output folder: thumbs.jsonl (binary feedback: alignloop kto), "
                      "comparisons.jsonl (arena votes: alignloop reward, dpo) and prompts.jsonl (the users' "
                      "messages with their conversations: the next round's sampling).")
    include_flagged: bool = Field(False, description="Also export battles flagged because a model revealed its identity.")


def run_chat(cfg: ChatConfig) -> None:
    from alignloop.feedback.chat_client import parse_models
    from alignloop.feedback.chat_web import ChatSettings

    try:
        endpoints = parse_models(cfg.models)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    chat = ChatSettings(endpoints=endpoints, timeout_s=cfg.timeout, max_message_chars=cfg.max_message_chars,
                        max_turns=cfg.max_turns, messages_per_minute=cfg.messages_per_minute,
                        temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, system=cfg.system,
                        leaderboard_for=cfg.leaderboard_for, n_boot=cfg.n_boot, seed=cfg.seed)
    click.echo("models: " + ", ".join(f"{e.name} = {e.url}" for e in endpoints))
    run_serve(cfg, chat=chat)


def run_export(cfg: ChatExportConfig) -> None:
    from alignloop.feedback import chat_export
    from alignloop.feedback.cli import _open

    engine, sessions = _open(cfg.db, must_exist=True)
    with sessions() as s:
        data = chat_export.collect(s)
    engine.dispose()
    n = chat_export.write_export(data, cfg.out, cfg.include_flagged)
    click.echo(f"from {shown_db(cfg.db)}: {n.thumbs} thumbs -> {cfg.out / 'thumbs.jsonl'}, {n.comparisons} arena votes "
               f"-> {cfg.out / 'comparisons.jsonl'}, {n.prompts} prompts -> {cfg.out / 'prompts.jsonl'}"
               + (f"; {n.skipped} votes on an empty answer skipped" if n.skipped else ""))


class ChatGroup(click.Group):
    """`alignloop chat OPTIONS` is `alignloop chat serve OPTIONS`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


serve_command = config_command(ChatConfig, run_chat, "serve",
                               "Serve the chat page (thumbs), the arena (two anonymous models, votes) and the "
                               "leaderboard, with the feedback app's accounts.")
export_command = config_command(ChatExportConfig, run_export, "export",
                                "Write thumbs (binary feedback), arena votes (comparisons) and the users' prompts "
                                "as JSONL files in a folder.")
group = ChatGroup("chat", help="Chat with models, compare them in the arena, see the leaderboard; export the votes.\n\n"
                  "`alignloop chat --db feedback.db --models NAME=URL,...` is `alignloop chat serve ...`.",
                  commands={"serve": serve_command, "export": export_command},
                  context_settings={"max_content_width": 110})
