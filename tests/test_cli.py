"""The command line as a user meets it: help, config files, one-line errors."""

import re
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from alignloop.cli import app
from alignloop.config import ConfigError, resolve_config
from alignloop.train.sft import SFTConfig


def alignloop(*args, **kw):
    return subprocess.run([sys.executable, "-m", "alignloop.cli", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def test_help_lists_every_option_with_its_description():
    top = alignloop("--help")
    assert top.returncode == 0 and "generate" in top.stdout and "sft" in top.stdout
    sft = alignloop("sft", "--help").stdout
    for name, field in SFTConfig.model_fields.items():
        assert "--" + name.replace("_", "-") in sft, name
    assert "--lora-rank" in sft and "LoRA rank r." in sft and "--config" in sft


def test_help_shows_the_commands_own_options_first_then_the_shared_ones_under_headings():
    out = CliRunner().invoke(app, ["reward", "--help"]).output
    options = re.findall(r"^  (--[a-z-]+)", out, flags=re.M)
    assert options[:2] == ["--data", "--out"]  # its own required options at the top
    assert re.findall(r"^(\S.*):$", out, flags=re.M) == [
        "Options", "Model and LoRA options", "Optimiser options", "Evaluation, checkpoints and resuming", "Other options"]
    assert options.index("--normalization-prompts") < options.index("--model") < options.index("--lora-rank")
    assert options[-1] == "--config"


def test_malformed_jsonl_is_a_one_line_error_with_its_line(tmp_path, tiny_model_dir):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": "ok too"}\n{"prompt": "broken"\n')
    r = alignloop("generate", "--model", str(tiny_model_dir), "--prompts", str(bad), "--out", str(tmp_path / "s.jsonl"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: {bad}:3: invalid JSON (Expecting ',' delimiter at column 20)"
    assert not (tmp_path / "s.jsonl").exists()


def test_config_file_then_command_line(tmp_path):
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump({"data": "demos.jsonl", "out": "o", "lora_rank": 4, "epochs": 3}))
    cfg = resolve_config(SFTConfig, cfg_file, {"epochs": 5, "lora_targets": "q_proj, v_proj", "seed": None})
    assert (cfg.lora_rank, cfg.epochs, cfg.lora_targets, cfg.seed) == (4, 5, ["q_proj", "v_proj"], 0)
    cfg_file.write_text("data: d\nout: o\nlora_rnak: 4\n")
    with pytest.raises(ConfigError, match="field 'lora_rnak': unknown option"):
        resolve_config(SFTConfig, cfg_file, {})
    with pytest.raises(ConfigError, match="field 'epochs'"):
        resolve_config(SFTConfig, None, {"data": "d", "out": "o", "epochs": 0})


def test_generate_writes_samples_with_model_and_settings(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Hello"}\n{"id": "b", "prompt": "Name a color."}\n')
    out = tmp_path / "s.jsonl"
    r = alignloop("generate", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--out", str(out),
                  "--num-samples", "3", "--max-new-tokens", "6", "--seed", "5", "--temperature", "0.9")
    assert r.returncode == 0, r.stderr
    from alignloop.data.io import read_records
    from alignloop.data.records import Samples

    recs = read_records(out, Samples)
    assert [x.id for x in recs] == ["a", "b"] and all(len(x.responses) == 3 for x in recs)
    assert recs[0].model == str(tiny_model_dir)
    assert recs[0].sampling == {"temperature": 0.9, "top_p": 1.0, "top_k": 50, "max_new_tokens": 6, "seed": 5}
    assert yaml.safe_load(out.with_suffix(".config.yaml").read_text())["num_samples"] == 3


def test_no_and_yes_are_strings_in_config_files_and_set_overrides(tmp_path):
    """YAML 1.2 booleans: `mixed_precision: no` (Accelerate's spelling) is the string "no" in a
    config file and in `--set`, while true / false stay booleans."""
    from alignloop.recipe import apply_overrides

    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text("data: d\nout: o\nmixed_precision: no\nlora: false\n")
    cfg = resolve_config(SFTConfig, cfg_file, {})
    assert (cfg.mixed_precision, cfg.lora) == ("no", False)
    data = apply_overrides({"stages": [{"sft": {"epochs": 1}}]},
                           ["sft.mixed_precision=no", "sft.lora=False", "sft.note=yes"], "recipe")
    assert data["stages"][0]["sft"] == {"epochs": 1, "mixed_precision": "no", "lora": False, "note": "yes"}


def test_a_choice_named_true_is_read_from_yaml_as_that_word(tmp_path):
    """`reward: true` (a YAML boolean) is the choice "true" of ControlConfig.reward; a boolean
    field keeps its boolean."""
    from alignloop.configs import ControlConfig

    cfg_file = tmp_path / "control.yaml"
    cfg_file.write_text("env: Pendulum-v1\nout: o\nreward: true\nbaseline: true\n")
    cfg = resolve_config(ControlConfig, cfg_file, {})
    assert (cfg.reward, cfg.baseline) == ("true", True)
