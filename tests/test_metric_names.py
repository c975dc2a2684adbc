"""Metric names are defined once (alignloop/metric_names.py) and stable across run folders."""

import ast
import pathlib

import alignloop
from alignloop import metric_names as M
from alignloop.evaluate.figures import short


def test_a_reward_source_is_named_by_what_was_given_or_its_folder():
    assert M.score("runs/seed0/reward") == M.score("/elsewhere/reward/") == "score/reward"  # not the run folder
    assert M.score("reward") == "score/reward"
    assert M.score("rule:alignloop.quality.gold:helpful_harmless") == "score/rule:alignloop.quality.gold:helpful_harmless"
    assert M.score("judge") == "score/judge"
    assert short("score//runs/x/reward") == "score/reward" and short("runs/x/reward") == "reward"  # older runs' names


def test_names_are_unique_and_grouped():
    names = {k: v for k, v in vars(M).items() if k.isupper() and isinstance(v, str)}
    assert len(set(names.values())) == len(names)
    groups = {"train", "eval", "normalization", "reward", "score", "kl", "loss", "policy", "value", "response",
              "optim", "time", "rewards", "logps"}
    assert {v.split("/")[0] for v in names.values()} <= groups


def test_the_training_loops_spell_no_metric_name_themselves():
    """train/ writes metrics only through metric_names (a string GROUP/what in a metrics dict is a second definition)."""
    train = pathlib.Path(alignloop.__file__).parent / "train"
    groups = ("train/", "eval/", "reward/", "score/", "kl/", "loss/", "policy/", "value/", "response/", "optim/", "time/",
              "objective/", "val/", "rewards/", "logps/")
    for path in sorted(train.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                for key in node.keys:
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        assert not key.value.startswith(groups), f"{path.name}:{key.lineno} {key.value!r}"
