"""The feedback app and the quality tools together: `alignloop feedback simulate | plan`,
`alignloop quality report --db` on a real campaign database, and the quality figures on the
admin page."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from alignloop.cli import main
from alignloop.data.io import DataError
from alignloop.data.records import BinaryFeedback, Comparison, Samples
from alignloop.feedback import reports, store
from alignloop.feedback.app import create_app
from alignloop.feedback.db import make_engine
from alignloop.quality.cli import load_judgments_from_db
from alignloop.quality.judgments import load_judgments
from alignloop.quality.report import summary_for_admin

from .conftest import REPO, hidden

N_ITEMS, N_GOLD = 40, 8
SLOPPY_WRONG_GOLD = 3  # sloppy gets 5 of 8 gold items right: 0.625, below 0.75


def seeded_samples() -> list[Samples]:
    """K = 2 items whose better response (the truth) is always responses[0]; which one is
    longer alternates, so length says nothing about quality."""
    out = []
    for n in range(N_ITEMS):
        good, bad = f"Answer {n}: correct.", f"Answer {n}: wrong, " + "padding " * (1 + n % 3)
        if n % 2:
            good, bad = good + " With a careful explanation of why." * 2, f"Wrong {n}."
        out.append(Samples(id=f"s{n}", prompt=f"Question {n}?", responses=[good, bad], model="m"))
    return out


def gold_records() -> list[Comparison]:
    return [Comparison(id=f"g{n}", prompt=f"Gold question {n}?", responses=[f"gold right {n}", f"gold wrong {n}"],
                       ranking=[0, 1]) for n in range(N_GOLD)]


def answer(rater: str, a, n_gold_seen: int, n_regular_seen: int) -> list[int]:
    """A rater's ranking in display positions. careful: the truth (responses[0], or the gold
    answer); lefty: on regular items always the response shown first (planted position bias),
    on gold items the truth; sloppy: wrong on its first 3 gold items and every 4th item."""
    truth = 0 if not a.item.is_gold else a.item.gold_answer[0]
    pos_truth = a.display_order.index(truth)
    right, wrong = [pos_truth, 1 - pos_truth], [1 - pos_truth, pos_truth]
    if rater == "lefty":
        return right if a.item.is_gold else [0, 1]
    if rater == "sloppy":
        if a.item.is_gold:
            return wrong if n_gold_seen < SLOPPY_WRONG_GOLD else right
        return wrong if n_regular_seen % 4 == 3 else right
    return right


def seed_campaign(sessions, name: str = "seeded") -> None:
    """A compare campaign answered through the store API by careful, lefty and sloppy (every
    rater judges every item; gold_rate 1 puts each rater's 8 gold items first)."""
    with sessions() as s:
        store.create_campaign(s, name, "compare", seeded_samples(), raters_per_item=3, gold=gold_records(),
                              gold_rate=1.0, seed=1)
        for rater_name in ("careful", "lefty", "sloppy"):
            rater = store.add_rater(s, rater_name)[0]
            seen = {True: 0, False: 0}
            while (a := store.next_assignment(s, rater)) is not None:
                ranking = answer(rater_name, a, seen[True], seen[False])
                store.submit_judgment(s, rater, a.id, ranking=ranking, unsafe=[1] if seen[False] == 2 else [])
                seen[a.item.is_gold] += 1
            assert seen == {True: N_GOLD, False: N_ITEMS}


def test_export_carries_the_meta_fields_the_quality_tools_read(sessions):
    seed_campaign(sessions)
    with sessions() as s:
        recs = reports.export_records(s)
    assert len(recs) == 3 * (N_ITEMS + N_GOLD)
    for r in recs:
        m = r.meta
        assert {"display_order", "submitted_at", "time_spent_s", "item_id", "campaign", "is_gold", "unsafe"} <= set(m)
        assert ("gold_ranking" in m) == m["is_gold"] and m["campaign"] == "seeded"
    j = load_judgments(recs)
    assert len(j.rankings) == len(recs) and j.duplicates_dropped == 0  # item_id is per item, not per record
    assert j.rankings["is_gold"].sum() == 3 * N_GOLD and j.rankings["gold_tiers"].notna().sum() == 3 * N_GOLD
    assert j.pairs["first"].abs().eq(1).all()  # display order known for every pair
    lefty = j.pairs[(j.pairs["rater"] == "lefty") & ~j.pairs["is_gold"]]
    assert ((lefty["y"] == lefty["first"]).mean()) == 1.0  # the shown-first response always won


def test_quality_report_from_db_finds_the_planted_bias_and_equals_the_export_route(capsys, tmp_path, db_path,
                                                                                    sessions):
    seed_campaign(sessions)
    db = str(db_path)
    main(["quality", "report", "--db", db, "--out", str(tmp_path / "from_db"), "--n-boot", "20"])
    out = capsys.readouterr().out
    assert re.search(r"sloppy\s+gold 0\.625 \(below, weight 0\.500\)", out), out
    assert re.search(r"careful\s+gold 1\.000 \(pass, weight 1\.000\)", out), out
    assert "position:lefty" in out
    main(["feedback", "export", "--db", db, "--out", str(tmp_path / "c.jsonl")])
    main(["quality", "report", "--data", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "from_file"),
          "--n-boot", "20"])
    capsys.readouterr()

    def report(d: str) -> dict:
        data = json.loads((tmp_path / d / "report.json").read_text())
        data.pop("generated_at")
        return data

    a = report("from_db")
    assert a == report("from_file")
    assert a["input"]["ranking_judgments"] == 3 * (N_ITEMS + N_GOLD) and a["input"]["gold_items"] == N_GOLD
    found = {(f["detector"], f["scope"]) for f in a["biases"]["findings"] if f["detected"]}
    assert ("position", "lefty") in found
    assert not {f for f in found if f[1] in ("careful", "sloppy") or f[0] == "length"}
    assert a["calibration"]["lefty"]["accuracy"] == 1.0 and a["calibration"]["sloppy"]["status"] == "below"
    assert 0 < a["agreement"]["overall"]["pairwise_agreement"] < 1
    page = (tmp_path / "from_db" / "report.html").read_text()
    assert "Findings" in page and "lefty" in page and page.count("<img") >= 3


def test_reading_a_database_never_creates_or_migrates_it(tmp_path, db_path, sessions):
    missing = tmp_path / "missing.db"
    for ref in (str(missing), f"sqlite:///{missing}"):
        with pytest.raises(DataError, match="no such database"):
            load_judgments_from_db(ref)
    assert not missing.exists()
    with pytest.raises(DataError, match="no judgments yet"):
        load_judgments_from_db(str(db_path))  # migrated by the fixture, but empty
    old = tmp_path / "old.db"
    engine = make_engine(old)
    store.migrate(engine, "0001")
    with pytest.raises(DataError, match="schema revision 0001"):
        load_judgments_from_db(str(old))
    assert store.schema_revision(engine) == "0001"
    engine.dispose()


def test_thumbs_votes_are_per_response_and_share_a_database_with_rankings(db_path, sessions):
    with sessions() as s:
        store.create_campaign(s, "thumbs", "thumbs", seeded_samples()[:4], raters_per_item=2, gold_rate=0.0)
        store.create_campaign(s, "pairs", "compare", seeded_samples()[:1], raters_per_item=1, gold_rate=0.0)
        for name in ("ann", "bob"):
            rater = store.add_rater(s, name)[0]
            while (a := store.next_assignment(s, rater)) is not None:
                if a.campaign.kind == "thumbs":
                    store.submit_judgment(s, rater, a.id, labels=[1, 0])
                else:
                    store.submit_judgment(s, rater, a.id, ranking=[1, 0])
        recs = reports.export_records(s, [1])
    assert len(recs) == 2 * 4 * 2 and all(isinstance(r, BinaryFeedback) for r in recs)
    j = load_judgments(recs)
    assert len(j.thumbs) == 16 and j.duplicates_dropped == 0 and j.thumbs["item"].nunique() == 8
    both = load_judgments_from_db(str(db_path))  # `feedback export` refuses to mix; the quality tools need not
    assert len(both) == 17 and sum(isinstance(r, Comparison) for r in both) == 1
    assert [r.meta["judgment_id"] for r in both] == sorted(r.meta["judgment_id"] for r in both)


# --- admin page ------------------------------------------------------------------------------

def admin_client(app, sessions) -> TestClient:
    with sessions() as s:
        token = store.add_rater(s, "boss", admin=True)[1]
    client = TestClient(app)
    page = client.get(f"/login/{token}")
    client.post(f"/login/{token}", data={"csrf_token": hidden(page.text, "csrf_token")})
    return client


def row(html: str, table: str, first_cell: str) -> str:
    body = re.search(rf'<table id="{table}">(.*?)</table>', html, flags=re.S).group(1)
    for tr in re.findall(r"<tr.*?</tr>", body, flags=re.S):
        if re.search(rf"<td>{re.escape(first_cell)}</td>", tr):
            return tr
    raise AssertionError(f"no row {first_cell} in {table}")


def test_admin_page_shows_agreement_calibration_and_biases(db_path, sessions):
    seed_campaign(sessions, name="seeded <i>q</i>")
    with sessions() as s:
        head = summary_for_admin(reports.export_records(s), consensus_method="majority")
        store.create_campaign(s, "empty", "rank", seeded_samples()[:2], raters_per_item=1)
    boss = admin_client(create_app(db_path), sessions)

    html = boss.get("/admin?quality=1").text
    assert "Feedback quality: seeded &lt;i&gt;q&lt;/i&gt;" in html and "<i>q</i>" not in html
    panel = re.search(r'<table id="quality-panel">.*?</table>', html, flags=re.S).group(0)
    assert f"<td>{head['pairwise_agreement']:.3f}</td>" in panel
    assert f"<td>{head['krippendorff_alpha']:.3f}</td>" in panel
    assert f"<td>{head['position_bias']['p']:.2g}</td>" in panel and "position:lefty" in panel
    sloppy, careful, lefty = (row(html, "quality-raters", r) for r in ("sloppy", "careful", "lefty"))
    assert 'class="flagged"' in sloppy and "below threshold (flagged)" in sloppy and "<td>0.625</td>" in sloppy
    assert "<td>0.50</td>" in sloppy  # down-weighted: (0.625 - 0.5) / (0.75 - 0.5)
    assert 'class="flagged"' not in careful and "<td>pass</td>" in careful and "<td>1.000</td>" in careful
    assert f"<td>{head['raters']['careful']['agreement_with_others']:.3f}</td>" in careful
    assert "<td>position</td>" in lefty and "<td>1.000</td>" in lefty
    biases = re.search(r'<table id="quality-biases">.*?</table>', html, flags=re.S).group(0)
    assert "<td>length</td><td>sloppy</td>" in biases and "<td>position</td><td>lefty</td>" in biases
    lefty_test = next(f for f in head["bias_tests"] if (f["detector"], f["scope"]) == ("position", "lefty"))
    assert f"<td>{lefty_test['p']:.2g}</td>" in biases
    assert "Gold screening threshold 75%" in html

    default = boss.get("/admin").text  # the newest campaign: no judgments yet
    assert "Feedback quality: empty" in default and 'id="quality-empty">No judgments yet.' in default
    assert '<option value="1">seeded &lt;i&gt;q&lt;/i&gt;</option>' in default
    assert 'id="quality-raters"' not in default and boss.get("/admin?quality=99").status_code == 200


def test_gold_threshold_is_a_server_setting(db_path, sessions):
    seed_campaign(sessions)
    boss = admin_client(create_app(db_path, gold_threshold=0.6), sessions)
    html = boss.get("/admin").text
    sloppy = row(html, "quality-raters", "sloppy")
    assert 'class="flagged"' not in sloppy and "<td>pass</td>" in sloppy and "threshold 60%" in html
    with pytest.raises(ValueError, match="gold_threshold"):
        create_app(db_path, gold_threshold=0.4)


# --- commands --------------------------------------------------------------------------------

def alignloop(*argv: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "alignloop.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_feedback_simulate_and_plan_run_as_feedback_commands(tmp_path):
    r = alignloop("feedback", "--help", cwd=tmp_path)
    assert r.returncode == 0 and re.search(r"^\s+simulate\s+Simulated rater panel", r.stdout, flags=re.M)
    assert re.search(r"^\s+plan\s+How consensus accuracy", r.stdout, flags=re.M)
    assert "--gold-threshold" in alignloop("serve", "--help", cwd=tmp_path).stdout
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"id": s.id, "prompt": s.prompt, "responses": s.responses}) + "\n"
                               for s in seeded_samples()[:30]))
    out = tmp_path / "sim.jsonl"
    r = alignloop("feedback", "simulate", "--samples", str(samples), "--gold", "alignloop.quality.gold:helpful_harmless",
                  "--raters", "careful:noise=0.2, lefty:position_bias=0.5, plain", "--per-item", "2",
                  "--gold-fraction", "0.2", "--out", str(out), "--seed", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "judgments by 3 simulated raters on 30 items" in r.stdout
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["rater"] for x in recs} == {"careful", "lefty", "plain"} and all(x["source"] == "simulated" for x in recs)
    assert len([x for x in (tmp_path / "sim.gold.jsonl").read_text().splitlines()]) == 30
    assert (tmp_path / "sim.config.yaml").exists()
    r = alignloop("feedback", "plan", "--samples", str(samples), "--raters", "a, b:noise=2", "--repeats", "1",
                  "--methods", "majority", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^\s+1\s+30\s+\d\.\d{3} \+-0\.000$", r.stdout, flags=re.M), r.stdout
