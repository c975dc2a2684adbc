"""benchmarks/control_pbrl.py's `--set FIELD=VALUE`: the alignloop runs' changed options, read
as YAML and checked by ControlConfig; a bad one is a one-line usage error. No run here."""

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
