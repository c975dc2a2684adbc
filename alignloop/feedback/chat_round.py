"""The online loop fed by chat votes: a recipe's `feedback: {kind: chat}` stage and its `arena`
stage. Torch-free (it reads the chat database through chat_export.py and fits the leaderboard
with quality/arena.py).

A round r of a chat recipe (R is RUN in round 1, RUN/round-r after):

    feedback (kind chat)  -> R/comparisons.jsonl (arena votes) or R/thumbs.jsonl (thumbs), R/prompts.jsonl
        counts the votes in the chat database that no earlier round's file holds ("new"); fewer
        than `min_votes`: the run pauses (`Paused`, status waiting) with the leaderboard's top rows
        and where people go; enough: the round's file holds the new votes (`train_on: new`) or all
        of them (`train_on: all`), and prompts.jsonl every user message so far (PPO's prompts).
    reward + ppo | dpo | kto   train on that file (stages.py wires it)
    arena                 -> R/arena.sh: the commands that serve the new policy (`round-r`) beside
                             the one before it (`round-(r-1)`; round-0 is the start policy) and the
                             chat with both, so the next round's votes compare them. Nothing is started.

A vote is new when no earlier round's file holds its record id (`arena/bID`, `chat/tID`), so a
vote is counted once however the rounds are re-run, and votes that commit late are not lost.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import Field

from alignloop.config import StageConfig
from alignloop.feedback.waiting import Paused

DB_HELP = ("The chat and arena database that `alignloop chat --db` writes: a SQLite file path or a database URL "
           "(default: RUN/feedback.db, where the raters' accounts of human campaigns live too).")
PORT_HELP = ("Model servers' ports: round-r's policy is served on PORT + r, so round-(r-1)'s server, started a "
             "round earlier, keeps its port.")


class ChatRoundConfig(StageConfig):
    """A recipe's `feedback: {kind: chat}`: this round's labels from the votes of people using the chat."""

    live_inputs: ClassVar[frozenset[str]] = frozenset({"db"})  # grows while the run waits: not hashed

    db: str = Field(..., description=DB_HELP)
    labels: Literal["comparisons", "thumbs"] = Field(
        "comparisons", description="What the round trains on: arena votes as comparisons (reward + ppo, dpo; ties "
        "as ties, both bad as a tie flagged bad) or thumbs under chat answers as binary feedback (kto).")
    min_votes: int = Field(20, ge=1, description="New votes (arena votes or thumbs, as `labels` says) the round "
                           "waits for: new ones are those no earlier round trained on.")
    train_on: Literal["new", "all"] = Field(
        "new", description="new: the round's file holds the votes that arrived since the previous round; all: every "
        "vote so far (the round still waits for min_votes new ones). With reward_data: all the reward model reads "
        "every round's file anyway, so `new` counts each vote once.")
    include_flagged: bool = Field(False, description="Also count and train on arena battles flagged because a model "
                                  "revealed its identity.")
    out: Path = Field(..., description="The round's labels: RUN/comparisons.jsonl or RUN/thumbs.jsonl (wired).")
    prompts: Path = Field(..., description="Every user message so far with its conversation, once each: the "
                          "prompts PPO trains on (wired: R/prompts.jsonl).")
    previous: list[Path] = Field(default_factory=list, description="Earlier rounds' label files: votes they hold "
                                 "are not new (wired).")
    policies: dict[str, str] = Field(default_factory=dict, description="The policies this round's votes rate, "
                                     "name -> folder, oldest first (wired): shown in the waiting message.")
    round: int = Field(1, ge=1, description="The round (wired).")
    port: int = Field(8100, ge=1, le=65000, description=PORT_HELP)
    chat_port: int = Field(8000, ge=1, le=65535, description="The chat page's port in the printed commands.")
    top: int = Field(5, ge=0, description="Leaderboard rows shown while waiting.")
    n_boot: int = Field(100, ge=0, le=10_000, description="Bootstrap resamples of the leaderboard's intervals.")
    seed: int = Field(0, ge=0, description="Seed of the leaderboard's bootstrap.")


class ArenaRoundConfig(StageConfig):
    """A recipe's `arena` stage: the commands that put the round's new policy into the arena."""

    live_inputs: ClassVar[frozenset[str]] = frozenset({"db"})

    db: str = Field(..., description=DB_HELP)
    policies: dict[str, str] = Field(..., description="name -> folder: the policy before this round and the "
                                     "one it trained, oldest first (wired: round-(r-1), round-r).")
    round: int = Field(1, ge=1, description="The round (wired).")
    port: int = Field(8100, ge=1, le=65000, description=PORT_HELP)
    chat_port: int = Field(8000, ge=1, le=65535, description="The chat page's port in the printed commands.")
    out: Path = Field(..., description="The commands, one a line (wired: R/arena.sh).")


# ---------------------------------------------------------------- pure pieces

def round_port(port: int, name: str) -> int:
    """round-r is served on port + r (round-0, the start policy, on port itself)."""
    return port + int(name.removeprefix("round-"))


def serve_commands(policies: dict[str, str], db: str, port: int, chat_port: int) -> list[str]:
    """One `alignloop serve-model` per policy (name -> folder, oldest first), then the chat with
    all of them (the arena when there are two)."""
    lines = [f"alignloop serve-model --model {shlex.quote(path)} --name {name} --port {round_port(port, name)}"
             for name, path in policies.items()]
    models = ",".join(f"{name}=http://127.0.0.1:{round_port(port, name)}" for name in policies)
    lines.append(f"alignloop chat --db {shlex.quote(db)} --models {models} --port {chat_port}")
    return lines


def new_votes(records: list, used: set[str]) -> list:
    """The records (votes) whose id no earlier round's file holds."""
    return [r for r in records if r.id not in used]


def used_ids(files: list[Path]) -> set[str]:
    """The record ids in earlier rounds' label files (JSONL; a missing file holds none)."""
    out: set[str] = set()
    for f in files:
        if Path(f).exists():
            with Path(f).open(encoding="utf-8") as fh:
                out.update(json.loads(line)["id"] for line in fh if line.strip())
    return out


def leaderboard_lines(board, top: int) -> list[str]:
    """The leaderboard's first `top` rows as text: rating [95% interval], battles W-L-T, thumbs."""
    out = []
    for row in board.models[:top]:
        rating = "   -" if row.battles == 0 else f"{row.rating:4.0f} [{row.lo:.0f}, {row.hi:.0f}]"
        thumbs = f", thumbs up {row.thumbs_up}/{row.thumbs_total}" if row.thumbs_total else ""
        out.append(f"{row.name}: {rating}, {row.battles} battles {row.wins}-{row.losses}-{row.ties}{thumbs}")
    return out


# ---------------------------------------------------------------- the stages

def _read(db: str, include_flagged: bool):
    """(comparisons, thumbs, prompts, battles, thumb votes) from the chat database (migrated as the chat app would; a missing file holds none)."""
    from alignloop.feedback import chat_export, store

    if "://" not in db and not Path(db).expanduser().exists():
        return [], [], [], [], []
    engine, sessions = store.open_db(db)
    try:
        with sessions() as s:
            data = chat_export.collect(s)
            battles, thumbs = chat_export.arena_inputs(s, include_flagged)
    finally:
        engine.dispose()
    comparisons, _ = chat_export.comparison_records(data, include_flagged)
    thumb_records, _ = chat_export.thumb_records(data)
    return comparisons, thumb_records, chat_export.prompt_records(data), battles, thumbs


def run_chat_round(cfg: ChatRoundConfig, command: str) -> None:
    """Write the round's labels and prompts once `min_votes` new votes are in the database; until
    then raise Paused with the counts, the leaderboard and where people go."""
    from alignloop.data.io import atomic_path, write_jsonl
    from alignloop.quality.arena import leaderboard

    comparisons, thumbs, prompts, battles, thumb_votes = _read(cfg.db, cfg.include_flagged)
    votes = comparisons if cfg.labels == "comparisons" else thumbs
    fresh = new_votes(votes, used_ids(cfg.previous))
    board = leaderboard(battles, thumb_votes, n_boot=cfg.n_boot, seed=cfg.seed)
    rows = leaderboard_lines(board, cfg.top)
    what = "arena votes" if cfg.labels == "comparisons" else "thumbs"
    if len(fresh) < cfg.min_votes:
        raise Paused(waiting_message(cfg, len(fresh), len(votes), rows, command))
    chosen = fresh if cfg.train_on == "new" else votes
    write_jsonl(cfg.out, chosen)
    write_jsonl(cfg.prompts, prompts)
    with atomic_path(cfg.out.with_suffix(".config.yaml")) as tmp:
        Path(tmp).write_text(yaml.safe_dump({**cfg.model_dump(mode="json"), "new_votes": len(fresh),
                                             "votes_in_db": len(votes), "written": len(chosen),
                                             "leaderboard": board.to_json()}, sort_keys=False), encoding="utf-8")
    print(f"{len(fresh)} new {what} of {len(votes)} in {cfg.db}: wrote {len(chosen)} to {cfg.out}, "
          f"{len(prompts)} prompts to {cfg.prompts}")
    for line in rows:
        print(f"  {line}")


def waiting_message(cfg: ChatRoundConfig, fresh: int, total: int, rows: list[str], command: str) -> str:
    what = "arena votes" if cfg.labels == "comparisons" else "thumbs"
    where = "the arena (/arena)" if cfg.labels == "comparisons" else "the chat page (/chat)"
    two = len(cfg.policies) >= 2
    lines = [f"waiting for {cfg.min_votes - fresh} more {what}: round {cfg.round} has {fresh} new of the "
             f"{cfg.min_votes} it needs ({total} in {cfg.db}); people vote in {where}"]
    lines.append("  leaderboard:" + ("" if rows else " no votes yet"))
    lines += [f"    {line}" for line in rows]
    if cfg.policies:
        lines.append("  serve the policies " + " and ".join(cfg.policies) + " and the chat (each its own terminal)"
                     + ("" if two or cfg.labels == "thumbs" else "; the arena needs a second model: add NAME=URL"))
        lines += [f"    {c}" for c in serve_commands(cfg.policies, cfg.db, cfg.port, cfg.chat_port)]
    lines.append(f"  add raters:   alignloop feedback add-rater NAME --db {cfg.db}   (prints a one-time login link)")
    lines.append(f"  then go on:   {command}   (continues once {cfg.min_votes} new {what} are in)")
    return "\n".join(lines)


def run_arena(cfg: ArenaRoundConfig) -> None:
    """Print and write (cfg.out) the commands that serve the round's new policy beside the old one."""
    from alignloop.data.io import atomic_path

    lines = serve_commands(cfg.policies, cfg.db, cfg.port, cfg.chat_port)
    old, new = list(cfg.policies)
    with atomic_path(cfg.out) as tmp:
        Path(tmp).write_text(f"# round {cfg.round}: {new} beside {old} in the arena; each command in its own "
                             "terminal (the next round's votes compare them)\n" + "\n".join(lines) + "\n",
                             encoding="utf-8")
    print(f"serve {new} beside {old} (also in {cfg.out}); the next round's votes compare them:")
    for line in lines:
        print(f"  {line}")
