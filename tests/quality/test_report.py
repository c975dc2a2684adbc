"""Calibration by hand; the report, consensus, simulate and plan commands end to end."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from alignloop.data.io import DataError, read_records
from alignloop.data.records import Comparison
from alignloop.quality.calibration import screening
from alignloop.quality.cli import (consensus_command, group, load_judgments_from_db, plan_command, read_judgments,
                                   simulate_command)
from alignloop.quality.judgments import load_judgments
from alignloop.quality.report import summary_for_admin
from quality_helpers import pair


def gold_table():
    recs = []
    for n in range(6):
        recs.append(pair(f"g{n}", "good", 0 if n < 5 else 1, gold=0))   # 5 / 6 right
        recs.append(pair(f"g{n}", "poor", 0 if n < 4 else 1, gold=0))   # 4 / 6 right
        recs.append(pair(f"g{n}", "tier", None if n < 4 else 0, gold=0))  # 4 ties (half) + 2 right = 4 / 6
    recs += [pair("g0", "newbie", 0, gold=0), pair("x", "newbie", 1)]
    return load_judgments(recs)


def test_gold_accuracy_screening_by_hand():
    s = screening(gold_table(), threshold=0.75, mode="downweight", min_gold=5)
    assert s["good"]["accuracy"] == pytest.approx(5 / 6) and s["good"]["status"] == "pass" and s["good"]["weight"] == 1
    assert s["poor"]["accuracy"] == pytest.approx(4 / 6) and s["poor"]["status"] == "below"
    assert s["poor"]["weight"] == pytest.approx((4 / 6 - 0.5) / 0.25)  # 0.667
    assert s["tier"]["accuracy"] == pytest.approx(4 / 6)
    assert s["newbie"]["status"] == "unscreened" and s["newbie"]["weight"] == 1
    assert screening(gold_table(), 0.75, "exclude")["poor"]["weight"] == 0
    assert screening(gold_table(), 0.6, "exclude")["poor"]["status"] == "pass"


def test_summary_for_admin_headline():
    j = gold_table()
    recs = [pair(f"g{n}", r, 0, gold=0) for n in range(6) for r in ("a", "b")]
    head = summary_for_admin(recs + [pair("g0", "c", 1, gold=0)])
    assert {"raters", "pairwise_agreement", "krippendorff_alpha", "position_bias", "length_bias", "detected"} <= set(head)
    assert head["raters"]["a"]["gold_accuracy"] == 1.0 and head["raters"]["a"]["status"] == "pass"
    json.dumps(head, allow_nan=False)
    assert j.raters


def test_db_input_is_checked_and_never_created(tmp_path):
    missing = tmp_path / "none.db"
    with pytest.raises(DataError, match="no such database"):
        load_judgments_from_db(str(missing))
    assert not missing.exists()
    r = CliRunner().invoke(group, ["report", "--data", str(tmp_path / "x.jsonl"), "--db", str(missing),
                                   "--out", str(tmp_path / "rep")])
    assert isinstance(r.exception, DataError) and "exactly one" in str(r.exception)


def test_commands_end_to_end(tmp_path):
    runner = CliRunner()
    out = tmp_path / "comparisons.jsonl"
    r = runner.invoke(simulate_command, ["--demo-items", "120", "--out", str(out), "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "comparisons.gold.jsonl").exists() and "judgments by 4 simulated raters" in r.output
    records = read_judgments(out)
    assert all(rec.source == "simulated" for rec in records)

    r = runner.invoke(group, ["report", "--data", str(out), "--out", str(tmp_path / "rep"), "--n-boot", "30"])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("<img") >= 4 and "Findings" in page and "lefty" in page
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert {"agreement", "calibration", "biases", "consensus"} <= set(data)

    cons = tmp_path / "consensus.jsonl"
    r = runner.invoke(consensus_command, ["--data", str(out), "--method", "majority", "--out", str(cons),
                                          "--gold-file", str(tmp_path / "comparisons.gold.jsonl")])
    assert r.exit_code == 0, r.output and "accuracy against gold" in r.output
    cr = read_records(cons, Comparison)
    assert len(cr) == 120 and all(0 < c.p < 1 and c.meta["consensus"]["method"] == "majority" for c in cr)

    r = runner.invoke(consensus_command, ["--data", str(out), "--method", "raw", "--screen", "exclude",
                                          "--out", str(tmp_path / "raw.jsonl")])
    assert r.exit_code == 0, r.output

    r = runner.invoke(plan_command, ["--items", "60", "--repeats", "1", "--raters", "a, b:noise=2, c:noise=2",
                                     "--methods", "majority,dawid-skene", "--out", str(tmp_path / "plan.json")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "plan.json").read_text())["rows"]
    assert [x["per_item"] for x in rows] == [1, 1, 2, 2, 3, 3]

    r = runner.invoke(simulate_command, ["--raters", "a:nosie=1", "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code != 0 and "unknown parameter" in str(r.exception)


def test_quality_never_imports_torch():
    code = ("import sys, alignloop.quality.cli, alignloop.quality.report, alignloop.quality.simulate, "
            "alignloop.quality.consensus, alignloop.quality.bias;"
            "bad = [m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
