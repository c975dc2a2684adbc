"""`alignloop feedback ...` (create, add-rater, status, export; simulate and plan from the
quality tools, alignloop/quality/cli.py) and `alignloop serve`.

Each command is generated from its config class (config.py): the field descriptions are the
--help text and `--config FILE.yaml` works as for every stage. `--db` takes a SQLite file
path (default feedback.db in the current folder) or a SQLAlchemy URL such as
postgresql://user@host/dbname; the schema is migrated to the newest revision first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click
from pydantic import Field

from alignloop.config import ConfigError, StageConfig, config_command
from alignloop.feedback.limits import (BUSY_TIMEOUT_S, CLI_BUSY_TIMEOUT_S, DEFAULT_BASE_URL, MAX_RATERS_PER_ITEM,
                                      MAX_SEED)

KEEP_ALIVE_S = 65
DB_HELP = "Database: a SQLite file path or a database URL (postgresql://user:pw@host/db)."
MEDIA_HELP = ("Folder of the clips campaigns' videos, each named by the sha256 of its bytes (default: NAME-media/ "
              "beside a SQLite database NAME.db; required with a database URL).")


class FeedbackCreateConfig(StageConfig):
    db: str = Field("feedback.db", description=DB_HELP)
    samples: Path = Field(..., description="Samples JSONL (prompt + responses + model + sampling), one item per record.")
    kind: Literal["rank", "compare", "thumbs", "clips"] = Field(
        "rank", description="rank: order all K responses (ties allowed); compare: pick the better of 2; thumbs: up/down "
                            "per response; clips: watch 2 videos side by side and say which does the task better "
                            "(left, right, equal, can't tell): each record's responses name its 2 clips and "
                            "meta.videos gives their .mp4 / .webm files, relative to the samples file.")
    raters_per_item: int = Field(3, ge=1, le=MAX_RATERS_PER_ITEM, description="How many different raters judge each item.")
    name: str | None = Field(None, description="Campaign name (default: the samples file name without extension).")
    instructions: str = Field("", description="Instructions shown to raters above every item.")
    instructions_file: Path | None = Field(None, description="Read the instructions from this text file instead.")
    gold: Path | None = Field(None, description="Gold items with known answers: comparisons JSONL (binary feedback for thumbs).")
    gold_rate: float = Field(0.1, ge=0.0, le=1.0, description="Probability that a rater's next item is a gold item.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of display orders and gold mixing.")
    media: Path | None = Field(None, description=MEDIA_HELP)
    panel: str | None = Field(None, description="Diverse panel ATTRIBUTE:N: each item is judged by raters of at least N "
                              "different values of the rater attribute (e.g. region:2); assignment balances across "
                              "the groups (docs/readme-feedback.md, 'Diverse panels').")
    ask: str | None = Field(None, description="Rater attributes to ask for on first login, comma-separated "
                            "(e.g. region,language); a rater gets no item of the campaign before giving them.")
    practice_items: int | None = Field(None, ge=1, le=100, description="Practice round: a new rater first answers this "
                                       "many gold items, each followed by its known answer and explanation.")
    practice_pass: float = Field(0.8, gt=0.0, le=1.0, description="Practice round: mean score needed before live items.")
    practice_on_fail: Literal["retry", "stop"] = Field("retry", description="Practice round below the pass mark: retry "
                                                        "(another round) or stop (no live items for that rater).")


def campaign_options(cfg: FeedbackCreateConfig) -> dict | None:
    """The campaign options (feedback/panels.py) from --panel, --ask and --practice-*."""
    opts: dict = {}
    if cfg.panel:
        attribute, sep, n = cfg.panel.partition(":")
        if not sep or not n.strip().isdigit():
            raise ConfigError(f"--panel {cfg.panel!r}: give ATTRIBUTE:N, e.g. region:2")
        opts["panel"] = {"attribute": attribute.strip(), "min_groups": int(n)}
    if cfg.ask:
        opts["ask"] = [k.strip() for k in cfg.ask.split(",") if k.strip()]
    if cfg.practice_items:
        opts["practice"] = {"items": cfg.practice_items, "pass": cfg.practice_pass, "on_fail": cfg.practice_on_fail}
    return opts or None


class SetAttributesConfig(StageConfig):
    name: str = Field(..., description="Rater name.")
    attributes: str = Field(..., description="key=value pairs, comma-separated (region=eu, expert=yes); key= removes "
                            "a key. Merged into the rater's attributes.")
    db: str = Field("feedback.db", description=DB_HELP)


class AddRaterConfig(StageConfig):
    name: str = Field(..., description="Rater name (unique); an existing rater gets a fresh login link.")
    db: str = Field("feedback.db", description=DB_HELP)
    admin: bool = Field(False, description="Make the rater an admin (admin pages, campaign upload, export).")
    api_token: bool = Field(False, description="Also issue an API token for the JSON API (Bearer).")
    base_url: str | None = Field(None, description="Address of the server, used to print the login link (default: the "
                                 f"one the first admin was added with, else {DEFAULT_BASE_URL}). Given when adding the "
                                 "first admin, the app also uses it for the links it shows.")


class FeedbackStatusConfig(StageConfig):
    db: str = Field("feedback.db", description=DB_HELP)


class FeedbackExportConfig(StageConfig):
    db: str = Field("feedback.db", description=DB_HELP)
    out: Path = Field(..., description="Output .jsonl, .parquet or `datasets` folder: one comparison per judgment "
                      "(binary feedback per response for thumbs).")
    format: Literal["alignloop", "trl"] = Field(
        "alignloop", description="alignloop records, or TRL's: preference pairs (p and weight columns), KTO rows for thumbs.")
    campaign: str | None = Field(None, description="Campaign name or id (default: all campaigns).")
    include_gold: bool = Field(True, description="Include judgments of gold items (meta.is_gold marks them).")


class ServeConfig(StageConfig):
    db: str = Field("feedback.db", description=DB_HELP)
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for every interface).")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    secure_cookies: bool = Field(False, description="Send the session cookie only over HTTPS (behind a TLS proxy).")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="uvicorn log level.")
    gold_threshold: float = Field(0.75, gt=0.5, le=1.0, description="Admin page: raters whose accuracy on gold "
                                  "items is below this are flagged and down-weighted.")
    base_url: str | None = Field(None, description="Public address of the app, the start of the login links the admin "
                                 "page shows (default: the --base-url the first admin was added with, else "
                                 "http://HOST:PORT). Never taken from a request's Host header.")
    session_hours: float = Field(14 * 24, gt=0, le=24 * 366, description="How long a session cookie lasts from sign-in "
                                 "(hours); then the rater needs a new login link.")
    busy_timeout: float = Field(BUSY_TIMEOUT_S, gt=0, le=600, description="Seconds a request waits for the database's "
                                "write lock (another process writing) before it answers 503 with Retry-After.")
    media: Path | None = Field(None, description=MEDIA_HELP)
    secret_key_file: str | None = Field(None, description="File with the key that signs session cookies, made with mode "
                                         "0600 on first start (default $ALIGNLOOP_HOME/feedback-secret-key); "
                                         "ALIGNLOOP_SECRET_KEY, when set, is used instead.")


def shown_db(db: str) -> str:
    """`--db` for messages: a URL's password is masked."""
    if "://" not in db:
        return db
    from sqlalchemy.engine import make_url

    return make_url(db).render_as_string(hide_password=True)


def _open(db: str, must_exist: bool = False):
    """The database for a command: it waits longer for the write lock than a web request."""
    from alignloop.feedback import store

    if must_exist and "://" not in db and not Path(db).exists():
        raise ConfigError(f"--db {db}: no such database (create a campaign first: alignloop feedback create)")
    return store.open_db(db, busy_timeout=CLI_BUSY_TIMEOUT_S)


def run_create(cfg: FeedbackCreateConfig) -> None:
    from alignloop.data.io import read_records
    from alignloop.data.records import BinaryFeedback, Comparison, Samples
    from alignloop.feedback import store

    samples = read_records(cfg.samples, Samples)
    gold = read_records(cfg.gold, BinaryFeedback if cfg.kind == "thumbs" else Comparison) if cfg.gold else []
    instructions = cfg.instructions_file.read_text(encoding="utf-8") if cfg.instructions_file else cfg.instructions
    engine, sessions = _open(cfg.db)
    with sessions() as s:
        try:
            if cfg.kind == "clips":
                samples, gold = clip_videos(s, cfg, samples, gold)
            c = store.create_campaign(s, name=cfg.name or cfg.samples.stem, kind=cfg.kind, samples=samples,
                                      raters_per_item=cfg.raters_per_item, instructions=instructions, gold=gold,
                                      gold_rate=cfg.gold_rate, seed=cfg.seed,
                                      where=[f"{cfg.samples}: record {i + 1}" for i in range(len(samples))],
                                      options=campaign_options(cfg))
        except store.FeedbackError as err:
            raise ConfigError(err.message) from None
        click.echo(f"campaign {c.id} {c.name!r}: {len(samples)} items ({cfg.kind}, {cfg.raters_per_item} raters "
                   f"per item), {len(gold)} gold items, in {shown_db(cfg.db)}")
    engine.dispose()


def clip_videos(s, cfg: FeedbackCreateConfig, samples: list, gold: list) -> tuple[list, list]:
    """A clips campaign's records with their videos in the media folder (meta.videos -> meta.media)."""
    from alignloop.feedback import store

    folder = store.media_dir(cfg.db, cfg.media)
    if folder is None:
        raise ConfigError("--media: give the videos' folder (a database URL has no folder beside it)")
    samples = store.attach_videos(s, folder, samples, cfg.samples.parent, str(cfg.samples))
    gold = store.attach_videos(s, folder, gold, cfg.gold.parent, str(cfg.gold)) if gold else []
    return samples, gold


def run_add_rater(cfg: AddRaterConfig) -> None:
    from alignloop.feedback import store
    from alignloop.feedback.auth import check_base_url

    try:
        base_url = check_base_url(cfg.base_url) if cfg.base_url else None
    except ValueError as err:
        raise ConfigError(f"--base-url: {err}") from None
    engine, sessions = _open(cfg.db)
    with sessions() as s:
        try:
            rater, login, api = store.add_rater(s, cfg.name, admin=cfg.admin, api_token=cfg.api_token,
                                                base_url=base_url)
        except store.FeedbackError as err:
            raise ConfigError(err.message) from None
        shown = base_url or store.setting(s, "base_url") or DEFAULT_BASE_URL
        click.echo(f"rater {rater.name!r} (id {rater.id}, {rater.role})")
        click.echo(f"login link (works once): {shown}/login/{login}")
        if api:
            click.echo(f"API token (Authorization: Bearer ...): {api}")
    engine.dispose()


def run_set_attributes(cfg: SetAttributesConfig) -> None:
    from sqlalchemy import select

    from alignloop.feedback import store
    from alignloop.feedback.db import Rater

    engine, sessions = _open(cfg.db, must_exist=True)
    with sessions() as s:
        try:
            rater_id = s.scalar(select(Rater.id).where(Rater.name == cfg.name.strip()))
            if rater_id is None:
                raise store.NotFound(f"no rater {cfg.name!r} (add them first: alignloop feedback add-rater)")
            merged = store.set_attributes(s, rater_id, store.parse_attributes(cfg.attributes, "--attributes"))
        except store.FeedbackError as err:
            raise ConfigError(err.message) from None
    engine.dispose()
    click.echo(f"rater {cfg.name!r}: " + (", ".join(f"{k}={v}" for k, v in sorted(merged.items())) or "no attributes"))


def run_status(cfg: FeedbackStatusConfig) -> None:
    from alignloop.feedback import reports

    engine, sessions = _open(cfg.db, must_exist=True)
    with sessions() as s:
        campaigns, raters = reports.campaign_summaries(s), reports.rater_summaries(s)
    engine.dispose()
    if not campaigns:
        click.echo("no campaigns")
    for c in campaigns:
        click.echo(f"campaign {c['id']} {c['name']!r} ({c['kind']}, {c['raters_per_item']} raters per item): "
                   f"{c['items']} items, {c['judgments']}/{c['expected']} judgments ({100 * c['completion']:.0f}%"
                   + (f"; {c['abstained']} can't tell" if c["kind"] == "clips" else "") + "), "
                   f"{c['complete_items']} items complete, {c['open']} open, {c['skipped']} skipped, "
                   f"{c['gold_judgments']} gold judgments on {c['gold_items']} gold items")
        for name, n in c["per_rater"].items():
            click.echo(f"    {name}: {n}")
    if raters:
        click.echo("raters:")
    for r in raters:
        t = f"{r['mean_time_s']:.1f} s mean, {r['median_time_s']:.1f} s median per item" if r["mean_time_s"] is not None else "no time yet"
        click.echo(f"    {r['name']} ({r['role']}): {r['judgments']} judgments, {r['skipped']} skipped, "
                   f"{r['open']} open, {t}")


def run_export(cfg: FeedbackExportConfig) -> None:
    from alignloop.data.io import write_as
    from alignloop.feedback import reports, store

    engine, sessions = _open(cfg.db, must_exist=True)
    with sessions() as s:
        try:
            ids = [store.find_campaign(s, cfg.campaign).id] if cfg.campaign else None
            records = reports.export_records(s, ids, include_gold=cfg.include_gold)
        except store.FeedbackError as err:
            raise ConfigError(err.message) from None
    engine.dispose()
    n, _ = write_as(cfg.out, records, cfg.format)
    click.echo(f"wrote {n} {'TRL rows' if cfg.format == 'trl' else 'records'} to {cfg.out}")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run_serve(cfg: ServeConfig, chat=None) -> None:
    """Run the app; `chat` (chat_web.ChatSettings) adds the chat page and the arena (`alignloop chat`)."""
    import uvicorn

    from alignloop.feedback.app import create_app

    try:
        app = create_app(cfg.db, secure_cookies=cfg.secure_cookies, gold_threshold=cfg.gold_threshold,
                         base_url=cfg.base_url, default_base_url=f"http://{_url_host(cfg.host)}:{cfg.port}",
                         session_hours=cfg.session_hours,
                         secret_key_file=Path(cfg.secret_key_file) if cfg.secret_key_file else None,
                         busy_timeout=cfg.busy_timeout, media=cfg.media, chat=chat)
    except ValueError as err:  # a bad --base-url or session key
        raise ConfigError(str(err)) from None
    what = "chat and feedback app" if chat is not None else "feedback app"
    click.echo(f"{what} on http://{cfg.host}:{cfg.port} (database {shown_db(cfg.db)}); API spec at /docs")
    # Idle keep-alive connections stay open longer than clients keep them (httpx: 5 s), so a
    # client never sends a request on a connection the server is closing at that moment.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_keep_alive=KEEP_ALIVE_S)


group = click.Group("feedback", help="Human feedback: campaigns of items that raters rank in the web app (alignloop serve).",
                    context_settings={"max_content_width": 110})
group.add_command(config_command(FeedbackCreateConfig, run_create, "create",
                                 "Create a campaign from a samples file."))
group.add_command(config_command(AddRaterConfig, run_add_rater, "add-rater",
                                 "Add a rater (or re-issue a login link) and print the one-time login link.",
                                 positional=("name",)))
group.add_command(config_command(SetAttributesConfig, run_set_attributes, "set-attributes",
                                 "Set a rater's attributes (region, language, expert, ...) for diverse panels.",
                                 positional=("name",)))
group.add_command(config_command(FeedbackStatusConfig, run_status, "status",
                                 "Progress per campaign and per rater."))
group.add_command(config_command(FeedbackExportConfig, run_export, "export",
                                 "Write the judgments as comparisons JSONL (source: human)."))

serve_command = config_command(ServeConfig, run_serve, "serve",
                               "Run the feedback web app (rater pages, admin pages, JSON API).")
