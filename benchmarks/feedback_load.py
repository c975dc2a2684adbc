"""The feedback app under load: N simulated raters fetch and submit assignments while a second
process runs `alignloop feedback create` and an admin uploads a large campaign slowly.

    .venv/bin/python benchmarks/feedback_load.py                       # SQLite, 200 raters, 60 s, think 10 s
    .venv/bin/python benchmarks/feedback_load.py --db postgresql://postgres:postgres@127.0.0.1/postgres
    .venv/bin/python benchmarks/feedback_load.py --think 1,2,5,10 --seconds 30   # a sweep: where it saturates

Everything stays on this machine: a real `alignloop serve` process on a free 127.0.0.1 port,
a database made for the run (a SQLite file in a temporary folder, or a fresh database on the
given PostgreSQL server on loopback, dropped afterwards), and the raters as asyncio tasks
sharing one httpx client. Both the number of raters (at most 1000) and the time (at most
600 s) are bounded.

Each rater, after a random start within the first think time, loops: GET /api/next, think
(uniform in [0.5, 1.5] x --think seconds; 0 = no pause), POST the judgment with an
Idempotency-Key. A 503 is counted, then the same request is sent again after its
Retry-After (with the same key). From 2 s on, a second process creates a campaign of
--create-items items with `alignloop feedback create`, and an admin POSTs a samples file
of --upload-items items to /api/campaigns, sent in small pieces over --upload-seconds.

The think time. A person ranking an item reads the prompt and every response first: the
benchmark's items have 4 responses of 40 words (about 170 words with the prompt), which
take about 40 s to read at 250 words per minute, before any deciding; in the README's
`feedback status` example raters take 11-14 s per item on shorter texts. The default, 10 s
per judgment, is a fast rater on short texts, so 200 raters ask for about 40 requests/s,
several times what 200 careful people would: the default stays a stress test without
pretending people answer every second. `--think 1,2,5,10` runs the load once per value (a
fresh database and server each) and ends with one line per value: the think time at which
p99 leaves its floor is where the server saturates on this machine (0 = no pause at all).

Printed: judgments/s, request latency (p50 / p99 / max, from the client, per request kind),
errors by status, and acknowledged vs stored judgments (after the run, read from the
database: every acknowledged judgment stored, with its id, and nothing else).
`run_load` is also what tests/feedback/test_feedback_load.py runs, smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MAX_RATERS, MAX_SECONDS = 1000, 600
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class LoadConfig:
    raters: int = 200
    seconds: float = 60.0
    think: float = 10.0  # mean seconds between receiving an item and answering it (see the docstring)
    items: int = 3000  # items of the campaign the raters start on (3 raters each)
    create_items: int = 5000  # `alignloop feedback create` in a second process
    upload_items: int = 2000  # the admin's slow upload
    upload_seconds: float = 8.0
    db: str = "sqlite"  # or a postgresql:// URL of a server on loopback
    seed: int = 0


@dataclass
class LoadResult:
    config: LoadConfig
    elapsed_s: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    during_writers: list[float] = field(default_factory=list)  # raters' requests answered while the writers ran
    statuses: Counter = field(default_factory=Counter)  # (kind, status) of every reply
    failures: list[str] = field(default_factory=list)  # replies that were neither success nor 503
    acknowledged: dict[int, int] = field(default_factory=dict)  # assignment id -> judgment id
    stored: dict[int, int] = field(default_factory=dict)
    campaign_items: dict[str, int] = field(default_factory=dict)  # items of each campaign after the run
    create: str = ""  # what the second process printed (or its error)
    create_s: float = 0.0
    upload_status: int = 0
    upload_s: float = 0.0
    server_errors: list[str] = field(default_factory=list)  # tracebacks in the server's log
    machine_load: str = ""  # what else ran on the machine meanwhile (load average, CPU pressure)
    server_cpu_s: float = 0.0  # CPU time the server process used during the run
    client_cpu_s: float = 0.0  # CPU time of this process (the raters) during the run

    @property
    def five_xx(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status >= 500)

    @property
    def consistent(self) -> bool:
        return self.acknowledged == self.stored


# --- set-up ----------------------------------------------------------------------------------

def samples(n: int, tag: str) -> list[dict]:
    """n prompts with 4 responses of about 200 characters each."""
    words = "the a plant light water sugar leaf root sun energy cell makes uses from into air".split()
    rng = random.Random(tag)
    return [{"id": f"{tag}{i}", "prompt": f"{tag} question {i}: " + " ".join(rng.choices(words, k=12)),
             "responses": [" ".join(rng.choices(words, k=40)) for _ in range(4)], "model": "bench"}
            for i in range(n)]


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Database:
    """The run's database: a SQLite file under `work`, or a fresh PostgreSQL database."""

    def __init__(self, db: str, work: Path):
        self.server_url = None if db == "sqlite" else db
        if self.server_url is None:
            self.url = str(work / "load.db")
            return
        from sqlalchemy.engine import make_url

        server = make_url(db)
        if server.host not in LOOPBACK:
            raise SystemExit(f"--db {server.render_as_string()}: only a server on loopback")
        self.name = f"alignloop_load_{uuid.uuid4().hex[:8]}"
        self._admin("CREATE DATABASE")
        self.url = server.set(database=self.name).render_as_string(hide_password=False)

    def _admin(self, verb: str) -> None:
        from sqlalchemy import create_engine, text

        from alignloop.feedback.db import database_url

        engine = create_engine(database_url(self.server_url), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'{verb} "{self.name}"' + (" WITH (FORCE)" if verb == "DROP DATABASE" else "")))
        engine.dispose()

    def drop(self) -> None:
        if self.server_url is not None:
            self._admin("DROP DATABASE")


def prepare(db: str, cfg: LoadConfig) -> tuple[list[str], str]:
    """The raters' campaign, the raters' API tokens and an admin's."""
    from alignloop.data.records import Samples
    from alignloop.feedback import store

    engine, sessions = store.open_db(db)
    with sessions() as s:
        store.create_campaign(s, "load", "rank", [Samples(**r) for r in samples(cfg.items, "load")],
                              raters_per_item=3, gold_rate=0.0)
        tokens = [store.add_rater(s, f"rater{i}", api_token=True)[2] for i in range(cfg.raters)]
        admin = store.add_rater(s, "admin", admin=True, api_token=True)[2]
    engine.dispose()
    return tokens, admin


def read_database(db: str, result: LoadResult) -> None:
    """The stored judgments (assignment id -> judgment id) and the items of each campaign."""
    from sqlalchemy import select

    from alignloop.feedback import reports, store
    from alignloop.feedback.db import Judgment

    engine, sessions = store.open_db(db, upgrade=False)
    with sessions() as s:
        result.stored = dict(s.execute(select(Judgment.assignment_id, Judgment.id)).all())
        result.campaign_items = {c["name"]: c["items"] for c in reports.campaign_summaries(s)}
    engine.dispose()


def child_env(work: Path) -> dict[str, str]:
    return {**os.environ, "ALIGNLOOP_HOME": str(work / "home"),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


class Server:
    """`alignloop serve` in its own process on a free loopback port."""

    def __init__(self, db: str, work: Path):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = work / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alignloop.cli", "serve", "--db", db, "--port", self.url.rsplit(":", 1)[1],
             "--log-level", "warning"], env=child_env(work), stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> list[str]:
        """Stop it; the tracebacks it logged."""
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        text = self.log.read_text(errors="replace")
        return [chunk for chunk in text.split("ERROR") if "Traceback" in chunk]


# --- the load --------------------------------------------------------------------------------

class Load:
    """The simulated raters, the admin's slow upload and the second process, on one event loop."""

    def __init__(self, cfg: LoadConfig, server: Server, tokens: list[str], admin: str, work: Path, db: str):
        self.cfg, self.server, self.tokens, self.admin, self.work, self.db = cfg, server, tokens, admin, work, db
        self.result = LoadResult(cfg)
        self.deadline = 0.0
        self.writers_running = False

    async def request(self, client: httpx.AsyncClient, kind: str, method: str, url: str, retry: bool = True,
                      **kw) -> httpx.Response | None:
        """One request, sent again after Retry-After while it answers 503 (if `retry`); None on a
        failure."""
        while True:
            start = time.perf_counter()
            try:
                r = await client.request(method, url, **kw)
            except httpx.HTTPError as err:
                self.result.failures.append(f"{kind}: {type(err).__name__}: {err}")
                return None
            self.result.latencies[kind].append(time.perf_counter() - start)
            if self.writers_running and kind != "upload":
                self.result.during_writers.append(time.perf_counter() - start)
            self.result.statuses[kind, r.status_code] += 1
            if r.status_code != 503 or not retry:
                if r.status_code >= 400:
                    self.result.failures.append(f"{kind}: {r.status_code} {r.text[:200]}")
                    return None
                return r
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))

    async def rater(self, client: httpx.AsyncClient, index: int) -> None:
        rng = random.Random(f"{self.cfg.seed}:{index}")
        headers = {"Authorization": f"Bearer {self.tokens[index]}"}
        await asyncio.sleep(rng.random() * self.cfg.think)
        while time.perf_counter() < self.deadline:
            r = await self.request(client, "next", "GET", "/api/next", headers=headers)
            if r is None:
                return
            a = r.json()["assignment"]
            if a is None:
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(self.cfg.think * rng.uniform(0.5, 1.5))
            ranking = [x["position"] for x in a["responses"]]
            rng.shuffle(ranking)
            r = await self.request(client, "judgment", "POST", f"/api/assignments/{a['assignment_id']}/judgment",
                                   json={"ranking": ranking}, headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
            if r is None:
                return
            self.result.acknowledged[a["assignment_id"]] = r.json()["judgment_id"]

    async def slow_upload(self, client: httpx.AsyncClient) -> None:
        """POST /api/campaigns with a large samples file, sent in pieces over upload_seconds."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nuploaded\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"samples\"; filename=\"uploaded.jsonl\"\r\n"
                f"Content-Type: application/x-ndjson\r\n\r\n").encode()
        body += jsonl(samples(self.cfg.upload_items, "upload")) + f"\r\n--{boundary}--\r\n".encode()
        pieces = max(1, int(self.cfg.upload_seconds * 10))
        size = -(-len(body) // pieces)

        async def trickle():
            for i in range(0, len(body), size):
                yield body[i:i + size]
                await asyncio.sleep(self.cfg.upload_seconds / pieces)

        start = time.perf_counter()
        r = await self.request(client, "upload", "POST", "/api/campaigns", retry=False, content=trickle(), headers={
            "Authorization": f"Bearer {self.admin}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
        self.result.upload_status = 0 if r is None else r.status_code
        self.result.upload_s = time.perf_counter() - start

    async def second_process(self) -> None:
        """`alignloop feedback create` of a large samples file, in another process."""
        path = self.work / "created.jsonl"
        path.write_bytes(jsonl(samples(self.cfg.create_items, "created")))
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "alignloop.cli", "feedback", "create", "--db", self.db, "--samples", str(path),
            "--name", "created", env=child_env(self.work), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        self.result.create = out.decode(errors="replace").strip()
        self.result.create_s = time.perf_counter() - start
        if proc.returncode != 0:
            self.result.failures.append(f"feedback create: exit {proc.returncode}: {self.result.create}")

    async def concurrent_writers(self, client: httpx.AsyncClient) -> None:
        await asyncio.sleep(2.0)
        self.writers_running = True
        await asyncio.gather(*([self.second_process()] if self.cfg.create_items else []),
                             *([self.slow_upload(client)] if self.cfg.upload_items else []))
        self.writers_running = False

    async def run(self) -> LoadResult:
        # idle connections are dropped before uvicorn's 5 s keep-alive would close them under a request
        limits = httpx.Limits(max_connections=self.cfg.raters + 2, max_keepalive_connections=self.cfg.raters + 2,
                              keepalive_expiry=4.0)
        async with httpx.AsyncClient(base_url=self.server.url, limits=limits, timeout=120) as client:
            start, server_cpu, client_cpu = time.perf_counter(), self.server.cpu_s(), time.process_time()
            self.deadline = start + self.cfg.seconds
            tasks = [self.rater(client, i) for i in range(self.cfg.raters)]
            if self.cfg.create_items or self.cfg.upload_items:
                tasks.append(self.concurrent_writers(client))
            await asyncio.gather(*tasks)
            self.result.elapsed_s = time.perf_counter() - start
            self.result.server_cpu_s = self.server.cpu_s() - server_cpu
            self.result.machine_load = machine_load()
            self.result.client_cpu_s = time.process_time() - client_cpu
        return self.result


def run_load(cfg: LoadConfig) -> LoadResult:
    """Run the load and check it against the database; the server is stopped at the end."""
    if not 1 <= cfg.raters <= MAX_RATERS or not 0 < cfg.seconds <= MAX_SECONDS:
        raise SystemExit(f"--raters 1..{MAX_RATERS}, --seconds up to {MAX_SECONDS}")
    with tempfile.TemporaryDirectory(prefix="feedback_load_") as tmp:
        work = Path(tmp)
        database = Database(cfg.db, work)
        try:
            tokens, admin = prepare(database.url, cfg)
            server = Server(database.url, work)
            try:
                result = asyncio.run(Load(cfg, server, tokens, admin, work, database.url).run())
            finally:
                errors = server.stop()
            result.server_errors = errors
            read_database(database.url, result)
        finally:
            database.drop()
    return result


# --- report ----------------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_load() -> str:
    """The 1-minute load average and, where Linux reports it, the share of the last minute in
    which runnable tasks waited for a CPU: how much else was running meanwhile."""
    text = f"load average {os.getloadavg()[0]:.1f}"
    try:
        some = Path("/proc/pressure/cpu").read_text().split()[2]  # "avg60=12.34"
        text += f", CPU pressure {some.split('=')[1]}% (time in which tasks waited for a CPU)"
    except (OSError, IndexError):
        pass
    return text


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def latency_line(name: str, values: list[float]) -> str:
    if not values:
        return f"    {name}: none"
    ms = [v * 1000 for v in values]
    return (f"    {name + ':':<10} n={len(ms):<6} p50 {percentile(ms, 0.5):6.1f} ms   p99 {percentile(ms, 0.99):6.1f} ms"
            f"   max {max(ms):7.1f} ms")


def report(r: LoadResult) -> str:
    cfg = r.config
    db = "SQLite" if cfg.db == "sqlite" else "PostgreSQL"
    statuses = Counter()
    for (_, status), n in r.statuses.items():
        statuses[status] += n
    errors = {s: n for s, n in sorted(statuses.items()) if s >= 400}
    everything = r.latencies["next"] + r.latencies["judgment"]  # the raters' requests (the upload has its line)
    lines = [
        f"feedback load on {db}: {cfg.raters} raters for {cfg.seconds:g} s, think {cfg.think:g} s; "
        f"{cpu_name()}, {os.cpu_count()} cores; over the last minute: {r.machine_load}",
        f"  concurrent writers: `alignloop feedback create` of {cfg.create_items} items in another process "
        f"({r.create_s:.1f} s: {r.create.splitlines()[-1] if r.create else '-'}); admin upload of "
        f"{cfg.upload_items} items sent over {cfg.upload_seconds:g} s: {r.upload_status} after {r.upload_s:.1f} s",
        f"  campaigns after the run (items): {r.campaign_items}",
        f"  judgments: {len(r.acknowledged)} acknowledged, {len(r.stored)} stored, "
        f"stored == acknowledged: {'yes' if r.consistent else 'NO'}; "
        f"{len(r.acknowledged) / r.elapsed_s:.1f} judgments/s",
        f"  requests: {len(everything)} in {r.elapsed_s:.1f} s, {len(everything) / r.elapsed_s:.0f}/s; CPU: server "
        f"{r.server_cpu_s:.1f} s ({1000 * r.server_cpu_s / max(1, len(everything)):.1f} ms per request), raters "
        f"{r.client_cpu_s:.1f} s; latency from the client:",
        latency_line("raters", everything),
        *(latency_line(kind, r.latencies[kind]) for kind in ("next", "judgment", "upload")),
        latency_line("raters' requests while the concurrent writers ran", r.during_writers),
        f"  replies by status: {dict(sorted(statuses.items()))}; errors (4xx/5xx): {errors or 'none'}; "
        f"5xx: {r.five_xx}",
    ]
    if r.failures:
        lines.append(f"  failures ({len(r.failures)}): " + "; ".join(r.failures[:5]))
    if r.server_errors:
        lines.append(f"  server tracebacks: {len(r.server_errors)}; first: {r.server_errors[0][:400]}")
    return "\n".join(lines)


def summary(results: list[LoadResult]) -> str:
    """One line per run of a sweep: where p99 leaves its floor, the server saturates."""
    lines = ["think s | judgments/s | requests/s | p50 ms | p99 ms | 5xx | stored = acknowledged | server CPU ms/request"]
    for r in results:
        everything = [v * 1000 for v in r.latencies["next"] + r.latencies["judgment"]]
        lines.append(f"{r.config.think:7g} | {len(r.acknowledged) / r.elapsed_s:11.1f} | "
                     f"{len(everything) / r.elapsed_s:10.0f} | {percentile(everything, 0.5):6.0f} | "
                     f"{percentile(everything, 0.99):6.0f} | {r.five_xx:3d} | "
                     f"{len(r.stored):,} {'=' if r.consistent else '!='} {len(r.acknowledged):,} | "
                     f"{1000 * r.server_cpu_s / max(1, len(everything)):.1f}   ({r.machine_load.split(' (')[0]})")
    return "\n".join(lines)


def think_times(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, or several separated by commas (1,2,5,10)") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: think times are 0 or more seconds")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = LoadConfig()
    parser.add_argument("--raters", type=int, default=defaults.raters, help=f"simulated raters (at most {MAX_RATERS})")
    parser.add_argument("--seconds", type=float, default=defaults.seconds,
                        help=f"run time of each run (at most {MAX_SECONDS})")
    parser.add_argument("--think", type=think_times, default=[defaults.think],
                        help="mean seconds a rater takes per item; several separated by commas run a sweep")
    parser.add_argument("--items", type=int, default=defaults.items, help="items of the raters' campaign")
    parser.add_argument("--create-items", type=int, default=defaults.create_items,
                        help="items of the campaign `feedback create` makes meanwhile (0: none)")
    parser.add_argument("--upload-items", type=int, default=defaults.upload_items,
                        help="items of the admin's slow upload (0: none)")
    parser.add_argument("--upload-seconds", type=float, default=defaults.upload_seconds)
    parser.add_argument("--db", default="sqlite", help="sqlite, or a postgresql:// URL of a server on loopback")
    args = parser.parse_args()
    results = []
    for think in args.think:
        cfg = LoadConfig(raters=args.raters, seconds=args.seconds, think=think, items=args.items,
                         create_items=args.create_items, upload_items=args.upload_items,
                         upload_seconds=args.upload_seconds, db=args.db)
        results.append(run_load(cfg))
        print(report(results[-1]), flush=True)
    if len(results) > 1:
        print(summary(results))
    sys.exit(0 if all(r.consistent and not r.five_xx and not r.failures for r in results) else 1)


if __name__ == "__main__":
    main()
