"""benchmarks/control_pbrl.py's `--set FIELD=VALUE` (the alignloop runs' changed options, read
as YAML and checked by ControlConfig; a bad one is a one-line usage error), `--eval-episodes` and
the table's share column. No run here."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "control_pbrl", Path(__file__).resolve().parent.parent / "benchmarks" / "control_pbrl.py")
control_pbrl = sys.modules.setdefault("control_pbrl", importlib.util.module_from_spec(spec))
spec.loader.exec_module(control_pbrl)


def _parse(*pairs: str) -> dict:
    return control_pbrl.parse_settings(argparse.ArgumentParser(prog="control_pbrl"), list(pairs))


def test_settings_are_typed_by_yaml():
    assert _parse("label_decay=0", "queries=random", "label-decay=0.5") == {"label_decay": 0.5, "queries": "random"}
    assert _parse() == {}


@pytest.mark.parametrize("pair, says", [
    ("nope=1", "expected FIELD=VALUE"),
    ("label_decay", "expected FIELD=VALUE"),
    ("seed=3", "set by the benchmark"),
    ("queries=bogus", "queries"),
    ("label_decay=-1", "label_decay"),
])
def test_a_bad_setting_is_a_usage_error(pair, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parse(pair)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_the_share_is_of_the_true_reward_agents_gain_on_the_same_seed():
    true = {"task": "T", "seed": 0, "system": "PPO, true reward", "true_return": -6.0, "true_return_before": -14.0}
    mine = {"task": "T", "seed": 0, "system": "alignloop", "true_return": -8.0}
    other_seed = {**mine, "seed": 1}
    assert control_pbrl.share(mine, [true, mine]) == "0.75"  # (-8 + 14) / (-6 + 14)
    assert control_pbrl.share(other_seed, [true, other_seed]) == "-"
    assert control_pbrl.share(true, [true]) == "-"
    failed = {"task": "T", "seed": 0, "system": "alignloop", "error": "exit 1"}
    assert control_pbrl.share(failed, [true, failed]) == "-"


@pytest.mark.parametrize("args, says", [(["--eval-episodes", "0"], "--eval-episodes 0"), (["--rounds", "1"], "--rounds 1")])
def test_eval_episodes_and_rounds_must_be_positive(args, says, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["control_pbrl", *args, "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        control_pbrl.main()
    assert exit_.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("task, quick, per_round, total", [
    ("Reacher-v5", False, 16_384, 212_992),  # 13 rounds of 8 rollouts: the 212,992 steps 8 rounds of 26,624 made
    ("Reacher-v5", True, 4_096, 32_768),
    ("HalfCheetah-v5", False, 63_488, 507_904),
    ("HalfCheetah-v5", True, 4_096, 32_768),
])
def test_each_tasks_rounds_are_whole_rollouts_of_its_steps(task, quick, per_round, total):
    """The task's rounds (every system's) split its env steps into whole PPO rollouts of 2,048 steps."""
    from alignloop.configs import ControlConfig
    from alignloop.control.loop import steps_per_round

    steps, rounds = control_pbrl.budget(task, quick)
    agent = {k: v for k, v in control_pbrl.AGENT.items() if k in ("n_envs", "n_steps")}
    cfg = ControlConfig(env=task, out="x", total_steps=steps, rounds=rounds, **agent)
    assert (steps_per_round(cfg), steps_per_round(cfg) * rounds) == (per_round, total)
