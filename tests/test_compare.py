"""The compare recipe on the tiny model: SFT, then reward model + PPO and DPO from the same
labels, evaluated side by side; evaluate --policies; the recipe runner's per-stage cost records."""

import json

import pytest
import yaml

from alignloop.pipeline import run_recipe
from alignloop.recipe import load_recipe, plan
from tests.test_pipeline import SMALL

DPO = ["dpo.max_length=64", "dpo.batch_size=8", "dpo.learning_rate=1e-3"]


def test_the_compare_recipe_plans_ppo_and_dpo_from_the_same_labels(tmp_path):
    recipe, path = load_recipe("compare")
    steps = {s.kind: s for s in plan(recipe, tmp_path / "run", str(path))}
    run = tmp_path / "run"
    assert steps["dpo"].configs["dpo"].data == steps["reward"].configs["reward"].data == run / "consensus.jsonl"
    assert steps["dpo"].configs["dpo"].model == steps["ppo"].configs["ppo"].model == str(run / "sft")
    ev = steps["evaluate"].configs["evaluate"]
    assert ev.policy is None and ev.policies == {"ppo": str(run / "ppo"), "dpo": str(run / "dpo")}
    assert ev.baseline == str(run / "sft")


@pytest.fixture(scope="module")
def compare_run(tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("compare") / "run"
    result = run_recipe("compare", run, overrides=[f"model={tiny_model_dir}", *SMALL, *DPO])
    return run, result


def test_compare_recipe_reports_the_methods_side_by_side(compare_run):
    run, result = compare_run
    assert result.status == "done"
    e = json.loads((run / "eval" / "eval.json").read_text())
    rows = e["methods"]
    assert list(rows) == ["baseline", "ppo", "dpo"]
    for name in ("ppo", "dpo"):
        r = rows[name]
        assert r["gain"]["prompts"] == 3 and r["gold_win_rate"] is not None and r["kl_k1"] is not None
        assert r["cost"]["seconds"] > 0 and r["cost"]["peak_rss_gb"] > 0
    assert rows["ppo"]["cost"]["stages"] == ["ppo", "reward"]  # PPO's cost: reward model + PPO
    assert rows["baseline"]["kl_k1"] == 0.0 and rows["baseline"]["gain"] is None
    page = (run / "report.html").read_text()
    assert "gain vs baseline" in page and "policies side by side" in page
    state = json.loads((run / ".stages" / "dpo.json").read_text())
    assert state["peak_rss_gb"] > 0 and state["seconds"] > 0
    assert yaml.safe_load((run / "dpo" / "config.yaml").read_text())["model"] == str(run / "sft")


def test_evaluate_takes_policies_on_the_command_line(compare_run, tmp_path, capsys):
    from alignloop.cli import main

    run, _ = compare_run
    main(["evaluate", "--policies", f"dpo={run / 'dpo'},sft_again={run / 'sft'}", "--baseline", str(run / "sft"),
          "--limit", "2", "--max-new-tokens", "6", "--out", str(tmp_path / "eval"), "--redteam", "none",
          "--gold", "alignloop.quality.gold:helpful_harmless"])
    e = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert list(e["methods"]) == ["baseline", "dpo", "sft_again"]
    assert e["methods"]["sft_again"]["gain"]["gain"] == 0.0  # the same model, the same seed: the same samples
    assert "policies side by side" in "".join(capsys.readouterr())
    with pytest.raises(SystemExit):
        main(["evaluate", "--policy", str(run / "dpo"), "--policies", f"a={run / 'dpo'}", "--out", str(tmp_path / "x")])
