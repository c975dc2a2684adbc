"""`alignloop run`: recipes on the tiny model, end to end; caching, re-running what changed,
resume, rounds, the human-feedback pause, validation errors, the CAI recipe."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import Field

import alignloop.train.ppo as ppo_module
import alignloop.train.reward as reward_module
from alignloop.cli import main
from alignloop.config import ConfigError, StageConfig
from alignloop.evaluate.report import SECTIONS
from alignloop.pipeline import fingerprint, read_state, run_recipe
from alignloop.recipe import find_recipe, load_recipe, plan, shipped_recipes
from alignloop.stages import STAGES, Stage, Step

# the shipped quickstart, shrunk for the tiny model (every number is a recipe field)
SMALL = ["sft.max_length=64", "generate.limit=16", "generate.max_new_tokens=10", "quality.report.n_boot=0",
         "reward.max_length=64", "reward.batch_size=8", "ppo.iterations=2", "ppo.max_new_tokens=8",
         "ppo.lora=false", "ppo.learning_rate=1e-3", "evaluate.limit=3", "evaluate.max_new_tokens=8"]
ALL = ["sft", "generate", "feedback", "quality", "reward", "ppo", "evaluate", "report"]


def _mtimes(run):
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def quickstart_run(tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("qs") / "run"
    overrides = [f"model={tiny_model_dir}", *SMALL]
    result = run_recipe("recipes/quickstart.yaml", run, overrides=overrides)
    return run, overrides, result


def test_quickstart_recipe_runs_every_stage_into_the_run_folder(quickstart_run, capsys):
    run, _, result = quickstart_run
    assert result.status == "done" and result.ran == ALL and result.skipped == []
    for path in ("sft/alignloop_model.json", "samples.jsonl", "comparisons.jsonl", "quality/report.json",
                 "consensus.jsonl", "reward/reward_config.json", "ppo/alignloop_model.json", "eval/eval.json",
                 "report.html", "config.yaml"):
        assert (run / path).exists(), path
    # wiring: generate samples from the SFT policy, PPO starts from it and uses the reward model
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and all(len(s["responses"]) == 4 for s in samples)
    assert samples[0]["model"] == str(run / "sft")
    ppo_cfg = yaml.safe_load((run / "ppo/config.yaml").read_text())
    assert ppo_cfg["model"] == str(run / "sft") and ppo_cfg["reward"] == str(run / "reward")
    assert yaml.safe_load((run / "reward/config.yaml").read_text())["data"] == str(run / "consensus.jsonl")
    ev = json.loads((run / "eval/eval.json").read_text())
    assert ev["baseline"]["model"] == str(run / "sft") and ev["policy"]["gold"] is not None
    # the report: every section, none missing, each plotted one with a PNG
    page = (run / "report.html").read_text()
    sections = dict(re.findall(r"<section id=(\w+)>(.*?)</section>", page, re.S))
    assert list(sections) == [k for k, _ in SECTIONS]
    for key, title in SECTIONS:
        assert f"<h2>{title}</h2>" in sections[key] and "class=missing" not in sections[key], key
    for key in ("sft", "quality", "reward", "ppo", "eval"):
        assert "src='data:image/png;base64," in sections[key], key
    assert "name: quickstart" in page  # the resolved recipe (RUN/config.yaml)
    recipe, path = load_recipe("quickstart", quickstart_run[1])
    assert [read_state(run, s)["status"] for s in plan(recipe, run, str(path))] == ["done"] * 8


def test_second_run_does_nothing(quickstart_run, capsys):
    run, overrides, _ = quickstart_run
    before = _mtimes(run)
    result = run_recipe("quickstart", run, overrides=overrides)
    assert result.ran == [] and result.skipped == ALL
    assert _mtimes(run) == before
    err = capsys.readouterr().err
    assert err.count(": skipped (done, unchanged") == 8 and "report: " in err and "gold reward: PPO policy" in err
    assert "reward model held-out accuracy" in err
    assert "a refusal minus the other answers to its prompt (above on k of n prompts): red-team" in " ".join(err.split())


def test_changing_one_stage_reruns_it_and_the_stages_after_it(quickstart_run, tmp_path):
    run, overrides, _ = quickstart_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)  # a copied run folder keeps its cache (paths inside RUN are relative)
    before = _mtimes(copy)
    result = run_recipe("quickstart", copy, overrides=[*overrides, "reward.learning_rate=2e-4"])
    assert result.skipped == ["sft", "generate", "feedback", "quality"]
    assert result.ran == ["reward", "ppo", "evaluate", "report"]
    after = _mtimes(copy)
    for f in ("samples.jsonl", "consensus.jsonl", "sft/adapter_model.safetensors"):
        assert after[f] == before[f], f
    for f in ("reward/reward_config.json", "ppo/config.yaml", "eval/eval.json", "report.html"):
        assert f not in before or after[f] != before[f], f
    assert yaml.safe_load((copy / "reward/config.yaml").read_text())["learning_rate"] == 2e-4


def test_keep_done_keeps_a_changed_finished_stage_and_the_stages_after_it(quickstart_run, tmp_path, capsys):
    """--keep-done: a finished stage whose config changed (an upgrade, a live arena) is not re-run,
    and the stages after it still see it unchanged; a stage not yet done runs."""
    run, overrides, _ = quickstart_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "eval")  # not done any more: runs, with what comes after it
    before = _mtimes(copy)
    result = run_recipe("quickstart", copy, overrides=[*overrides, "reward.learning_rate=2e-4"], keep_done=True)
    assert result.skipped == ["sft", "generate", "feedback", "quality", "reward", "ppo"]
    assert result.ran == ["evaluate", "report"]
    assert _mtimes(copy)["ppo/config.yaml"] == before["ppo/config.yaml"]
    assert "reward — reward model: skipped (done, kept by --keep-done" in capsys.readouterr().err
    assert run_recipe("quickstart", copy, overrides=[*overrides, "reward.learning_rate=2e-4"], keep_done=True).ran == []


def test_a_changed_input_file_changes_every_fingerprint_from_its_stage_on(tiny_model_dir, tmp_path):
    """A changed input file (not a config field) counts as a change too: the fingerprint of the
    stage that reads it changes, and with it those of every stage after it (each includes the
    one before), so a run would re-run them all."""
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"Say {i}.", "response": f"{i} it is."}) + "\n" for i in range(12)))
    recipe, path = load_recipe("quickstart", [f"model={tiny_model_dir}", *SMALL, f"sft.data={demos}"])
    steps = plan(recipe, tmp_path / "run", str(path))

    def fingerprints():
        out, before = [], ""
        for step in steps:
            before = fingerprint(step, before, tmp_path / "run")
            out.append(before)
        return out

    first = fingerprints()
    assert fingerprints() == first  # unchanged input: the same
    demos.write_text(demos.read_text().replace("it is", "it was"))
    assert all(a != b for a, b in zip(first, fingerprints(), strict=True))


class CountConfig(StageConfig):
    """The config of a stage the test adds: count the lines of a file."""

    data: Path = Field(..., description="The file whose lines are counted.")
    out: Path = Field(..., description="Where the count goes.")


def count_lines(cfg: CountConfig) -> None:
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(str(len(Path(cfg.data).read_text(encoding="utf-8").splitlines())))


def test_a_new_stage_is_one_row_of_the_stage_table(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(STAGES, "count", Stage("count", "counting the training prompts", 1, CountConfig, count_lines,
                                               defaults=lambda w, r: {"out": w.round_dir(r) / "count.txt"}))
    recipe = tmp_path / "count.yaml"
    recipe.write_text('name: counting\nrounds: 2\nstages:\n  - count: {data: "{assets}/prompts_train.jsonl"}\n')
    run = tmp_path / "run"
    result = run_recipe(recipe, run)
    assert result.status == "done" and result.ran == ["count", "round-2/count"]
    lines = str(len((shipped_recipes().parent / "assets/prompts_train.jsonl").read_text().splitlines()))
    assert (run / "count.txt").read_text() == (run / "round-2/count.txt").read_text() == lines
    assert "count — counting the training prompts" in capsys.readouterr().err
    assert run_recipe(recipe, run).skipped == ["count", "round-2/count"]  # cached like every stage
    with pytest.raises(ConfigError, match=r"stages\[0\] \(count\): field 'dta': unknown option"):
        run_recipe(recipe, run, overrides=["count.dta=x"])


SMALL_RECIPE = """
name: small
seed: 0
stages:
  - generate: {prompts: "{assets}/prompts_train.jsonl", limit: 12, num_samples: 2, max_new_tokens: 8}
  - feedback: {kind: simulated, per_item: 2, raters: "a:noise=0.2, b:noise=0.5"}
  - reward: {lora: false, batch_size: 4, max_length: 48, learning_rate: 1.0e-3, save_every: 1}
  - ppo: {lora: false, iterations: 3, batch_size: 4, max_new_tokens: 6, save_every: 0, missing_eos_penalty: null}
"""


@pytest.fixture
def small_recipe(tmp_path, tiny_model_dir):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_RECIPE.replace("seed: 0", f"seed: 0\nmodel: {tiny_model_dir}"))
    return path


def _spy(monkeypatch, module, name, calls, before=None):
    original = getattr(module, name)

    def wrapped(cfg):
        calls.append(cfg.resume)
        if before:
            return before(original, cfg)
        return original(cfg)

    monkeypatch.setattr(module, name, wrapped)


def test_resume_continues_a_stopped_stage_from_its_checkpoint(small_recipe, tmp_path, monkeypatch):
    run, calls = tmp_path / "run", []
    _spy(monkeypatch, ppo_module, "run_ppo", calls)
    first = run_recipe(small_recipe, run, overrides=["ppo.stop_at_iteration=1"])
    assert first.status == "stopped" and first.ran == ["generate", "feedback", "reward"]
    assert (run / "ppo/checkpoint/state.json").exists() and read_state(run, _step(small_recipe, run, "ppo"))["status"] == "running"
    second = run_recipe(small_recipe, run, resume=True)  # stop_at_iteration is not part of the fingerprint
    assert second.status == "done" and second.skipped == ["generate", "feedback", "reward"] and second.ran == ["ppo"]
    assert calls == [False, True]
    steps = [json.loads(x)["step"] for x in (run / "ppo/metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s > 0] == [1, 2, 3]
    assert not (run / "ppo/checkpoint").exists()


def _step(recipe_file, run, name):
    recipe, path = load_recipe(recipe_file)
    return next(s for s in plan(recipe, run, str(path)) if s.name == name)


def test_resume_after_a_kill_during_a_stage(small_recipe, tmp_path, monkeypatch):
    run, calls = tmp_path / "run", []

    def killed(original, cfg):  # trains one step, checkpoints, then the process "dies"
        if not cfg.resume:
            original(cfg.model_copy(update={"stop_at_step": 1}))
            raise KeyboardInterrupt
        return original(cfg)

    _spy(monkeypatch, reward_module, "run_reward", calls, before=killed)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(small_recipe, run)
    assert (run / "reward/checkpoint/state.json").exists() and not (run / "ppo").exists()
    plain = run_recipe(small_recipe, run, resume=True)
    assert plain.ran == ["reward", "ppo"] and calls == [False, True]
    steps = [json.loads(x)["step"] for x in (run / "reward/metrics.jsonl").read_text().splitlines()
             if "train/loss" in json.loads(x)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3  # step 1 once, then 2, 3, ...
    # without --resume an interrupted stage starts again from scratch
    run_recipe(small_recipe, run, overrides=["ppo.iterations=4", "ppo.stop_at_iteration=1"])
    calls.clear()
    _spy(monkeypatch, ppo_module, "run_ppo", calls)
    again = run_recipe(small_recipe, run, overrides=["ppo.iterations=4"])
    assert again.ran == ["ppo"] and calls == [False]


def test_rounds_repeat_the_loop_from_the_newest_policy(small_recipe, tmp_path):
    run = tmp_path / "run"
    result = run_recipe(small_recipe, run, overrides=["rounds=2"])
    assert result.ran == ["generate", "feedback", "reward", "ppo",
                          "round-2/generate", "round-2/feedback", "round-2/reward", "round-2/ppo"]
    r2 = run / "round-2"
    assert json.loads((r2 / "samples.jsonl").read_text().splitlines()[0])["model"] == str(run / "ppo")
    assert yaml.safe_load((r2 / "ppo/config.yaml").read_text())["model"] == str(run / "ppo")
    assert yaml.safe_load((r2 / "ppo/config.yaml").read_text())["reward"] == str(r2 / "reward")
    n1, n2 = (len((d / "comparisons.jsonl").read_text().splitlines()) for d in (run, r2))
    assert len((r2 / "reward-data.jsonl").read_text().splitlines()) == n1 + n2  # reward_data: all
    assert (run / ".stages/round-2.ppo.json").exists()
    again = run_recipe(small_recipe, run, overrides=["rounds=2"])
    assert again.ran == []


HUMAN_RECIPE = """
name: people
stages:
  - generate: {prompts: "{assets}/prompts_train.jsonl", limit: 6, num_samples: 2, max_new_tokens: 8}
  - feedback: {kind: human, raters_per_item: 1, gold_rate: 0.0, instructions: "Pick the better answer."}
  - reward: {lora: false, batch_size: 2, max_length: 48, heldout_fraction: 0.0}
"""


def test_human_feedback_pauses_until_the_campaign_is_complete(tmp_path, tiny_model_dir, capsys):
    from alignloop.feedback import reports, store

    recipe = tmp_path / "people.yaml"
    recipe.write_text(HUMAN_RECIPE + f"model: {tiny_model_dir}\n")
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(recipe), "--out", str(run)])
    assert exit_.value.code == 3
    err = capsys.readouterr().err
    assert "waiting for 6 judgments" in err and f"alignloop serve --db {run / 'feedback.db'}" in err
    assert "alignloop feedback add-rater" in err and not (run / "reward").exists()
    engine, sessions = store.open_db(str(run / "feedback.db"))
    with sessions() as s:
        (campaign,) = reports.campaign_summaries(s)
        assert campaign["items"] == 6 and campaign["name"].startswith("people/feedback-")
        rater, _, _ = store.add_rater(s, "alice")
        for _ in range(3):  # half of the items: still waiting
            a = store.next_assignment(s, rater)
            store.submit_judgment(s, rater, a.id, ranking=[1, 0])
    assert run_recipe(recipe, run).status == "waiting"
    assert "waiting for 3 judgments" in capsys.readouterr().err
    with sessions() as s:
        while (a := store.next_assignment(s, rater)) is not None:
            store.submit_judgment(s, rater, a.id, ranking=[0, 1])
    engine.dispose()
    result = run_recipe(recipe, run)
    assert result.status == "done" and result.ran == ["feedback", "reward"] and result.skipped == ["generate"]
    records = [json.loads(x) for x in (run / "comparisons.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["source"] for r in records} == {"human"} and {r["rater"] for r in records} == {"alice"}
    assert (run / "reward/reward_config.json").exists()
    assert run_recipe(recipe, run).ran == []


def test_cai_recipe_on_the_tiny_model(tiny_model_dir, tmp_path):
    run = tmp_path / "cai"
    result = run_recipe("cai", run, overrides=[
        f"model={tiny_model_dir}", "revise.limit=4", "revise.revisions=1", "revise.max_new_tokens=8",
        "sft.max_length=64", "sft.batch_size=2", "generate.limit=8", "generate.max_new_tokens=8",
        "reward.batch_size=4", "reward.max_length=64", "ppo.iterations=2", "ppo.batch_size=4",
        "ppo.max_new_tokens=6", "evaluate.limit=3", "evaluate.max_new_tokens=6"])
    assert result.ran == ["revise", "sft", "generate", "feedback", "reward", "ppo", "evaluate", "report"]
    assert yaml.safe_load((run / "sft/config.yaml").read_text())["data"] == str(run / "revisions.demos.jsonl")
    labels = [json.loads(x) for x in (run / "comparisons.jsonl").read_text().splitlines()]
    assert {r["source"] for r in labels} == {"ai"} and all(0 <= r["p"] <= 1 for r in labels)
    ev = json.loads((run / "eval/eval.json").read_text())
    assert ev["policy"]["harmlessness"]["n"] == 3 and ev["baseline"]["model"] == str(run / "sft")
    assert (run / "report.html").exists()


@pytest.mark.parametrize("text, overrides, message", [
    ("stages:\n  - generate: {prompts: p.jsonl}\n  - reward: {epochs: 0}\n", [],
     "stages[1] (reward): field 'epochs': Input should be greater than or equal to 1"),
    ("stages:\n  - reward: {data: c.jsonl, epoch: 2}\n", [], "stages[0] (reward): field 'epoch': unknown option"),
    ("stages:\n  - sft: {data: d.jsonl}\n  - dapo: {}\n", [], "stages[1] (dapo): field 'stage'"),
    ("stages:\n  - ppo: {reward: r, prompts: p.jsonl}\n  - sft: {data: d.jsonl}\n", [], "stages[1] (sft): sft comes too late"),
    ("stages:\n  - generate: {prompts: p.jsonl}\n  - feedback: {kind: crowd}\n", [], "stages[1] (feedback): field 'kind'"),
    ("stages:\n  - generate: {prompts: p.jsonl}\n  - feedback: {kind: human, campaign_kind: thumbs}\n", [],
     "stages[1] (feedback): field 'campaign_kind': 'thumbs' is not one of rank, compare"),
    ("stages:\n  - quality: {consensus: {method: vote}}\n", [], "stages[0] (quality.consensus): field 'method'"),
    ("stages:\n  - generate: {prompts: p.jsonl}\n", ["ppo.iterations=3"], "--set ppo.iterations=3: no stage named 'ppo'"),
    ("rounds: 0\nstages:\n  - generate: {prompts: p.jsonl}\n", [], "field 'rounds'"),
])
def test_recipe_errors_name_the_file_stage_and_field(tmp_path, text, overrides, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        recipe, found = load_recipe(path, overrides)
        plan(recipe, tmp_path / "run", str(found))
    assert str(err.value).startswith(str(path)) or "--set" in str(err.value)
    assert message in str(err.value)


def test_shipped_recipes_resolve_and_validate(tmp_path):
    assert find_recipe("recipes/quickstart.yaml") == shipped_recipes() / "quickstart.yaml"
    assert find_recipe("cai") == shipped_recipes() / "cai.yaml"
    with pytest.raises(ConfigError, match="shipped recipes: cai, chat, compare, control, quickstart"):
        find_recipe("nonesuch.yaml")
    recipe, path = load_recipe("quickstart")
    steps = plan(recipe, tmp_path / "run", str(path))
    assert [s.kind for s in steps] == ALL
    cfg = {s.kind: s.configs for s in steps}
    assert cfg["generate"]["generate"].num_samples == 4 and cfg["feedback"]["simulated"].per_item == 3
    assert cfg["ppo"]["ppo"].prompts == cfg["generate"]["generate"].prompts  # PPO on the training prompts
    assert cfg["evaluate"]["evaluate"].prompts.name == "prompts_heldout.jsonl"


def test_a_missing_output_reruns_its_stage_and_everything_after(small_recipe, tmp_path):
    run = tmp_path / "run"
    run_recipe(small_recipe, run)
    (run / "comparisons.jsonl").unlink()
    assert run_recipe(small_recipe, run).ran == ["feedback", "reward", "ppo"]


def test_quickstart_command_runs_the_shipped_recipe(monkeypatch, tmp_path):
    import alignloop.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_recipe", lambda *a: calls.append(a) or pipeline.RunResult("done", a[1], [], []))
    main(["quickstart", "--out", str(tmp_path / "q"), "--resume", "--model", "some/model"])
    assert calls == [("quickstart", tmp_path / "q", True, ["model=some/model"])]
    monkeypatch.setattr(pipeline, "run_recipe", lambda *a: pipeline.RunResult("stopped", a[1], [], []))
    with pytest.raises(SystemExit) as exit_:
        main(["quickstart", "--out", str(tmp_path / "q")])
    assert exit_.value.code == 4


def test_quickstart_passes_its_seed_and_model_to_the_recipe(monkeypatch, tmp_path):
    import alignloop.pipeline as pipeline
    from alignloop.quickstart import QuickstartConfig, run_quickstart

    seen = {}

    def fake_run(recipe, out, resume, overrides):
        seen.update(recipe=recipe, overrides=overrides)
        return type("Result", (), {"status": "done"})()

    monkeypatch.setattr(pipeline, "run_recipe", fake_run)
    run_quickstart(QuickstartConfig(out=tmp_path / "q", seed=2, model="m"))
    assert seen == {"recipe": "quickstart", "overrides": ["model=m", "seed=2"]}
    assert load_recipe("quickstart", ["seed=2"])[0].seed == 2


def test_a_choice_that_names_a_folder_in_the_working_directory_is_not_an_input(tmp_path, monkeypatch):
    """`format: alignloop` (a Literal field) beside a folder named alignloop (the source tree, for
    one): editing that folder must not change the fingerprint, while a path field's file does."""
    from alignloop.quality.cli import ConsensusConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "alignloop").mkdir()
    (tmp_path / "alignloop" / "code.py").write_text("x = 1\n")
    data = tmp_path / "labels.jsonl"
    data.write_text("{}\n")
    step = Step(index=0, kind="quality", name="quality", round=1, outputs=[],
                configs={"consensus": ConsensusConfig(data=data, out=tmp_path / "run" / "consensus.jsonl", format="alignloop")})
    first = fingerprint(step, "", tmp_path / "run")
    (tmp_path / "alignloop" / "more.py").write_text("x = 2\n")  # a new file: the folder's own mtime changes
    assert fingerprint(step, "", tmp_path / "run") == first
    data.write_text("{}\n{}\n")
    assert fingerprint(step, "", tmp_path / "run") != first
