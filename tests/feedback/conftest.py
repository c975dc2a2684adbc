"""Fixtures of the feedback tests: a samples file, a database, an in-process client and a
real server process on loopback."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]

SAMPLES = [
    {"id": "photo", "prompt": "Explain photosynthesis to a child.",
     "responses": ["Plants eat sunlight.", "Plants use light, water and air to make sugar, their food.",
                   "<script>alert('xss')</script><b>bold?</b> I don't know.", "Photosynthesis is a process."],
     "model": "smollm2-135m-instruct", "sampling": {"temperature": 0.8, "top_p": 0.95}},
    {"id": "sum", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
     "responses": ["4", "Four.", "22", "It is 4 because 2 and 2 make 4."],
     "model": "smollm2-135m-instruct", "sampling": {"temperature": 0.7}},
    {"id": "capital", "prompt": "Capital of France?", "responses": ["Paris", "Lyon", "Paris, France.", "Rome"],
     "model": "smollm2-135m-instruct", "sampling": {"temperature": 1.0}},
]


def write_samples(path: Path, records: list[dict] | None = None) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in (records or SAMPLES)), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def app_home(tmp_path, monkeypatch) -> Path:
    """Each test's own ALIGNLOOP_HOME (where the session key file is made), no key from the env."""
    home = tmp_path / "home"
    monkeypatch.setenv("ALIGNLOOP_HOME", str(home))
    monkeypatch.delenv("ALIGNLOOP_SECRET_KEY", raising=False)
    return home


@pytest.fixture
def samples_file(tmp_path) -> Path:
    return write_samples(tmp_path / "samples.jsonl")


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "feedback.db"


@pytest.fixture
def sessions(db_path):
    from alignloop.feedback import store

    engine, factory = store.open_db(db_path)
    yield factory
    engine.dispose()


def hidden(html: str, name: str) -> str:
    """The value of hidden input `name` in a page."""
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no hidden field {name}"
    return m.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`alignloop serve` as a real subprocess on a free loopback port."""

    def __init__(self, db: Path, log: Path):
        self.db, self.log, self.port = db, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alignloop.cli", "serve", "--db", str(self.db), "--port", str(self.port),
             "--log-level", "warning"],
            env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def server_factory(tmp_path):
    started: list[Server] = []

    def make(db: Path) -> Server:
        srv = Server(db, tmp_path / "server.log").start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
