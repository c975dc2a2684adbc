"""`alignloop feedback create | add-rater | status | export` and `alignloop serve --help`,
run as a user would; and the feedback package never imports torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from alignloop.cli import main
from alignloop.feedback import store
from alignloop.feedback.app import create_app

from .conftest import REPO, hidden, write_samples


def run(capsys, *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_create_add_rater_status_export(capsys, tmp_path, samples_file, db_path):
    db = str(db_path)
    out = run(capsys, "feedback", "create", "--db", db, "--samples", str(samples_file), "--kind", "rank",
              "--raters-per-item", "3", "--instructions", "Best first.")
    assert out.strip() == f"campaign 1 'samples': 3 items (rank, 3 raters per item), 0 gold items, in {db}"
    out = run(capsys, "feedback", "add-rater", "ann", "--db", db, "--base-url", "http://rate.example:8000")
    link = re.search(r"login link \(works once\): http://rate\.example:8000/login/(\S+)", out).group(1)
    out = run(capsys, "feedback", "add-rater", "bot", "--db", db, "--api-token", "--admin")
    assert "rater 'bot' (id 2, admin)" in out
    api = re.search(r"API token \(Authorization: Bearer \.\.\.\): (\S+)", out).group(1)

    app = create_app(db_path)
    browser = TestClient(app)  # the printed link logs ann in
    page = browser.get(f"/login/{link}").text
    browser.post(f"/login/{link}", data={"csrf_token": hidden(page, "csrf_token")})
    html = browser.get("/").text
    aid = int(re.search(r"/assignments/(\d+)/judgment", html).group(1))
    r = browser.post(f"/assignments/{aid}/judgment", follow_redirects=False, data={
        "csrf_token": hidden(html, "csrf_token"), "submission_key": hidden(html, "submission_key"),
        "rank_0": "1", "rank_1": "2", "rank_2": "3", "rank_3": "4"})
    assert r.status_code == 303
    bot = TestClient(app, headers={"Authorization": f"Bearer {api}"})
    a = bot.get("/api/next").json()["assignment"]
    assert bot.post(f"/api/assignments/{a['assignment_id']}/judgment", json={"ranking": [[0, 1], 2, 3]}).status_code == 201

    out = run(capsys, "feedback", "status", "--db", db)
    assert "campaign 1 'samples' (rank, 3 raters per item): 3 items, 2/9 judgments (22%)" in out
    assert "    ann: 1" in out and "    bot: 1" in out
    assert re.search(r"ann \(rater\): 1 judgments, 0 skipped, 0 open, [\d.]+ s mean", out)

    target = tmp_path / "out" / "comparisons.jsonl"
    assert run(capsys, "feedback", "export", "--db", db, "--out", str(target)).strip() == f"wrote 2 records to {target}"
    records = [json.loads(x) for x in target.read_text().splitlines()]
    assert [r["rater"] for r in records] == ["ann", "bot"] and all(r["source"] == "human" for r in records)
    assert records[0]["ranking"] == records[0]["meta"]["display_order"]  # ann ranked in display order
    assert all(set(r["meta"]) >= {"display_order", "time_spent_s", "submitted_at", "rater_id", "campaign"} for r in records)


def test_create_with_gold_and_thumbs_and_mixed_export(capsys, tmp_path, samples_file, db_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"prompt": "2+2?", "responses": ["4", "5"], "ranking": [0, 1]}) + "\n")
    out = run(capsys, "feedback", "create", "--db", str(db_path), "--samples", str(samples_file), "--gold", str(gold),
              "--gold-rate", "0.2", "--name", "with-gold")
    assert "3 items (rank, 3 raters per item), 1 gold items" in out
    pairs = write_samples(tmp_path / "thumbs.jsonl", [{"prompt": "p", "responses": ["a"]}])
    assert "1 items (thumbs" in run(capsys, "feedback", "create", "--db", str(db_path), "--samples", str(pairs), "--kind", "thumbs")
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        r, _, _ = store.add_rater(s, "ann")
        while (a := store.next_assignment(s, r)) is not None:
            k = len(a.item.responses)
            if a.campaign.kind == "thumbs":
                store.submit_judgment(s, r, a.id, labels=[1] * k)
            else:
                store.submit_judgment(s, r, a.id, ranking=list(range(k)))
    err = fails(capsys, "feedback", "export", "--db", str(db_path), "--out", str(tmp_path / "x.jsonl"))
    assert "thumbs and ranking campaigns cannot share one file; choose a campaign" in err
    out = run(capsys, "feedback", "export", "--db", str(db_path), "--out", str(tmp_path / "t.jsonl"), "--campaign", "thumbs")
    assert out.strip().startswith("wrote 1 records")
    assert json.loads((tmp_path / "t.jsonl").read_text())["label"] == 1
    out = run(capsys, "feedback", "export", "--db", str(db_path), "--out", str(tmp_path / "g.jsonl"),
              "--campaign", "with-gold", "--no-include-gold")
    assert all(not json.loads(x)["meta"]["is_gold"] for x in (tmp_path / "g.jsonl").read_text().splitlines())


def test_errors_name_the_file_and_field(capsys, tmp_path, db_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "responses": ["a", "b"]}\n{"prompt": "q"}\n')
    err = fails(capsys, "feedback", "create", "--db", str(db_path), "--samples", str(bad))
    assert err.strip() == f"error: {bad}:2: field 'responses': missing"
    four = write_samples(tmp_path / "four.jsonl")
    err = fails(capsys, "feedback", "create", "--db", str(db_path), "--samples", str(four), "--kind", "compare")
    assert "record 1: field 'responses': a compare campaign needs exactly 2 responses, got 4" in err
    err = fails(capsys, "feedback", "status", "--db", str(tmp_path / "nothing.db"))
    assert "no such database" in err and not (tmp_path / "nothing.db").exists()
    err = fails(capsys, "feedback", "create", "--db", str(db_path), "--samples", str(four), "--raters-per-item", "0")
    assert "raters_per_item" in err
    assert "field 'name'" in fails(capsys, "feedback", "add-rater", "--db", str(db_path))


def test_help_lists_the_commands_and_options(capsys):
    top = run(capsys, "--help")
    assert "feedback" in top and "serve" in top
    assert all(opt in run(capsys, "serve", "--help") for opt in ("--db", "--host", "--port"))
    assert all(opt in run(capsys, "feedback", "add-rater", "--help") for opt in ("NAME", "--admin", "--api-token"))
    assert all(c in run(capsys, "feedback", "--help") for c in ("create", "add-rater", "status", "export"))


def test_feedback_never_imports_torch():
    code = ("import sys; import alignloop.feedback.app, alignloop.feedback.cli, alignloop.feedback.pages, "
            "alignloop.feedback.api, alignloop.feedback.reports; "
            "from alignloop.cli import main; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
